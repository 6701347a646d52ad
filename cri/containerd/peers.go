package containerd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

var _ cri.PeerStore = (*Store)(nil)

// FetchImage fetches, under a lease, what the content store lacks of the
// image digestRef names for the node's platform, then makes it present as
// an import does (makePresent): linked for the garbage collector,
// unpacked, named. admit is asked, for each manifest, with the bytes of the
// blobs it names that the content store lacks, before they are fetched.
func (s *Store) FetchImage(ctx context.Context, digestRef string, fetch cri.Fetcher, admit func(need int64) error) error {
	r, err := imageref.Parse(digestRef)
	if err != nil {
		return err
	}
	if r.Digest == "" {
		return fmt.Errorf("fetch %s: %w: not a digest reference", digestRef, cri.ErrInvalid)
	}
	ctx, done, err := s.client.WithLease(ctx)
	if err != nil {
		return wrap("fetch", digestRef, err)
	}
	defer done(context.WithoutCancel(ctx))
	cs := leased{Store: s.client.ContentStore(), s: s}
	top, err := fetchTop(ctx, cs, digest.Digest(r.Digest), fetch)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", digestRef, err)
	}
	missing := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if err := fetchBlob(ctx, cs, desc, fetch); err != nil {
			return nil, err
		}
		children, err := images.Children(ctx, cs, desc)
		if err != nil || admit == nil || !images.IsManifestType(desc.MediaType) {
			return children, err
		}
		var need int64
		for _, c := range children {
			if _, err := cs.Info(ctx, c.Digest); err != nil {
				need += c.Size
			}
		}
		return children, admit(need)
	})
	if err := images.Walk(ctx, images.FilterPlatforms(missing, platforms.Default()), top); err != nil {
		return fmt.Errorf("fetch %s: %w", digestRef, err)
	}
	return s.makePresent(ctx, top, []string{digestRef})
}

// leased is the content store under the fetch's lease.
type leased struct {
	content.Store
	s *Store
}

// held reports whether the content store holds d, and then puts d under
// the context's lease: a blob a failed fetch left unreferenced may be
// collected any moment, and must not be, now that it is counted on.
func (cs leased) held(ctx context.Context, d digest.Digest) bool {
	if _, err := cs.Info(ctx, d); err != nil {
		return false
	}
	id, ok := leases.FromContext(ctx)
	if !ok {
		return false
	}
	err := cs.s.client.LeasesService().AddResource(ctx, leases.Lease{ID: id}, leases.Resource{ID: d.String(), Type: "content"})
	if err != nil {
		return false
	}
	// Collected between the look and the lease: fetched again.
	_, err = cs.Info(ctx, d)
	return err == nil
}

// maxTop bounds a manifest or index fetched from a peer.
const maxTop = 4 << 20

// fetchTop fetches the manifest or index of digest d, unless the content
// store holds it, and returns its descriptor, its media type read from it.
func fetchTop(ctx context.Context, cs leased, d digest.Digest, fetch cri.Fetcher) (ocispec.Descriptor, error) {
	var data []byte
	var err error
	if cs.held(ctx, d) {
		if data, err = content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: d}); err != nil {
			return ocispec.Descriptor{}, err
		}
	} else {
		rc, err := fetch(ctx, d.String(), -1)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		data, err = io.ReadAll(io.LimitReader(rc, maxTop+1))
		rc.Close()
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		if len(data) > maxTop || d.Validate() != nil || digest.FromBytes(data) != d {
			return ocispec.Descriptor{}, fmt.Errorf("manifest %s: %w", d, cri.ErrCorrupt)
		}
	}
	var probe struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("manifest %s: %w", d, err)
	}
	mt := probe.MediaType
	if mt == "" {
		mt = ocispec.MediaTypeImageManifest
		if probe.Manifests != nil {
			mt = ocispec.MediaTypeImageIndex
		}
	}
	desc := ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(data))}
	if err := content.WriteBlob(ctx, cs, "prepull-peer-"+d.String(), bytes.NewReader(data), desc); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// fetchBlob fetches desc into cs unless it is there; the content store
// checks its size and digest at commit, and a mismatch leaves nothing.
func fetchBlob(ctx context.Context, cs leased, desc ocispec.Descriptor, fetch cri.Fetcher) error {
	if cs.held(ctx, desc.Digest) {
		return nil
	}
	rc, err := fetch(ctx, desc.Digest.String(), desc.Size)
	if err != nil {
		return err
	}
	defer rc.Close()
	ref := "prepull-peer-" + desc.Digest.String()
	err = content.WriteBlob(ctx, cs, ref, rc, desc)
	if err != nil {
		// Nothing of a failed write is kept: the next peer starts afresh,
		// not from what this one sent.
		_ = cs.Abort(context.WithoutCancel(ctx), ref)
	}
	if errdefs.IsFailedPrecondition(err) || errdefs.IsInvalidArgument(err) {
		// The content store's word for a digest or size that does not
		// match.
		return fmt.Errorf("blob %s: %w: %w", desc.Digest, cri.ErrCorrupt, err)
	}
	return err
}

// OpenBlob serves a blob of an image the node holds: the image's record
// must exist, and the blob must be in its tree as the content store holds
// it (every platform present).
func (s *Store) OpenBlob(ctx context.Context, digestRef, dgst string) (io.ReadCloser, int64, error) {
	img, err := s.client.ImageService().Get(ctx, digestRef)
	if err != nil {
		return nil, 0, wrap("serve", digestRef, err)
	}
	cs := s.client.ContentStore()
	want := digest.Digest(dgst)
	var found *ocispec.Descriptor
	errFound := errors.New("found")
	walk := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if desc.Digest == want {
			found = &desc
			return nil, errFound
		}
		children, err := images.Children(ctx, cs, desc)
		if errdefs.IsNotFound(err) {
			// Another platform's manifest the node never fetched.
			return nil, nil
		}
		return children, err
	})
	if err := images.Walk(ctx, walk, img.Target); err != nil && !errors.Is(err, errFound) {
		return nil, 0, wrap("serve", digestRef, err)
	}
	if found == nil {
		return nil, 0, &cri.Error{Op: "serve", Ref: digestRef, Kind: cri.ErrNotFound, Err: fmt.Errorf("%s is not a blob of it", dgst)}
	}
	ra, err := cs.ReaderAt(ctx, *found)
	if err != nil {
		return nil, 0, wrap("serve", digestRef, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(ra, 0, ra.Size()), ra}, ra.Size(), nil
}
