package verify

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"prepull.io/prepull/imageref"
)

// cosign's format.
const (
	// SignatureAnnotation holds, on each layer of a signature manifest, the
	// base64 signature over that layer's payload.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// PayloadMediaType is the media type of a signed payload layer.
	PayloadMediaType types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// ArtifactType is the artifact type of a signature manifest found
	// through the referrers API.
	ArtifactType = "application/vnd.dev.cosign.artifact.sig.v1+json"
)

// Bounds on what a registry may make the controller read.
const (
	maxPayload    = 1 << 20
	maxSignatures = 64
)

// SignatureTag is the tag cosign stores digest's signatures under:
// "sha256-<hex>.sig".
func SignatureTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

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
	repo := ref.Context()

	var sigs []Signature
	tag := repo.Tag(SignatureTag(ref.DigestStr()))
	img, err := remote.Image(tag, ropts...)
	switch {
	case err == nil:
		found, err := fromImage(img, tag.String())
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, found...)
	case !NotFound(err):
		return nil, fmt.Errorf("read %s: %w", tag, err)
	}
	idx, err := remote.Referrers(ref, append(ropts, remote.WithFilter("artifactType", ArtifactType))...)
	if err != nil {
		if NotFound(err) {
			return sigs, nil
		}
		return nil, fmt.Errorf("read the referrers of %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read the referrers of %s: %w", ref, err)
	}
	for _, m := range im.Manifests {
		if m.ArtifactType != ArtifactType || len(sigs) >= maxSignatures {
			continue
		}
		at := repo.Digest(m.Digest.String())
		img, err := remote.Image(at, ropts...)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", at, err)
		}
		found, err := fromImage(img, "referrer "+m.Digest.String())
		if err != nil {
			return nil, err
		}
		sigs = append(sigs, found...)
	}
	return sigs, nil
}

// fromImage reads the signatures a signature manifest holds: each payload
// layer and the signature its annotation carries.
func fromImage(img v1.Image, from string) ([]Signature, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", from, err)
	}
	var out []Signature
	for _, l := range m.Layers {
		if l.MediaType != PayloadMediaType || len(out) >= maxSignatures {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(l.Annotations[SignatureAnnotation])
		if err != nil || len(sig) == 0 {
			continue
		}
		if l.Size > maxPayload {
			return nil, fmt.Errorf("%s: payload %s of %d bytes, more than %d", from, l.Digest, l.Size, maxPayload)
		}
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("%s: payload %s: %w", from, l.Digest, err)
		}
		rc, err := layer.Compressed()
		if err != nil {
			return nil, fmt.Errorf("%s: payload %s: %w", from, l.Digest, err)
		}
		// The layer checks what it reads against its digest.
		p, err := io.ReadAll(io.LimitReader(rc, maxPayload))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: payload %s: %w", from, l.Digest, err)
		}
		out = append(out, Signature{Payload: p, Signature: sig, From: from})
	}
	return out, nil
}

// NotFound reports whether err is a registry's 404.
func NotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
