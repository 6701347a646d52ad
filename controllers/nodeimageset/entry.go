package nodeimageset

import (
	"context"
	"fmt"
	"slices"
	"strings"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// entry is one spec image with the settings its owners' lists give it: the
// NodeImageSet carries only what the controller decides, and the lists'
// own settings are read from the lists.
type entry struct {
	*prepullv1.NodeImage
	prepullv1.EntrySettings
}

// refs are the references e makes: its image and the tags it points there.
func (e *entry) refs() []string { return append([]string{e.Image}, e.Tags...) }

func (e *entry) clone() *entry {
	return &entry{NodeImage: e.NodeImage.DeepCopy(), EntrySettings: e.EntrySettings}
}

// entries pairs every spec image of set with its settings, reading each
// owner's PrePullList from the cache once.
func (r *Reconciler) entries(ctx context.Context, set *prepullv1.NodeImageSet) []*entry {
	lists := map[string]*prepullv1.PrePullList{}
	lookup := func(owner string) *prepullv1.PrePullList {
		if l, ok := lists[owner]; ok {
			return l
		}
		key, _ := prepullv1.OwnerKey(owner)
		l := &prepullv1.PrePullList{}
		if err := r.Get(ctx, key, l); err != nil {
			// Gone or not readable: the API's defaults.
			l = nil
		}
		lists[owner] = l
		return l
	}
	out := make([]*entry, 0, len(set.Spec.Images))
	for i := range set.Spec.Images {
		e := &set.Spec.Images[i]
		out = append(out, &entry{NodeImage: e, EntrySettings: e.Settings(lookup)})
	}
	return out
}

// tagConflicts finds the tags that more than one entry claims. For each, the
// entry whose image sorts first keeps the tag, on every node alike; every
// other claimant is returned with the message that says so, and is left
// alone: no tag is moved for it, so the tag never moves back and forth.
func tagConflicts(entries []*entry) map[string]string {
	claims := map[string][]string{}
	for _, e := range entries {
		for _, t := range e.Tags {
			claims[t] = append(claims[t], e.Image)
		}
	}
	losers := map[string]string{}
	for tag, images := range claims {
		if len(images) < 2 {
			continue
		}
		slices.Sort(images)
		for _, img := range images[1:] {
			msg := fmt.Sprintf("tag %s is claimed by %s and by %s; %s keeps it", tag, digestOf(images[0]), digestOf(img), digestOf(images[0]))
			if old, ok := losers[img]; ok {
				msg = old + "; " + msg
			}
			losers[img] = truncate(msg, 1024)
		}
	}
	return losers
}

// digestOf is the digest of a digest reference, or the reference itself.
func digestOf(ref string) string {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return d
	}
	return ref
}
