package prepulllist

import (
	"strings"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/imageref"
)

// want is one image of a list, parsed: Tag is empty for an image given by
// digest alone, and Digest is the digest the list gives, if any.
type want struct {
	// image is the entry as the list names it.
	image string
	imageref.Ref
	// advice warns about an entry that pods cannot use from the node alone.
	advice string
}

// latestAdvice explains why a :latest or untagged entry does not spare pods a
// registry: such pods default to imagePullPolicy Always.
const latestAdvice = "a pod whose image has the tag latest or no tag defaults to imagePullPolicy: Always and contacts the registry at every start, whatever the node holds; pin a tag or a digest"

// parseWant parses one list entry. The apiserver already refused malformed
// references; this also normalizes and catches what the pattern cannot.
func parseWant(image string) (want, error) {
	r, err := imageref.Parse(image)
	if err != nil {
		return want{}, err
	}
	w := want{image: image, Ref: r}
	if w.latest() {
		w.advice = latestAdvice
	}
	return w, nil
}

// latest reports whether w names the tag latest, as an image with neither
// tag nor digest does.
func (w want) latest() bool { return strings.HasSuffix(w.Tag, ":latest") }

// digestRef is the reference of repo at digest.
func digestRef(repo, digest string) string { return repo + "@" + digest }

// ownerName is how a list is named as an owner: "namespace/name".
func ownerName(l *prepullv1.PrePullList) string { return l.Namespace + "/" + l.Name }
