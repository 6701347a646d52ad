package cri

import (
	"strings"

	"prepull.io/prepull/imageref"
)

// ManifestDigest is the manifest digest of the present image img that ref
// names: the digest of a digest reference, or for a tag the digest the
// runtime recorded for the tag's repository; "" when it recorded none.
func ManifestDigest(ref string, img *Image) string {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return d
	}
	repo, err := imageref.Repository(ref)
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
