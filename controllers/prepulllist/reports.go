package prepulllist

import (
	"slices"
	"sort"
	"strings"
	"unique"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// report is what the controller needs of one image's status on one node.
type report struct {
	image string
	phase prepullv1.ImagePhase
	// pins are the owners whose pin the image carries, joined by commas
	// and interned: most nodes report the same few sets.
	pins string
	// extra is set only for tag entries (their digest and pull time) and
	// failed images (their reason and message).
	extra *reportExtra
}

type reportExtra struct {
	digest          string
	pulledAt        *metav1.Time
	reason, message string
}

// reports are one node's reports: those its status lists, and for the
// images of the plan its status names that it does not list, present as
// asked (NodeImageSetStatus.Plan).
type reports struct {
	listed []report
	// plan is the status's plan; planned its images as present as asked,
	// shared by every node, nil until the fleet knows the plan.
	plan    string
	planned []report
	// verifies is the node's kubelet's credential verification policy
	// (NodeImageSetStatus.CredentialVerification).
	verifies string
	// peer is where the node's agent serves peers, nil when it does not.
	peer *prepullv1.Peer
}

// find is the report of ref, or nil.
func (rs reports) find(ref string) *report {
	if r := search(rs.listed, ref); r != nil {
		return r
	}
	return search(rs.planned, ref)
}

// settled reports whether the node is done with the image: Present, or
// Failed, or Lazy (a lazy snapshotter's, which the agent cannot change).
func (r *report) settled() bool {
	return r != nil && (r.phase == prepullv1.PhasePresent || r.phase == prepullv1.PhaseFailed || r.phase == prepullv1.PhaseLazy)
}

// pinnedBy reports whether list's pin is on the image.
func (r *report) pinnedBy(list string) bool {
	for o := range strings.SplitSeq(r.pins, ",") {
		if o == list {
			return true
		}
	}
	return false
}

// pinsOf is owners as a report holds them.
func pinsOf(owners []string) string {
	if len(owners) == 0 {
		return ""
	}
	return intern(strings.Join(owners, ","))
}

// search finds ref in rs, sorted by image.
func search(rs []report, ref string) *report {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].image >= ref })
	if i < len(rs) && rs[i].image == ref {
		return &rs[i]
	}
	return nil
}

// presentAsAsked are the reports an agent leaves out for the images of
// plan, sorted by image as the plan is.
func presentAsAsked(plan []prepullv1.NodeImage) []report {
	out := make([]report, 0, len(plan))
	for i := range plan {
		st := plan[i].PresentAsAsked()
		out = append(out, report{image: intern(st.Image), phase: internPhase(st.Phase), pins: pinsOf(st.PinOwners)})
	}
	slices.SortFunc(out, func(a, b report) int { return strings.Compare(a.image, b.image) })
	return out
}

// snapshot makes what agents reported so far the view reconciles read.
func (f *fleet) snapshot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rec := range f.nodes {
		rec.batched = rec.report
	}
	f.batchedOnce = true
}

// reported is node's reports as of the last statusBatch (the latest ones
// until there was one). The caller holds f.mu.
func (f *fleet) reported(rec *nodeRec) reports {
	if !f.batchedOnce {
		return rec.report
	}
	return rec.batched
}

// observe records a NodeImageSet the informer delivered: its reports, and
// that it exists. It returns the object stripped to its metadata, which is
// all the cache keeps.
//
// The informer may pass an object it already holds through the transform
// again (a relist replaces the store with what it has, and the streaming
// list does so at its end); such an object is the stripped one, which
// carries strippedMark, and is returned as it is: its reports are those
// recorded when it was first seen.
func (f *fleet) observe(set *prepullv1.NodeImageSet) *prepullv1.NodeImageSet {
	if _, ok := set.Annotations[strippedAnnotation]; ok {
		return set
	}
	rs := reports{listed: make([]report, 0, len(set.Status.Images)), plan: set.Status.Plan, verifies: intern(set.Status.CredentialVerification), peer: set.Status.Peer}
	for _, st := range set.Status.Images {
		rep := report{image: intern(st.Image), phase: internPhase(st.Phase), pins: pinsOf(st.PinOwners)}
		tagEntry := !strings.Contains(st.Image, "@")
		if tagEntry || st.Phase == prepullv1.PhaseFailed || st.Phase == prepullv1.PhaseLazy || st.Reason == prepullv1.ReasonPeersUnavailable {
			rep.extra = &reportExtra{digest: st.Digest, pulledAt: st.PulledAt, reason: st.Reason, message: st.LastError}
		}
		rs.listed = append(rs.listed, rep)
	}
	slices.SortFunc(rs.listed, func(a, b report) int { return strings.Compare(a.image, b.image) })
	f.mu.Lock()
	if p := f.plans[rs.plan]; p != nil {
		rs.planned = p.planned
	}
	rec := f.record(set.Name)
	rec.report, rec.exists = rs, true
	f.mu.Unlock()
	return &prepullv1.NodeImageSet{
		TypeMeta: set.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: set.Name, UID: set.UID, ResourceVersion: set.ResourceVersion,
			Generation: set.Generation, DeletionTimestamp: set.DeletionTimestamp,
			Annotations: strippedMark,
		},
	}
}

// strippedAnnotation marks the objects observe made. It exists only in the
// controller's cache, never in the API.
const strippedAnnotation = "prepull.io/fleet-stripped"

// strippedMark is the annotations of every stripped object, shared: the
// cache's objects are read, never written.
var strippedMark = map[string]string{strippedAnnotation: ""}

// gone records that a NodeImageSet was deleted.
func (f *fleet) gone(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rec := f.nodes[name]; rec != nil {
		rec.exists, rec.report = false, reports{}
	}
}

func intern(s string) string { return unique.Make(s).Value() }

func internPhase(p prepullv1.ImagePhase) prepullv1.ImagePhase {
	switch p {
	case prepullv1.PhasePending, prepullv1.PhasePulling, prepullv1.PhasePresent, prepullv1.PhaseLazy, prepullv1.PhaseFailed, prepullv1.PhaseReleased:
		return prepullv1.ImagePhase(intern(string(p)))
	}
	return p
}
