package prepulllist

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// The fleet's records: one per node (nodeRec) and one per distinct set of
// entries that nodes share (planRec). Forgetting a node or a plan is one
// delete of its record.

// planRec is one distinct set of entries, shared by every node handed
// exactly those entries, and the ImagePlan named by their hash that those
// nodes' NodeImageSets name.
type planRec struct {
	name string
	// images are read by every node holding the plan and written by none:
	// a node whose entries change gets a copy of its own (node.tidy); the
	// rollout reaches them only through spec.images, to read, and the
	// writer only copies them. Every plan nodes share hashes to its name
	// (fleet.checkPlans).
	images []prepullv1.NodeImage
	// planned are images as present as asked, for the agents' statuses
	// that name the plan; nil until the ImagePlan exists. They could be
	// made anew from images for each status, but every status event of
	// every node would then build a hundred reports: made once per plan.
	planned []report
	// seen is when a node's NodeImageSet last named the plan, or when the
	// record was made: the sweep deletes plans no node named for a grace.
	seen time.Time
}

// made reports whether the ImagePlan exists in the API.
func (p *planRec) made() bool { return p.planned != nil }

// spec is a node's entries: its own (own), changed in place by lists until
// they are written, or a plan's (plan), shared with other nodes and read
// only; or none at all.
type spec struct {
	own  *prepullv1.NodeImageSetSpec
	plan *planRec
}

// images are the entries, sorted by image, to read.
func (s *spec) images() []prepullv1.NodeImage {
	if s.own != nil {
		return s.own.Images
	}
	if s.plan != nil {
		return s.plan.images
	}
	return nil
}

// nodeRec is what the controller keeps of one node.
type nodeRec struct {
	// spec is the node's entries: its own when lists changed them since
	// its last write, otherwise its plan's.
	spec
	// report is what the node's agent last reported; batched is report as
	// of the last statusBatch, which rollouts pace by (fleet.reported).
	report, batched reports
	// written is the plan the node's NodeImageSet names, as last written.
	written string
	// exists is whether the node's NodeImageSet exists. The informer says
	// so too, but after the controller's own create it says so late: kept,
	// so that the next write of a node just created patches it.
	exists bool
	// dirty: its entries changed in a way its agent must see, and are not
	// written yet; tidy: the only change is the drop of released entries.
	dirty, tidy bool
}

// record is node's record, made empty. The caller holds f.mu.
func (f *fleet) record(node string) *nodeRec {
	r, ok := f.nodes[node]
	if !ok {
		r = &nodeRec{}
		f.nodes[node] = r
	}
	return r
}

// share makes images a plan's: the plan with equal images when there is
// one already, or a new plan of these. An empty set is no plan (nil).
// The caller holds f.mu.
func (f *fleet) share(images []prepullv1.NodeImage) *planRec {
	if len(images) == 0 {
		return nil
	}
	name := prepullv1.ImagePlanName(images)
	if p, ok := f.plans[name]; ok {
		return p
	}
	p := &planRec{name: name, images: images, seen: f.clock.Now()}
	f.plans[name] = p
	return p
}

// checkPlans reports a plan that nodes share whose images no longer hash
// to its name: one written in place, which would have changed every node
// sharing it.
func (f *fleet) checkPlans() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for node, rec := range f.nodes {
		if p := rec.plan; p != nil {
			if got := prepullv1.ImagePlanName(p.images); got != p.name {
				return fmt.Errorf("node %s shares plan %s, whose images hash to %s", node, p.name, got)
			}
		}
	}
	return nil
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

// node is one node as a list's rollout sees it.
type node struct {
	name     string
	selected bool
	// spec is the node's entries. Every change goes through edit or tidy,
	// which make them the node's own first.
	spec
	// batched is what the node's agent reported as of the last
	// statusBatch: pacing and the list's counts read it, so that the lists
	// reconciled together decide from one view. latest is what the agent
	// reported last: a release is confirmed only by it.
	batched, latest reports
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
// those stay shared with the plan the entries came from, so that a node
// that changed holds a copy of its entries only. A change of an entry's
// owners goes through editEntry, which copies them first.
func (n *node) tidy() *prepullv1.NodeImageSetSpec {
	if n.own == nil {
		n.own, n.plan = &prepullv1.NodeImageSetSpec{Images: slices.Clone(n.images())}, nil
	}
	n.changed = true
	return n.own
}

// editEntry is n's entry i, with owners of its own to change.
func (n *node) editEntry(i int) *prepullv1.NodeImage {
	e := &n.edit().Images[i]
	e.Owners = slices.Clone(e.Owners)
	return e
}
