package cri

import (
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
