package prepulllist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
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
