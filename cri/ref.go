package cri

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Normalize returns ref in the fully qualified form the runtime stores, e.g.
// "nginx:1.27" becomes "docker.io/library/nginx:1.27". A reference with neither
// tag nor digest gets the tag "latest", as the runtime gives it.
func Normalize(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalid, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// Ref is an image reference taken apart, fully qualified as the runtime
// stores references.
type Ref struct {
	// Repo is the repository, "docker.io/library/nginx".
	Repo string
	// Tag is the tag reference, "docker.io/library/nginx:1.27". A reference
	// with neither tag nor digest gets "latest", as the runtime gives it; a
	// digest alone has no tag.
	Tag string
	// Digest is the digest the reference pins, "sha256:…", or "".
	Digest string
}

// ParseRef takes s apart.
func ParseRef(s string) (Ref, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w: %w", s, ErrInvalid, err)
	}
	r := Ref{Repo: named.Name()}
	if d, ok := named.(reference.Digested); ok {
		r.Digest = d.Digest().String()
	}
	if t, ok := named.(reference.Tagged); ok {
		r.Tag = r.Repo + ":" + t.Tag()
	} else if r.Digest == "" {
		r.Tag = r.Repo + ":latest"
	}
	return r, nil
}

// DigestRef is the reference by digest, "repo@sha256:…", or "" when r pins
// no digest.
func (r Ref) DigestRef() string {
	if r.Digest == "" {
		return ""
	}
	return r.Repo + "@" + r.Digest
}

// Repository returns the fully qualified repository of ref, without tag or
// digest.
func Repository(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalid, err)
	}
	return named.Name(), nil
}

// ManifestDigest is the manifest digest of the present image img that ref
// names: the digest of a digest reference, or for a tag the digest the
// runtime recorded for the tag's repository; "" when it recorded none.
func ManifestDigest(ref string, img *Image) string {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return d
	}
	repo, err := Repository(ref)
	if err != nil {
		return ""
	}
	for _, rd := range img.RepoDigests {
		if r, d, ok := strings.Cut(rd, "@"); ok && r == repo {
			return d
		}
	}
	return ""
}
