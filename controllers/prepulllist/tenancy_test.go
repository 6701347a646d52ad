package prepulllist_test

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// refusedFor waits until l says PolicyRefused with a message holding want.
func (e *env) refusedFor(t *testing.T, l *prepullv1.PrePullList, want string) {
	t.Helper()
	eventually(t, fmt.Sprintf("list %s refused for %q", l.Name, want), func() error {
		c := condition(e.getList(t, l), prepullv1.ConditionDegraded)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != prepullv1.ReasonPolicyRefused || !strings.Contains(c.Message, want) {
			return fmt.Errorf("degraded: %+v", c)
		}
		return nil
	})
}

// TestControllerHoldsListsToTheirPolicy: with PrePullPolicies, a list
// reaches only the nodes its namespace's policy grants (its selector
// intersected), a list past a quota does nothing and says so while the
// older lists go on, a namespace whose policy does not exist gets nothing,
// and a policy narrowed later takes its lists off the nodes it no longer
// grants; all without admission (the controller's own enforcement).
func TestControllerHoldsListsToTheirPolicy(t *testing.T) {
	e := setup(t)
	e.node(t, "pool-a", map[string]string{"pool": "a"})
	e.node(t, "pool-b", map[string]string{"pool": "b"})
	app := e.public.MustPushRandom(t, "team/app:1", 1<<10, 1)
	db := e.public.MustPushRandom(t, "team/db:1", 1<<10, 1)
	cache := e.public.MustPushRandom(t, "team/cache:1", 1<<10, 1)
	other := e.public.MustPushRandom(t, "other/tool:1", 1<<10, 1)
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team", Labels: map[string]string{prepullv1.PolicyLabel: "team"}}})
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "lost", Labels: map[string]string{prepullv1.PolicyLabel: "nowhere"}}})
	pol := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "team"}, Spec: prepullv1.PrePullPolicySpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}},
		Repositories: []string{e.public.Host + "/team"},
		Quotas:       prepullv1.PolicyQuotas{ImagesPerNode: ptr.To[int32](2)},
	}}
	e.mustCreate(t, pol)

	wide := list("team", "wide", app.Tag)
	e.mustCreate(t, wide)
	eventually(t, "the list's image on the granted node", func() error {
		if en := e.entry("pool-a", app.Digest); en == nil || len(activeOwners(en)) == 0 {
			return fmt.Errorf("pool-a: %+v", en)
		}
		return nil
	})
	if en := e.entry("pool-b", app.Digest); en != nil {
		t.Errorf("a list of a namespace granted pool=a reached pool-b: %+v", en)
	}

	// Two more images than the quota has room for: refused, the older list
	// unaffected.
	big := list("team", "big", db.Tag, cache.Tag)
	e.mustCreate(t, big)
	e.refusedFor(t, big, "spec.quotas.imagesPerNode: PrePullPolicy team")
	for _, d := range []string{db.Digest, cache.Digest} {
		if en := e.entry("pool-a", d); en != nil {
			t.Errorf("the list past the quota placed %s: %+v", d, en)
		}
	}
	if c := condition(e.getList(t, wide), prepullv1.ConditionDegraded); c != nil && c.Reason == prepullv1.ReasonPolicyRefused {
		t.Errorf("the older list is refused: %+v", c)
	}

	// A namespace whose policy does not exist.
	lost := list("lost", "orphan", other.Tag)
	e.mustCreate(t, lost)
	e.refusedFor(t, lost, "PrePullPolicy nowhere")

	// The policy narrowed: wide's repository no longer granted; it leaves
	// the node, and big now fits the quota but names the same repository.
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
		t.Fatal(err)
	}
	pol.Spec.Repositories = []string{e.public.Host + "/elsewhere"}
	if err := e.c.Update(ctx, pol); err != nil {
		t.Fatal(err)
	}
	e.refusedFor(t, wide, "spec.images: PrePullPolicy team does not grant repository "+e.public.Host+"/team/app")
	eventually(t, "the narrowed list's entry released on pool-a", func() error {
		if en := e.entry("pool-a", app.Digest); en != nil && len(activeOwners(en)) > 0 {
			return fmt.Errorf("pool-a still holds it for %v", activeOwners(en))
		}
		return nil
	})
}
