package cri

import (
	"fmt"

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
