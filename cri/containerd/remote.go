package containerd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

// WithRegistryHosts sets the directory of hosts.toml files that containerd's
// CRI plugin reads (its registry.config_path), so that PullBlobs reaches a
// registry as the CRI plugin's pulls do: through the same mirrors, over the
// same schemes, with the same certificates. Without it, PullBlobs reaches each
// registry at its own name over HTTPS.
func WithRegistryHosts(dir string) Option {
	return func(s *Store) { s.hostsDir = dir }
}

var _ cri.PullSizer = (*Store)(nil)

// maxManifest bounds a manifest or index read from a registry.
const maxManifest = 4 << 20

// PullBlobs lists the config and layers, for the node's platform, of the
// image digestRef names: from the content store when it holds the
// manifests, else from the registry, with auth.
func (s *Store) PullBlobs(ctx context.Context, digestRef string, auth *cri.Auth) ([]cri.Blob, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	r, err := imageref.Parse(digestRef)
	if err != nil {
		return nil, err
	}
	if r.Digest == "" {
		return nil, fmt.Errorf("pull size of %s: %w: not a digest reference", digestRef, cri.ErrInvalid)
	}
	descs, err := s.platformBlobs(ctx, s.client.ContentStore(), digest.Digest(r.Digest))
	if err != nil || len(descs) == 0 {
		if descs, err = s.remoteBlobs(ctx, r, auth); err != nil {
			return nil, wrap("pull size", digestRef, err)
		}
	}
	blobs := make([]cri.Blob, 0, len(descs))
	for _, d := range descs {
		blobs = append(blobs, cri.Blob{Digest: d.Digest.String(), Size: d.Size})
	}
	return blobs, nil
}

// Missing is how many bytes of blobs the content store lacks; a download
// under way counts for what it still has to fetch.
func (s *Store) Missing(ctx context.Context, blobs []cri.Blob) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	cs := s.client.ContentStore()
	statuses, err := cs.ListStatuses(ctx)
	if err != nil {
		return 0, wrap("pull size", "", err)
	}
	offsets := map[digest.Digest]int64{}
	for _, st := range statuses {
		d := ingestDigest(st)
		offsets[d] = max(offsets[d], st.Offset)
	}
	var missing int64
	for _, b := range blobs {
		d := digest.Digest(b.Digest)
		if _, err := cs.Info(ctx, d); err != nil {
			missing += b.Size - min(offsets[d], b.Size)
		}
	}
	return missing, nil
}

// remoteBlobs reads from the registry the config and layers of the image r
// names, for the node's platform. Each manifest or index is read by its
// digest in one GET that accepts every manifest type. Only a registry that
// answers such a GET without the manifest is asked again through
// containerd's resolver, as a pull asks: a HEAD, then a GET. A registry out
// of reach, or refusing the credentials, is not asked twice.
func (s *Store) remoteBlobs(ctx context.Context, r imageref.Ref, auth *cri.Auth) ([]ocispec.Descriptor, error) {
	ref := r.Repo + "@" + r.Digest
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil, err
	}
	hosts, err := s.hosts.get(ctx, hostsKey{host: spec.Hostname(), auth: authOf(auth)}, s.hostsDir)
	if err != nil {
		return nil, err
	}
	descs, err := walkPlatform(ocispec.Descriptor{Digest: digest.Digest(r.Digest)}, func(d ocispec.Descriptor) (*manifest, error) {
		return getManifest(ctx, hosts, spec, d.Digest)
	})
	if !errors.As(err, new(notServedError)) {
		return descs, err
	}
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

// manifestTypes are the media types a manifest or index read by digest may
// have: a registry answers with the one it holds only when it is accepted.
var manifestTypes = strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList,
}, ", ")

// getManifest reads the manifest or index d from the first of hosts that
// can serve pulls and has it, with the hosts' clients and credentials; a
// mirror is told which registry it stands for, as containerd tells it.
func getManifest(ctx context.Context, hosts []docker.RegistryHost, spec reference.Spec, d digest.Digest) (*manifest, error) {
	ctx, err := docker.ContextWithRepositoryScope(ctx, spec, false)
	if err != nil {
		return nil, err
	}
	repo := strings.TrimPrefix(spec.Locator, spec.Hostname()+"/")
	var errs []error
	for _, h := range hosts {
		if h.Capabilities&docker.HostCapabilityPull == 0 {
			continue
		}
		u := url.URL{Scheme: h.Scheme, Host: h.Host, Path: path.Join("/", h.Path, repo, "manifests", d.String())}
		if spec.Hostname() != h.Host && (spec.Hostname() != "docker.io" || h.Host != "registry-1.docker.io") {
			u.RawQuery = url.Values{"ns": {spec.Hostname()}}.Encode()
		}
		raw, err := getSmall(ctx, h, u.String(), d)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.Host, err))
			continue
		}
		return parseManifest(raw, d)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("no registry host serves pulls of %s", spec.Locator)
	}
	return nil, errors.Join(errs...)
}

// notServedError is a registry's answer to a GET of a manifest by digest
// that does not hand it over, though the registry may hold it: some
// registries want the manifest's own type alone in Accept.
type notServedError struct {
	digest digest.Digest
	status string
}

func (e notServedError) Error() string { return fmt.Sprintf("GET %s: %s", e.digest, e.status) }

// getSmall GETs u from host h, answering one authentication challenge,
// and returns at most maxManifest bytes, checked against d.
func getSmall(ctx context.Context, h docker.RegistryHost, u string, d digest.Digest) ([]byte, error) {
	client := h.Client
	if client == nil {
		client = http.DefaultClient
	}
	for challenged := false; ; challenged = true {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if h.Header != nil {
			req.Header = h.Header.Clone()
		}
		req.Header.Set("Accept", manifestTypes)
		if h.Authorizer != nil {
			if err := h.Authorizer.Authorize(ctx, req); err != nil {
				return nil, err
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && h.Authorizer != nil && !challenged {
			err := h.Authorizer.AddResponses(ctx, []*http.Response{resp})
			resp.Body.Close()
			if err != nil {
				return nil, err
			}
			continue
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusNotFound, http.StatusNotAcceptable:
			return nil, notServedError{digest: d, status: resp.Status}
		default:
			return nil, fmt.Errorf("GET %s: %s", d, resp.Status)
		}
		return readSmall(resp.Body, d)
	}
}

// manifest is what PullBlobs reads of a manifest or an index.
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
	return parseManifest(raw, desc.Digest)
}

// parseManifest reads what PullBlobs needs of raw, the manifest or index d.
func parseManifest(raw []byte, d digest.Digest) (*manifest, error) {
	m := &manifest{}
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d, err)
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
	return readSmall(rc, desc.Digest)
}

// readSmall reads at most maxManifest bytes of r, which must be d's.
func readSmall(r io.Reader, d digest.Digest) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(raw); got != d {
		return nil, fmt.Errorf("%s: the registry sent %s", d, got)
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
