package prepulllist

import (
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// setOwner records o on n's entry ref, creating the entry with archive and
// resolveAfter. A spec's entries are kept sorted by image: equal sets of
// images are then equal plans, and entries are found by binary search.
func setOwner(n *node, ref string, o prepullv1.ImageOwner, archive *prepullv1.ArchiveSource, resolveAfter *metav1.Time) {
	i, found := entryIndex(n.images(), ref)
	if !found {
		spec := n.edit()
		spec.Images = slices.Insert(spec.Images, i, prepullv1.NodeImage{Image: ref})
	}
	e := &n.images()[i]
	j := slices.IndexFunc(e.Owners, func(x prepullv1.ImageOwner) bool { return x.List == o.List })
	switch {
	case j < 0:
		e = n.editEntry(i)
		e.Owners = append(e.Owners, o)
		e.SortOwners()
	case !sameOwner(e.Owners[j], o):
		e = n.editEntry(i)
		e.Owners[j] = o
	}
	if archive != nil && e.Archive == nil {
		e = &n.edit().Images[i]
		e.Archive = archive.DeepCopy()
	}
	if resolveAfter != nil && !resolveAfter.Equal(e.ResolveAfter) {
		e = &n.edit().Images[i]
		e.ResolveAfter = resolveAfter.DeepCopy()
	}
}

func sameOwner(a, b prepullv1.ImageOwner) bool {
	return a.List == b.List && a.Releasing == b.Releasing && slices.Equal(a.Tags, b.Tags)
}

// unclaim takes tag, a tag of repo, off every owner of every entry of n's
// spec but ref: ref now holds the tag. Only entries of repo (its digests,
// or the tag itself) can claim it; they sit together in the sorted entries.
func unclaim(n *node, repo, tag, ref string) {
	from, _ := entryIndex(n.images(), repo)
	for i := from; i < len(n.images()) && strings.HasPrefix(n.images()[i].Image, repo); i++ {
		if n.images()[i].Image == ref {
			continue
		}
		for j, o := range n.images()[i].Owners {
			if !o.Releasing && slices.Contains(o.Tags, tag) {
				mine := &n.editEntry(i).Owners[j]
				mine.Tags = slices.DeleteFunc(slices.Clone(mine.Tags), func(t string) bool { return t == tag })
			}
		}
	}
}

func findOwner(images []prepullv1.NodeImage, ref, list string) *prepullv1.ImageOwner {
	i, found := entryIndex(images, ref)
	if !found {
		return nil
	}
	return findOwnerIn(&images[i], list)
}

// entryIndex is where ref's entry is, or would be, in a spec's entries,
// which are sorted by image, and whether it is there.
func entryIndex(images []prepullv1.NodeImage, ref string) (int, bool) {
	return slices.BinarySearchFunc(images, ref, func(e prepullv1.NodeImage, ref string) int { return strings.Compare(e.Image, ref) })
}

func findOwnerIn(e *prepullv1.NodeImage, list string) *prepullv1.ImageOwner {
	for i := range e.Owners {
		if e.Owners[i].List == list {
			return &e.Owners[i]
		}
	}
	return nil
}
