package prepulllist_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/prepulllist"
)

// TestRoutesSeedThenPeersWithinTheBudget: with peers on, an image no node
// holds is granted to one seed node; once it reports the image present it
// is listed as a holder and nobody else gets the registry, but a node
// whose holders all failed does, within the registry budget of the
// image's host (pulls at once, pulls an hour), and the route says when
// that budget is spent, also to a new leader. The route goes with the
// last list naming the image.
func TestRoutesSeedThenPeersWithinTheBudget(t *testing.T) {
	e := setup(t, func(e *env) {
		e.routing = &prepulllist.PeerRouting{Seeds: 1, Interval: 100 * time.Millisecond,
			Budgets: map[string]prepulllist.RegistryBudget{e.public.Host: {Concurrent: 1, PerHour: 2}}}
	})
	ns := e.namespace(t, "routes")
	pool := map[string]string{"pool": "routes"}
	nodes := []string{"rt-1", "rt-2", "rt-3"}
	for _, n := range nodes {
		e.node(t, n, pool)
	}
	img := e.public.MustPushRandom(t, "routes/app:1", 1024, 1)
	l := list(ns, "app", img.Tag)
	l.Spec.NodeSelector = selector(pool)
	l.Spec.Rollout.MaxConcurrentNodes = ptr.To(intstr.FromString("100%"))
	e.mustCreate(t, l)
	for _, n := range nodes {
		e.handed(t, n, 1)
	}
	route := func(what string, check func(*prepullv1.ImageRoute) error) {
		t.Helper()
		eventually(t, what, func() error {
			r := &prepullv1.ImageRoute{}
			if err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(img.Digest)}, r); err != nil {
				return err
			}
			if r.Spec.Image != img.Digest {
				return fmt.Errorf("route of %s", r.Spec.Image)
			}
			return check(r)
		})
	}
	grants := func(want ...string) func(*prepullv1.ImageRoute) error {
		return func(r *prepullv1.ImageRoute) error {
			if !slices.Equal(r.Status.RegistryGrants, want) {
				return fmt.Errorf("grants %v, want %v; %+v", r.Status.RegistryGrants, want, r.Status)
			}
			return nil
		}
	}
	route("one seed granted", grants("rt-1"))

	self := func(n string) *prepullv1.Peer {
		return &prepullv1.Peer{Node: n, Address: "10.0.0." + n[len(n)-1:] + ":8085", CertSHA256: strings.Repeat("a", 64)}
	}
	report := func(node string, phase prepullv1.ImagePhase, reason string) {
		t.Helper()
		eventually(t, node+" reports "+string(phase), func() error {
			set, err := e.nodeSet(node)
			if err != nil {
				return err
			}
			set.Status.Peer = self(node)
			set.Status.Images = []prepullv1.NodeImageStatus{{Image: img.Digest, Phase: phase, Reason: reason}}
			if phase == prepullv1.PhasePresent {
				set.Status.Images[0].Digest = digestOf(img.Digest)
			}
			return e.c.Status().Update(ctx, set)
		})
	}
	report("rt-1", prepullv1.PhasePresent, "")
	report("rt-2", prepullv1.PhasePending, prepullv1.ReasonWaitingForPeers)
	report("rt-3", prepullv1.PhasePending, prepullv1.ReasonWaitingForPeers)
	route("the seed is a holder, and nobody else has the registry", func(r *prepullv1.ImageRoute) error {
		if len(r.Status.Holders) != 1 || r.Status.Holders[0] != *self("rt-1") {
			return fmt.Errorf("holders %+v", r.Status.Holders)
		}
		return grants()(r)
	})

	report("rt-2", prepullv1.PhasePending, prepullv1.ReasonPeersUnavailable)
	route("the registry, the last resort, for a node whose peers failed", grants("rt-2"))
	report("rt-3", prepullv1.PhasePending, prepullv1.ReasonPeersUnavailable)
	route("a second node held to one pull at once", func(r *prepullv1.ImageRoute) error {
		if !strings.Contains(r.Status.Waiting, "the registry budget of "+e.public.Host+" is spent: 1 pulls at once (1 allowed)") {
			return fmt.Errorf("waiting %q", r.Status.Waiting)
		}
		return grants("rt-2")(r)
	})
	report("rt-2", prepullv1.PhasePresent, "")
	route("then to two pulls an hour", func(r *prepullv1.ImageRoute) error {
		if !strings.Contains(r.Status.Waiting, "2 pulls started within the hour (2 allowed)") {
			return fmt.Errorf("waiting %q", r.Status.Waiting)
		}
		if len(r.Status.Holders) != 2 {
			return fmt.Errorf("holders %+v", r.Status.Holders)
		}
		return grants()(r)
	})
	// A new leader keeps the hour's pulls (BudgetConfigMap): the budget is
	// still spent. Its first write of the route (rt-2 no longer a holder)
	// is decided in the same pass as rt-3's ask.
	e.stopController()
	e.stopController = e.startController(t)
	report("rt-2", prepullv1.PhasePending, prepullv1.ReasonWaitingForPeers)
	route("a new leader keeps the hour's pulls", func(r *prepullv1.ImageRoute) error {
		if len(r.Status.Holders) != 1 {
			return fmt.Errorf("holders %+v", r.Status.Holders)
		}
		if !strings.Contains(r.Status.Waiting, "2 pulls started within the hour (2 allowed)") {
			return fmt.Errorf("waiting %q, grants %v", r.Status.Waiting, r.Status.RegistryGrants)
		}
		return grants()(r)
	})
	e.clock.Step(time.Hour)
	route("the hour over, the budget gives again", grants("rt-3"))

	e.deleteList(t, l, nodes...)
	eventually(t, "the route goes with the list", func() error {
		err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(img.Digest)}, &prepullv1.ImageRoute{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("route: %v", err)
		}
		return nil
	})
}

