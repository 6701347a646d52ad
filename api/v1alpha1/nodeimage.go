package v1alpha1

import (
	"cmp"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Derive computes the entry's fields from its owners, which it sorts by
// list. Of the owners that are not releasing: the union of tags and secrets,
// pinned if any says so, the shortest timeout, the largest backoff limit,
// the latest resolveAfter, the first archive.
//
// The controller derives every entry it writes; tests that play the
// controller derive theirs the same way.
func (e *NodeImage) Derive() {
	slices.SortFunc(e.Owners, func(a, b ImageOwner) int { return cmp.Compare(a.List, b.List) })
	var tags, secrets []string
	var timeout *metav1.Duration
	var backoff *int32
	var resolveAfter *metav1.Time
	var archive *ArchiveSource
	retain := RetainUnpinned
	for _, o := range e.Owners {
		if o.Releasing {
			continue
		}
		tags = append(tags, o.Tags...)
		secrets = append(secrets, o.PullSecrets...)
		if o.Retain == RetainPinned || o.Retain == "" {
			retain = RetainPinned
		}
		if o.Timeout != nil && (timeout == nil || o.Timeout.Duration < timeout.Duration) {
			timeout = o.Timeout.DeepCopy()
		}
		if o.BackoffLimit != nil && (backoff == nil || *o.BackoffLimit > *backoff) {
			v := *o.BackoffLimit
			backoff = &v
		}
		if o.ResolveAfter != nil && (resolveAfter == nil || resolveAfter.Before(o.ResolveAfter)) {
			resolveAfter = o.ResolveAfter.DeepCopy()
		}
		if archive == nil && o.Archive != nil {
			archive = o.Archive.DeepCopy()
		}
	}
	e.ResolveAfter, e.Archive = resolveAfter, archive
	slices.Sort(tags)
	slices.Sort(secrets)
	e.Tags, e.PullSecrets = slices.Compact(tags), slices.Compact(secrets)
	e.Retain, e.Timeout, e.BackoffLimit = retain, timeout, backoff
}
