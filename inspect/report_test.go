package inspect

import (
	stdbytes "bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// A list's view counts where its images on nodes came from and shows the
// nodes that wait for a source, with their reasons.
func TestListReportShowsSourcesAndWaits(t *testing.T) {
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app"}}
	l.Status.Images = []prepullv1.ImageResolution{{Image: "r.example/app:1", Digest: "sha256:aa"}}
	entry := prepullv1.NodeImage{Image: "r.example/app@sha256:aa", Owners: []prepullv1.ImageOwner{{List: "ns/app"}}}
	set := func(node string, st prepullv1.NodeImageStatus) prepullv1.NodeImageSet {
		st.Image = entry.Image
		s := prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: node}}
		s.Spec.Images = []prepullv1.NodeImage{entry}
		s.Status.Images = []prepullv1.NodeImageStatus{st}
		return s
	}
	sets := []prepullv1.NodeImageSet{
		set("n1", prepullv1.NodeImageStatus{Phase: prepullv1.PhasePresent, Source: prepullv1.FetchedFromRegistry, BytesTotal: 100}),
		set("n2", prepullv1.NodeImageStatus{Phase: prepullv1.PhasePresent, Source: prepullv1.FetchedFromPeer, FetchedFrom: "n1", BytesTotal: 100}),
		set("n3", prepullv1.NodeImageStatus{Phase: prepullv1.PhasePending, Reason: prepullv1.ReasonWaitingForRegistryBudget, LastError: "the registry budget of r.example is spent"}),
	}
	r := listReport(l, sets, nil, time.Now())
	if want := (prepullv1.FetchCounts{Registry: 1, Peer: 1}); r.Sources != want {
		t.Errorf("sources %+v, want %+v", r.Sources, want)
	}
	if len(r.Waiting) != 1 || r.Waiting[0].Node != "n3" || r.Waiting[0].Image != "r.example/app:1" || r.Waiting[0].Reason != prepullv1.ReasonWaitingForRegistryBudget {
		t.Errorf("waiting %+v", r.Waiting)
	}
	var out stdbytes.Buffer
	if err := PrintLists(&out, []ListReport{r}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WAITING ON", "WaitingForRegistryBudget", "fetched: 1 from registries, 1 from peers, 0 from archives"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the view lacks %q:\n%s", want, out.String())
		}
	}
}
