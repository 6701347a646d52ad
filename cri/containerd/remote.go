package containerd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

// WithRegistryHosts sets the directory of hosts.toml files that containerd's
// CRI plugin reads (its registry.config_path), so that PullSize reaches a
// registry as the CRI plugin's pulls do: through the same mirrors, over the
// same schemes, with the same certificates. Without it, PullSize reaches each
// registry at its own name over HTTPS.
func WithRegistryHosts(dir string) Option {
	return func(s *Store) { s.hostsDir = dir }
}

var _ cri.PullSizer = (*Store)(nil)

// maxManifest bounds a manifest or index read from a registry.
const maxManifest = 4 << 20

// PullSize reports how many bytes a pull of digestRef will write to the
// content store: the sizes of the config and layers, for the node's
// platform, that the store does not hold yet (a download under way counts
// for what it still has to fetch). The manifests come from the content
// store when it has them, else from the registry, with auth.
func (s *Store) PullSize(ctx context.Context, digestRef string, auth *cri.Auth) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	r, err := imageref.Parse(digestRef)
	if err != nil {
		return 0, err
	}
	if r.Digest == "" {
		return 0, fmt.Errorf("pull size of %s: %w: not a digest reference", digestRef, cri.ErrInvalid)
	}
	cs := s.client.ContentStore()
	blobs, err := s.platformBlobs(ctx, cs, digest.Digest(r.Digest))
	if err != nil || len(blobs) == 0 {
		if blobs, err = s.remoteBlobs(ctx, digestRef, auth); err != nil {
			return 0, wrap("pull size", digestRef, err)
		}
	}
	statuses, err := cs.ListStatuses(ctx)
	if err != nil {
		return 0, wrap("pull size", digestRef, err)
	}
	offsets := map[digest.Digest]int64{}
	for _, st := range statuses {
		d := ingestDigest(st)
		offsets[d] = max(offsets[d], st.Offset)
	}
	var missing int64
	for _, b := range blobs {
		if _, err := cs.Info(ctx, b.Digest); err != nil {
			missing += b.Size - min(offsets[b.Digest], b.Size)
		}
	}
	return missing, nil
}

// remoteBlobs reads from the registry the config and layers of the image ref
// names, for the node's platform.
func (s *Store) remoteBlobs(ctx context.Context, ref string, auth *cri.Auth) ([]ocispec.Descriptor, error) {
	resolver := s.resolver(ctx, auth)
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, err
	}
	return walkPlatform(desc, func(d ocispec.Descriptor) (*manifest, error) { return readManifest(ctx, fetcher, d) })
}

// manifest is what PullSize reads of a manifest or an index.
type manifest struct {
	Manifests []ocispec.Descriptor `json:"manifests"`
	Config    ocispec.Descriptor   `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
}

// readManifest fetches the manifest or index desc names, checked against
// its digest.
func readManifest(ctx context.Context, f remotes.Fetcher, desc ocispec.Descriptor) (*manifest, error) {
	raw, err := fetchSmall(ctx, f, desc)
	if err != nil {
		return nil, err
	}
	m := &manifest{}
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	return m, nil
}

// fetchSmall fetches the manifest or blob desc names, of at most
// maxManifest bytes, checked against its digest.
func fetchSmall(ctx context.Context, f remotes.Fetcher, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxManifest {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", desc.Digest, desc.Size, maxManifest)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(raw); got != desc.Digest {
		return nil, fmt.Errorf("%s: the registry sent %s", desc.Digest, got)
	}
	return raw, nil
}

// credentials gives the resolver auth's basic credentials or identity
// token, for any host: auth is for the image's registry.
func credentials(auth *cri.Auth) func(string) (string, string, error) {
	return func(string) (string, string, error) {
		switch {
		case auth == nil:
			return "", "", nil
		case auth.IdentityToken != "":
			return "", auth.IdentityToken, nil
		case auth.Username != "":
			return auth.Username, auth.Password, nil
		case auth.Auth != "":
			raw, err := base64.StdEncoding.DecodeString(auth.Auth)
			if err != nil {
				return "", "", errors.New("the pull secret's auth field is not base64")
			}
			user, pass, _ := strings.Cut(string(raw), ":")
			return user, pass, nil
		}
		return "", "", nil
	}
}
