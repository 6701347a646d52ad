package prepulllist

import (
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// spec is node's spec, created empty, and whether other nodes share it.
// The caller holds f.mu.
func (f *fleet) spec(node string) (spec *prepullv1.NodeImageSetSpec, shared bool) {
	s, ok := f.specs[node]
	if !ok {
		s = &prepullv1.NodeImageSetSpec{}
		f.specs[node], f.own[node] = s, true
	}
	return s, !f.own[node]
}

// setSpec records node's spec, its own, as a reconcile left it. The caller
// holds f.mu.
func (f *fleet) setSpec(node string, spec *prepullv1.NodeImageSetSpec) {
	f.specs[node], f.own[node] = spec, true
}

// share returns the spec equal to spec that nodes share, which is spec
// when there is none yet, and its plan's name; an empty spec is not shared
// and names no plan. The caller holds f.mu.
func (f *fleet) share(spec *prepullv1.NodeImageSetSpec) (*prepullv1.NodeImageSetSpec, string) {
	if len(spec.Images) == 0 {
		return spec, ""
	}
	name := prepullv1.ImagePlanName(spec.Images)
	if c, ok := f.canon[name]; ok {
		return c, name
	}
	f.canon[name] = spec
	return spec, name
}

// internSpec shares the strings of spec that repeat on every node.
func internSpec(spec *prepullv1.NodeImageSetSpec) {
	for i := range spec.Images {
		e := &spec.Images[i]
		e.Image = intern(e.Image)
		for j := range e.Owners {
			o := &e.Owners[j]
			o.List = intern(o.List)
			for k := range o.Tags {
				o.Tags[k] = intern(o.Tags[k])
			}
		}
	}
}

// node is one node as the planner sees it.
type node struct {
	name     string
	selected bool
	// spec is the node's NodeImageSet spec in the fleet; status is what
	// its agent reported. Both are empty for a node without one yet. A
	// spec is shared with the nodes whose specs are equal to it (the fleet
	// keeps one per plan): it is changed only through edit.
	spec   *prepullv1.NodeImageSetSpec
	shared bool
	status reports
	// live is what the agent reported last, newer than status (the view of
	// the last statusBatch that pacing decides from): a release is
	// confirmed only by it.
	live reports
	// changed is set when the plan changed spec; urgent when the change
	// is one the agent must act on, not only the drop of what it released.
	changed, urgent bool
	// tainted is whether the node carries the startup taint; created is
	// when it registered.
	tainted bool
	created time.Time
	// obj is the node as the cache holds it (labels, taints), for
	// placement; nil for a node that is gone.
	obj *corev1.Node
}

// edit is n's spec, to be changed in a way its agent must act on: its
// own copy first if it is shared. Every change of a node's spec goes
// through edit or tidy.
func (n *node) edit() *prepullv1.NodeImageSetSpec {
	n.urgent = true
	return n.tidy()
}

// tidy is n's spec, to drop what its agent has released: a change the
// agent has nothing to do for, which the fleet may write later.
//
// A shared spec is copied entry by entry, without the entries' owners:
// those stay shared with the specs the entries came from, so that a node
// that changed holds a copy of its entries only. A change of an entry's
// owners goes through editEntry, which copies them first.
func (n *node) tidy() *prepullv1.NodeImageSetSpec {
	if n.shared {
		n.spec, n.shared = &prepullv1.NodeImageSetSpec{Plan: n.spec.Plan, Images: slices.Clone(n.spec.Images)}, false
	}
	n.changed = true
	return n.spec
}

// editEntry is n's entry i, with owners of its own to change.
func (n *node) editEntry(i int) *prepullv1.NodeImage {
	e := &n.edit().Images[i]
	e.Owners = slices.Clone(e.Owners)
	return e
}
