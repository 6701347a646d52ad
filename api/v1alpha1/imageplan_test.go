package v1alpha1

import "testing"

func TestIsPresentAsAsked(t *testing.T) {
	e := NodeImage{Image: "r/a@sha256:aa", Owners: []ImageOwner{{List: "ns/two"}, {List: "ns/one"}, {List: "ns/gone", Releasing: true}}}
	asked := NodeImageStatus{Image: e.Image, Phase: PhasePresent, Digest: "sha256:aa", Pinned: true, PinOwners: []string{"ns/two", "ns/one"}}
	tests := []struct {
		name   string
		change func(*NodeImageStatus)
		want   bool
	}{
		{"present, pinned by the active owners in any order", func(*NodeImageStatus) {}, true},
		{"progress and times do not count", func(s *NodeImageStatus) { s.BytesTotal, s.Attempts = 10, 2 }, true},
		{"pulling", func(s *NodeImageStatus) { s.Phase = PhasePulling }, false},
		{"another digest", func(s *NodeImageStatus) { s.Digest = "sha256:bb" }, false},
		{"the releasing owner's pin is still on", func(s *NodeImageStatus) { s.PinOwners = append(s.PinOwners, "ns/gone") }, false},
		{"an owner's pin is missing", func(s *NodeImageStatus) { s.PinOwners = []string{"ns/one"} }, false},
		{"not pinned", func(s *NodeImageStatus) { s.Pinned, s.PinOwners = false, nil }, false},
		{"imported from an archive", func(s *NodeImageStatus) { s.ImportedFrom = "abc" }, false},
		{"a signature to tell", func(s *NodeImageStatus) { s.Signature = &SignatureStatus{} }, false},
		{"a failure to tell", func(s *NodeImageStatus) { s.Reason = "Unauthorized" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := asked
			st.PinOwners = append([]string(nil), asked.PinOwners...)
			tt.change(&st)
			if got := e.IsPresentAsAsked(&st); got != tt.want {
				t.Errorf("IsPresentAsAsked = %v, want %v", got, tt.want)
			}
		})
	}
	tag := NodeImage{Image: "r/a:1", Owners: []ImageOwner{{List: "ns/one"}}}
	if tag.IsPresentAsAsked(&NodeImageStatus{Image: "r/a:1", Phase: PhasePresent, Digest: "sha256:aa", Pinned: true, PinOwners: []string{"ns/one"}}) {
		t.Error("a tag entry was left out: its digest must be reported")
	}
	if got := e.PresentAsAsked(); got.Digest != "sha256:aa" || got.Phase != PhasePresent || !got.Pinned || len(got.PinOwners) != 2 || got.PinOwners[0] != "ns/one" {
		t.Errorf("PresentAsAsked = %+v", got)
	}
}

func TestPlanned(t *testing.T) {
	plan := &ImagePlan{Spec: ImagePlanSpec{Images: []NodeImage{
		{Image: "r/a@sha256:aa", Owners: []ImageOwner{{List: "ns/plan"}}},
		{Image: "r/c@sha256:cc", Owners: []ImageOwner{{List: "ns/plan"}}},
	}}}
	spec := NodeImageSetSpec{Plan: "plan-x", Images: []NodeImage{
		{Image: "r/b@sha256:bb", Owners: []ImageOwner{{List: "ns/hand"}}},
		{Image: "r/c@sha256:cc", Owners: []ImageOwner{{List: "ns/hand"}}},
	}}
	got := spec.Planned(plan)
	if len(got) != 3 || got[0].Image != "r/a@sha256:aa" || got[1].Image != "r/b@sha256:bb" || got[2].Image != "r/c@sha256:cc" || got[2].Owners[0].List != "ns/hand" {
		t.Errorf("Planned = %+v, want a, b and c sorted, c as written in spec.images", got)
	}
	if got := (&NodeImageSetSpec{}).Planned(plan); len(got) != 0 {
		t.Errorf("a spec naming no plan read the plan's images: %+v", got)
	}
}
