package prepulllist

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"prepull.io/prepull/imageref"
	"prepull.io/prepull/pullsecret"
)

// Resolver resolves a tag reference to the digest of its manifest, or of its
// index for a multi-platform image, so that every node gets the same bytes.
type Resolver interface {
	Resolve(ctx context.Context, tagRef string, creds []pullsecret.Credential) (string, error)
}

// RegistryResolver asks the registry with one HEAD request per tag.
type RegistryResolver struct {
	// Insecure lists registry hosts reached over plain HTTP.
	Insecure map[string]bool
	// Timeout bounds one resolution; zero means 30 seconds.
	Timeout time.Duration
	// Transport is the HTTP transport; nil means http.DefaultTransport.
	Transport http.RoundTripper
}

var _ Resolver = (*RegistryResolver)(nil)

// Resolve returns the digest ("sha256:…") tagRef names at the registry.
func (r *RegistryResolver) Resolve(ctx context.Context, tagRef string, creds []pullsecret.Credential) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, 30*time.Second))
	defer cancel()
	ref, err := imageref.Remote(tagRef, r.Insecure)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", tagRef, err)
	}
	auth := authFor(creds, tagRef)
	tr := r.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(tr))
	if err != nil {
		return "", fmt.Errorf("resolve %s: %s", tagRef, registryMessage(err))
	}
	return desc.Digest.String(), nil
}

// registryMessage is the registry's answer in words a user can act on.
func registryMessage(err error) string {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return "the registry answered 404 Not Found: no such repository or tag"
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Sprintf("the registry answered %d %s: check imagePullSecrets (a tag only the nodes' own credentials read, such as their credential provider plugins', resolves on a node: spec.resolution: Node)", te.StatusCode, http.StatusText(te.StatusCode))
		}
	}
	return err.Error()
}

// authFor is the credentials of creds for the registry of ref, or none.
func authFor(creds []pullsecret.Credential, ref string) authn.Authenticator {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return authn.Anonymous
	}
	if c, ok := pullsecret.Find(creds, parsed.Context().RegistryStr()); ok {
		return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken})
	}
	return authn.Anonymous
}

// Describer is a Resolver that can also read what a digest names at the
// registry.
type Describer interface {
	// Describe reads the manifest digestRef names, and with size the
	// manifests of an index's platforms too.
	Describe(ctx context.Context, digestRef string, creds []pullsecret.Credential, size bool) (Description, error)
}

// Description is what a digest names, as its manifests tell.
type Description struct {
	// ArtifactType is its artifact type, "" for an image.
	ArtifactType string
	// EmptyConfig says its config is the OCI empty descriptor: an
	// artifact with no rootfs, which a runtime does not mount as an image
	// volume.
	EmptyConfig bool
	// Bytes are its config and layers for its largest platform; 0 when
	// not sized.
	Bytes int64
	// Sized says Bytes was counted.
	Sized bool
	// Reads are the manifest GETs made to learn it (also when it was not
	// learnt).
	Reads int
}

var _ Describer = (*RegistryResolver)(nil)

// maxIndexPlatforms bounds the platform manifests read to size an index.
const maxIndexPlatforms = 32

// Describe reads digestRef's manifest with creds: one GET, and with size
// one more per platform of an index (attestations and other artifacts an
// index lists are not platforms a node pulls).
func (r *RegistryResolver) Describe(ctx context.Context, digestRef string, creds []pullsecret.Credential, size bool) (Description, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, 30*time.Second))
	defer cancel()
	ref, err := imageref.Remote(digestRef, r.Insecure)
	if err != nil {
		return Description{}, fmt.Errorf("parse %s: %w", digestRef, err)
	}
	tr := r.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuth(authFor(creds, digestRef)), remote.WithTransport(tr)}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return Description{Reads: 1}, fmt.Errorf("read %s: %s", digestRef, registryMessage(err))
	}
	if !desc.MediaType.IsIndex() {
		m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return Description{Reads: 1}, fmt.Errorf("read %s: %w", digestRef, err)
		}
		return Description{ArtifactType: artifactType(m), EmptyConfig: m.Config.MediaType == emptyConfig, Bytes: manifestBytes(m), Sized: true, Reads: 1}, nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return Description{Reads: 1}, fmt.Errorf("read %s: %w", digestRef, err)
	}
	out := Description{ArtifactType: idx.ArtifactType, Reads: 1}
	if !size {
		return out, nil
	}
	read := 0
	for _, d := range idx.Manifests {
		if d.Platform == nil || d.Platform.OS == "unknown" || !d.MediaType.IsImage() {
			continue
		}
		if read++; read > maxIndexPlatforms {
			return Description{Reads: out.Reads}, fmt.Errorf("read %s: an index of more than %d platforms is not sized", digestRef, maxIndexPlatforms)
		}
		child, err := remote.Get(ref.Context().Digest(d.Digest.String()), opts...)
		out.Reads++
		if err != nil {
			return Description{Reads: out.Reads}, fmt.Errorf("read %s for %s: %s", d.Digest, d.Platform, registryMessage(err))
		}
		m, err := v1.ParseManifest(bytes.NewReader(child.Manifest))
		if err != nil {
			return Description{Reads: out.Reads}, fmt.Errorf("read %s for %s: %w", d.Digest, d.Platform, err)
		}
		out.Bytes = max(out.Bytes, manifestBytes(m))
	}
	out.Sized = true
	return out, nil
}

// emptyConfig is the media type of the OCI empty descriptor.
const emptyConfig = "application/vnd.oci.empty.v1+json"

// artifactType is what m is when it is not an image: its artifactType,
// else its config's media type unless that is an image config's.
func artifactType(m *v1.Manifest) string {
	if m.ArtifactType != "" {
		return m.ArtifactType
	}
	if c := m.Config.MediaType; c != "" && !c.IsConfig() {
		return string(c)
	}
	return ""
}

// manifestBytes are m's config and layers.
func manifestBytes(m *v1.Manifest) int64 {
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}
