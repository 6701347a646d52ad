package cri

import (
	"maps"
	"slices"
	"strings"
)

// Labels a Store writes on the runtime's image records to own its pins.
const (
	// OwnerLabelPrefix prefixes one label per owner of a pin; the owner's
	// name follows it.
	OwnerLabelPrefix = "prepull.io/owner."
	// PinnedByLabel marks a pin that prepull set, and so may take away. A pin
	// set by anything else (the CRI plugin pins the sandbox image) stays.
	PinnedByLabel = "prepull.io/pinned-by"
)

// PinChanges returns the label changes that pin an image whose record has
// labels, for owner. It returns nil when nothing needs to change.
func PinChanges(labels map[string]string, owner string) map[string]string {
	changes := map[string]string{}
	if labels[OwnerLabelPrefix+owner] != "true" {
		changes[OwnerLabelPrefix+owner] = "true"
	}
	if labels[PinnedLabel] != PinnedLabelValue {
		changes[PinnedLabel] = PinnedLabelValue
		changes[PinnedByLabel] = "prepull"
	}
	if len(changes) == 0 {
		return nil
	}
	return changes
}

// UnpinChanges returns the label changes that take owner off an image whose
// record has labels; an empty value removes a label. The pin goes with the
// last owner, and only if prepull set it. It returns nil when nothing needs to
// change.
func UnpinChanges(labels map[string]string, owner string) map[string]string {
	changes := map[string]string{}
	key := OwnerLabelPrefix + owner
	remaining := len(PinOwners(labels))
	if _, ok := labels[key]; ok {
		changes[key] = ""
		remaining--
	}
	if remaining == 0 && labels[PinnedByLabel] != "" {
		changes[PinnedLabel] = ""
		changes[PinnedByLabel] = ""
	}
	if len(changes) == 0 {
		return nil
	}
	return changes
}

// SetPinsChanges returns the label changes that leave exactly owners pinned
// on an image whose record has labels — with keepOthers, owners and the
// owners already there — as PinChanges and UnpinChanges would, one owner at
// a time. It returns nil when nothing needs to change.
func SetPinsChanges(labels map[string]string, owners []string, keepOthers bool) map[string]string {
	now := maps.Clone(labels)
	changes := map[string]string{}
	apply := func(c map[string]string) {
		maps.Copy(changes, c)
		now = ApplyChanges(now, c)
	}
	for _, o := range owners {
		apply(PinChanges(now, o))
	}
	if !keepOthers {
		for _, o := range PinOwners(labels) {
			if !slices.Contains(owners, o) {
				apply(UnpinChanges(now, o))
			}
		}
	}
	if len(changes) == 0 {
		return nil
	}
	return changes
}

// PinOwners lists, sorted, the owners recorded in labels.
func PinOwners(labels map[string]string) []string {
	var out []string
	for k := range labels {
		if o, ok := strings.CutPrefix(k, OwnerLabelPrefix); ok {
			out = append(out, o)
		}
	}
	slices.Sort(out)
	return out
}

// ApplyChanges applies label changes from PinChanges or UnpinChanges to
// labels, which may be nil, and returns it.
func ApplyChanges(labels, changes map[string]string) map[string]string {
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range changes {
		if v == "" {
			delete(labels, k)
		} else {
			labels[k] = v
		}
	}
	return labels
}
