package prepulllist

import (
	"fmt"

	"github.com/distribution/reference"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// want is one image of a list, parsed.
type want struct {
	// image is the entry as the list names it.
	image string
	// repo is the normalized repository, "docker.io/library/nginx".
	repo string
	// tag is the normalized tag reference, "docker.io/library/nginx:1.27",
	// or empty for an image given by digest alone.
	tag string
	// pinnedDigest is the digest the list gives ("sha256:…"), if any.
	pinnedDigest string
	// advice warns about an entry that pods cannot use from the node alone.
	advice string
}

// latestAdvice explains why a :latest or untagged entry does not spare pods a
// registry: such pods default to imagePullPolicy Always.
const latestAdvice = "a pod whose image has the tag latest or no tag defaults to imagePullPolicy: Always and contacts the registry at every start, whatever the node holds; pin a tag or a digest"

// parseWant parses one list entry. The apiserver already refused malformed
// references; this also normalizes and catches what the pattern cannot.
func parseWant(image string) (want, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return want{}, fmt.Errorf("image %q: %w", image, err)
	}
	w := want{image: image, repo: named.Name()}
	if d, ok := named.(reference.Digested); ok {
		w.pinnedDigest = d.Digest().String()
	}
	switch t, ok := named.(reference.Tagged); {
	case ok:
		w.tag = named.Name() + ":" + t.Tag()
		if t.Tag() == "latest" {
			w.advice = latestAdvice
		}
	case w.pinnedDigest == "":
		w.tag = named.Name() + ":latest"
		w.advice = latestAdvice
	}
	return w, nil
}

// digestRef is the reference of repo at digest.
func digestRef(repo, digest string) string { return repo + "@" + digest }

// ownerName is how a list is named as an owner: "namespace/name".
func ownerName(l *prepullv1.PrePullList) string { return l.Namespace + "/" + l.Name }
