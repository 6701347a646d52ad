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
