package verify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"prepull.io/prepull/imageref"
)

// Registry reads images' signatures from their registries.
type Registry struct {
	// Insecure lists registry hosts reached over plain HTTP.
	Insecure map[string]bool
	// Transport is the HTTP transport; nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Timeout bounds reading one image's signatures; zero means 30 seconds.
	Timeout time.Duration
}

// Signatures returns the signatures of the image digestRef names, found at
// its signature tag and among its referrers of cosign's artifact type,
// reading with auth. An image with neither has none, which is no error.
func (r *Registry) Signatures(ctx context.Context, digestRef string, auth authn.Authenticator) ([]Signature, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, 30*time.Second))
	defer cancel()
	parsed, err := imageref.Remote(digestRef, r.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", digestRef, err)
	}
	ref, ok := parsed.(name.Digest)
	if !ok {
		return nil, fmt.Errorf("parse %s: not a digest reference", digestRef)
	}
	tr := r.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(tr)}
	found, err := Manifests(ref, ropts...)
	if err != nil {
		return nil, err
	}
	var sigs []Signature
	for _, m := range found {
		got, err := Payloads(m.Manifest, "signature "+m.Digest.String(), func(d digest.Digest, _ int64) (io.ReadCloser, error) {
			l, err := remote.Layer(ref.Context().Digest(d.String()), ropts...)
			if err != nil {
				return nil, err
			}
			return l.Compressed()
		})
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, got...)
	}
	return sigs, nil
}

// Manifests finds the signature manifests of the image ref names at its
// registry: the one at its signature tag, and its referrers of cosign's
// artifact type, each once. An image with neither has none, which is no
// error; a registry that cannot say is.
func Manifests(ref name.Digest, opts ...remote.Option) ([]*remote.Descriptor, error) {
	repo := ref.Context()
	var found []*remote.Descriptor
	tag := repo.Tag(SignatureTag(ref.DigestStr()))
	switch d, err := remote.Get(tag, opts...); {
	case err == nil:
		found = append(found, d)
	case !NotFound(err):
		return nil, fmt.Errorf("read %s: %w", tag, err)
	}
	idx, err := remote.Referrers(ref, append(opts, remote.WithFilter("artifactType", ArtifactType))...)
	if NotFound(err) {
		return found, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the referrers of %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read the referrers of %s: %w", ref, err)
	}
	for _, m := range im.Manifests {
		if m.ArtifactType != ArtifactType || len(found) >= maxSignatures || slices.ContainsFunc(found, func(d *remote.Descriptor) bool { return d.Digest == m.Digest }) {
			continue
		}
		d, err := remote.Get(repo.Digest(m.Digest.String()), opts...)
		if err != nil {
			return nil, fmt.Errorf("read the signature %s: %w", m.Digest, err)
		}
		found = append(found, d)
	}
	return found, nil
}

// NotFound reports whether err is a registry's 404.
func NotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
