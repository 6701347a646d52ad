package imageplan

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// Expand lists the images a status left out as present as asked, each
// with the source its letter in planSources names; letters that do not
// match the images left out (a status of another version of the plan) are
// not used.
func TestExpandTellsWhereLeftOutImagesCameFrom(t *testing.T) {
	owner := []prepullv1.ImageOwner{{List: "ns/l"}}
	images := []prepullv1.NodeImage{
		{Image: "r.example/a@sha256:aa", Owners: owner},
		{Image: "r.example/b@sha256:bb", Owners: owner},
		{Image: "r.example/c@sha256:cc", Owners: owner},
	}
	plan := &prepullv1.ImagePlan{ObjectMeta: metav1.ObjectMeta{Name: prepullv1.ImagePlanName(images)}, Spec: prepullv1.ImagePlanSpec{Count: 3, Images: images}}
	scheme := runtime.NewScheme()
	if err := prepullv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(plan).Build()
	for _, tc := range []struct {
		sources string
		want    map[string]prepullv1.ImageFetchSource
	}{
		{"PR", map[string]prepullv1.ImageFetchSource{"r.example/a@sha256:aa": prepullv1.FetchedFromPeer, "r.example/c@sha256:cc": prepullv1.FetchedFromRegistry}},
		{"-P", map[string]prepullv1.ImageFetchSource{"r.example/a@sha256:aa": "", "r.example/c@sha256:cc": prepullv1.FetchedFromPeer}},
		{"PRP", map[string]prepullv1.ImageFetchSource{"r.example/a@sha256:aa": "", "r.example/c@sha256:cc": ""}},
	} {
		set := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: prepullv1.NodeImageSetSpec{Plan: plan.Name}}
		set.Status = prepullv1.NodeImageSetStatus{Plan: plan.Name, PlanPresent: 2, PlanSources: tc.sources, Images: []prepullv1.NodeImageStatus{
			{Image: "r.example/b@sha256:bb", Phase: prepullv1.PhasePulling, Source: prepullv1.FetchedFromRegistry},
		}}
		if err := Expand(context.Background(), c, set); err != nil {
			t.Fatal(err)
		}
		if len(set.Status.Images) != 3 {
			t.Fatalf("%q: images %+v", tc.sources, set.Status.Images)
		}
		for _, st := range set.Status.Images {
			want, left := tc.want[st.Image]
			if left && (st.Phase != prepullv1.PhasePresent || st.Source != want) {
				t.Errorf("%q: %s %s from %q, want Present from %q", tc.sources, st.Image, st.Phase, st.Source, want)
			}
			if !left && (st.Phase != prepullv1.PhasePulling || st.Source != prepullv1.FetchedFromRegistry) {
				t.Errorf("%q: the listed %s changed: %+v", tc.sources, st.Image, st)
			}
		}
	}
}