// TestTheControllersManifestReadsKeepToTheRegistryBudget: on a registry
// host with a budget of pulls an hour (--peers), where a registry may count
// a manifest read as a pull, the controller reads no manifest only to learn
// an artifact type; the reads that size images under a bytes quota are
// pulls of that budget, beside the nodes' grants; a read past the budget
// is not made, the list refused naming the budget, and is made once the
// hour is over.
func TestTheControllersManifestReadsKeepToTheRegistryBudget(t *testing.T) {
	e := setup(t, func(e *env) {
		e.routing = &prepulllist.PeerRouting{Seeds: 1, Interval: 100 * time.Millisecond,
			Budgets: map[string]prepulllist.RegistryBudget{e.public.Host: {PerHour: 2}}}
	})
	e.node(t, "mb-1", nil)
	described := func(digestRef string) int { return e.resolver.described.count(digestRef) }
	granted := func(digestRef string, check func(prepullv1.ImageRouteStatus) error) {
		t.Helper()
		eventually(t, "the route of "+digestRef, func() error {
			r := &prepullv1.ImageRoute{}
			if err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(digestRef)}, r); err != nil {
				return err
			}
			return check(r.Status)
		})
	}
	seeded := func(st prepullv1.ImageRouteStatus) error {
		if !slices.Equal(st.RegistryGrants, []string{"mb-1"}) {
			return fmt.Errorf("grants %v; %+v", st.RegistryGrants, st)
		}
		return nil
	}

	// No quota: handed without a read of its manifest; the seed's grant
	// is the budget's first pull.
	open := e.public.MustPushRandom(t, "mb/open:1", 1024, 1)
	e.mustCreate(t, list(e.namespace(t, "mb-open"), "open", open.Tag))
	granted(open.Digest, seeded)
	if n := described(open.Digest); n != 0 {
		t.Errorf("the controller read %s's manifest %d times on a host with a budget, want none without a bytes quota", open.Digest, n)
	}

	// A bytes quota: the read that sizes one is the second pull, and its
	// seed waits for the hour.
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mb-quota", Labels: map[string]string{prepullv1.PolicyLabel: "mb-quota"}}})
	e.mustCreate(t, &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "mb-quota"}, Spec: prepullv1.PrePullPolicySpec{
		Quotas: prepullv1.PolicyQuotas{BytesPerNode: ptr.To(resource.MustParse("100Mi"))},
	}})
	one := e.public.MustPushRandom(t, "mb/one:1", 1024, 1)
	e.mustCreate(t, list("mb-quota", "one", one.Tag))
	spent := "the registry budget of " + e.public.Host + " is spent: 2 pulls started within the hour (2 allowed)"
	granted(one.Digest, func(st prepullv1.ImageRouteStatus) error {
		if len(st.RegistryGrants) != 0 || !strings.Contains(st.Waiting, spent) {
			return fmt.Errorf("grants %v, waiting %q; want none, and the budget spent", st.RegistryGrants, st.Waiting)
		}
		return nil
	})
	if n := described(one.Digest); n != 1 {
		t.Errorf("%s's manifest read %d times, want once", one.Digest, n)
	}

	// The budget spent, the next list's image is not read, and the list
	// says why; an hour later it is read, sized and handed.
	two := e.public.MustPushRandom(t, "mb/two:1", 1024, 1)
	second := list("mb-quota", "two", two.Tag)
	e.mustCreate(t, second)
	e.refusedFor(t, second, two.Digest+": not read: "+spent)
	if n := described(two.Digest); n != 0 || e.entry("mb-1", two.Digest) != nil {
		t.Errorf("%s past the budget: read %d times, entry %+v; want neither", two.Digest, n, e.entry("mb-1", two.Digest))
	}
	e.clock.Step(time.Hour)
	eventually(t, "two sized and handed once the hour is over", func() error {
		if e.entry("mb-1", two.Digest) == nil {
			return fmt.Errorf("not handed; %+v", condition(e.getList(t, second), prepullv1.ConditionDegraded))
		}
		return nil
	})
	if n := described(two.Digest); n != 1 {
		t.Errorf("%s's manifest read %d times, want once", two.Digest, n)
	}
}
