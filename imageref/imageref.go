// Package imageref takes image references apart and puts them in the fully
// qualified form container runtimes store them in, so that the controller,
// the lists' readers, bundles, node apply and the agent all name an image
// the same way.
package imageref

import (
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
)

// ErrInvalid means a string is not an image reference.
var ErrInvalid = errors.New("invalid image reference")

// Normalize returns ref in the fully qualified form the runtime stores, e.g.
// "nginx:1.27" becomes "docker.io/library/nginx:1.27". A reference with neither
// tag nor digest gets the tag "latest", as the runtime gives it.
func Normalize(ref string) (string, error) {
	named, err := parse(ref)
	if err != nil {
		return "", err
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

// Parse takes s apart.
func Parse(s string) (Ref, error) {
	named, err := parse(s)
	if err != nil {
		return Ref{}, err
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
	named, err := parse(ref)
	if err != nil {
		return "", err
	}
	return named.Name(), nil
}

// Host is the registry host of ref, e.g. "docker.io".
func Host(ref string) (string, error) {
	named, err := parse(ref)
	if err != nil {
		return "", err
	}
	return reference.Domain(named), nil
}

// MaxLength is the longest reference prepull takes, as its API does.
const MaxLength = 255

func parse(ref string) (reference.Named, error) {
	if n := len([]rune(ref)); n > MaxLength {
		return nil, fmt.Errorf("image reference %q: %w: %d characters, at most %d", ref, ErrInvalid, n, MaxLength)
	}
	if first, _, ok := strings.Cut(ref, "/"); ok && !strings.ContainsAny(first, ".:") && strings.ToLower(first) != first {
		// The reference library reads a first component in upper case as
		// a registry host; it is not one (a host has a '.' or a ':', as
		// localhost has neither and is in lower case), and as a repository
		// component it must be lower case.
		return nil, fmt.Errorf("image reference %q: %w: %q is not a registry host (it has neither a '.' nor a ':') and a repository is in lower case", ref, ErrInvalid, first)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %w", ref, ErrInvalid, err)
	}
	if d, ok := named.(reference.Digested); ok && d.Digest().Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("image reference %q: %w: digest algorithm %s, only sha256 is supported", ref, ErrInvalid, d.Digest().Algorithm())
	}
	return named, nil
}

// Remote parses ref as go-containerregistry names it for requests: reached
// over plain HTTP when its registry host is one of insecure.
func Remote(ref string, insecure map[string]bool) (name.Reference, error) {
	var opts []name.Option
	if r, err := name.ParseReference(ref); err == nil && insecure[r.Context().RegistryStr()] {
		opts = append(opts, name.Insecure)
	}
	return name.ParseReference(ref, opts...)
}
