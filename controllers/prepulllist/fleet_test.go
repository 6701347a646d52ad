package prepulllist

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// The informer passes objects it already holds through its transform again
// (on a relist, and at the end of a streaming list): the fleet must keep
// what the agent reported, not read the stripped object as "no reports".
func TestObserveIsIdempotent(t *testing.T) {
	f := newFleet(clock.RealClock{})
	set := &prepullv1.NodeImageSet{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "7"},
		Status: prepullv1.NodeImageSetStatus{Images: []prepullv1.NodeImageStatus{
			{Image: "r/app@sha256:aa", Phase: prepullv1.PhasePresent, PinOwners: []string{"ns/l"}},
			{Image: "r/app:1", Phase: prepullv1.PhaseFailed, Reason: "NotFound"},
		}},
	}
	stripped := f.observe(set)
	if len(stripped.Status.Images) != 0 || stripped.ResourceVersion != "7" {
		t.Fatalf("stripped object: %+v", stripped)
	}
	again := f.observe(stripped)
	if again != stripped {
		t.Errorf("a stripped object came back changed: %+v", again)
	}
	rs := f.status["n1"]
	if len(rs) != 2 {
		t.Fatalf("reports after a second pass: %+v", rs)
	}
	if r := rs.find("r/app@sha256:aa"); r == nil || r.phase != prepullv1.PhasePresent {
		t.Errorf("report of the digest: %+v", r)
	}
	if r := rs.find("r/app:1"); r == nil || r.extra == nil || r.extra.reason != "NotFound" {
		t.Errorf("report of the failed tag: %+v", r)
	}
	// A new version of the object is observed anew.
	set.Status.Images = set.Status.Images[:1]
	f.observe(set.DeepCopy())
	if len(f.status["n1"]) != 1 {
		t.Errorf("reports of a new version: %+v", f.status["n1"])
	}
}
