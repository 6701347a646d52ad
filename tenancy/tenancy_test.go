package tenancy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/tenancy"
)

func TestRestrictIntersectsTheListsSelector(t *testing.T) {
	pol := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: prepullv1.PrePullPolicySpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}}}}
	for _, tc := range []struct {
		list  string
		node  map[string]string
		wants bool
	}{
		{"", map[string]string{"pool": "a"}, true},
		{"", map[string]string{"pool": "b"}, false},
		{"", nil, false},
		{"zone=z1", map[string]string{"pool": "a", "zone": "z1"}, true},
		{"zone=z1", map[string]string{"pool": "b", "zone": "z1"}, false},
		{"pool in (a,b)", map[string]string{"pool": "b"}, false},
	} {
		sel, err := labels.Parse(tc.list)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tenancy.Restrict(pol, sel)
		if err != nil {
			t.Fatal(err)
		}
		if got.Matches(labels.Set(tc.node)) != tc.wants {
			t.Errorf("list %q restricted to pool=a, node %v: selected %t, want %t", tc.list, tc.node, !tc.wants, tc.wants)
		}
	}
	open := &prepullv1.PrePullPolicy{}
	if got, _ := tenancy.Restrict(open, labels.Everything()); !got.Matches(labels.Set{"pool": "b"}) {
		t.Errorf("a policy without a node selector narrows the list's")
	}
}

func TestQuotasServeTheOldestLists(t *testing.T) {
	two, five := int32(2), int32(5)
	pol := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "q"}, Spec: prepullv1.PrePullPolicySpec{
		Quotas: prepullv1.PolicyQuotas{Lists: &two, ImagesPerNode: &five}}}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(name string, age int, images ...string) *prepullv1.PrePullList {
		l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(at.Add(time.Duration(age) * time.Minute))}}
		for _, i := range images {
			l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
		}
		return l
	}
	imgs := func(n int, prefix string) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("r.example.com/%s%d:1", prefix, i))
		}
		return out
	}
	removing := mk("removing", 0, "r.example.com/x:1")
	removing.Spec.OnDelete = prepullv1.DeleteRemove // refused by Check: not counted
	lists := []*prepullv1.PrePullList{
		mk("third", 3, imgs(1, "c")...),
		mk("first", 1, imgs(3, "a")...),
		mk("second", 2, append(imgs(3, "b"), imgs(2, "a")...)...), // 3 new: 6 > 5
		mk("fourth", 4, imgs(1, "a")...),                          // already held
		removing,
	}
	images := func(l *prepullv1.PrePullList) []string {
		var out []string
		for _, i := range l.Spec.Images {
			out = append(out, i.Image)
		}
		return out
	}
	got := tenancy.Quotas(pol, lists, images)
	key := func(n string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: n} }
	if _, ok := got[key("first")]; ok {
		t.Errorf("the oldest list is refused: %v", got)
	}
	if !strings.HasPrefix(got[key("second")], "spec.quotas.imagesPerNode: PrePullPolicy q") || !strings.Contains(got[key("second")], "would add 3") {
		t.Errorf("second: %q, want it past imagesPerNode", got[key("second")])
	}
	if _, ok := got[key("third")]; ok {
		t.Errorf("third fits (4 images, 2 lists): %v", got)
	}
	if !strings.HasPrefix(got[key("fourth")], "spec.quotas.lists: PrePullPolicy q") {
		t.Errorf("fourth: %q, want it past the lists quota", got[key("fourth")])
	}
	if _, ok := got[key("removing")]; ok {
		t.Errorf("a list Check refuses is counted by the quotas: %v", got)
	}
}
