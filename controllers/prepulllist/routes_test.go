package prepulllist_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
// that budget is spent. The route goes with the last list naming the
// image.
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
