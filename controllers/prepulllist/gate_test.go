package prepulllist_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

var startupTaint = corev1.Taint{Key: prepullv1.DefaultStartupTaint, Effect: corev1.TaintEffectNoSchedule}

// taintedNode registers a node as a kubelet with registerWithTaints does:
// with the startup taint, and another taint of someone else's.
func (e *env) taintedNode(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	n.Spec.Taints = []corev1.Taint{startupTaint, {Key: "example.com/other", Value: "x", Effect: corev1.TaintEffectNoSchedule}}
	e.mustCreate(t, n)
}

func (e *env) taints(t *testing.T, node string) []string {
	t.Helper()
	n := &corev1.Node{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tn := range n.Spec.Taints {
		// The API server taints a new node not-ready until its kubelet
		// says otherwise; no kubelet runs here.
		if tn.Key != corev1.TaintNodeNotReady {
			out = append(out, tn.Key)
		}
	}
	return out
}

func (e *env) imagesReady(t *testing.T, node string) *corev1.NodeCondition {
	t.Helper()
	n := &corev1.Node{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		t.Fatal(err)
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == prepullv1.NodeConditionImagesReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// report writes node's status as its agent would, with only the images
// present for which present says so.
func (e *env) report(t *testing.T, node string, present func(image string) bool) {
	t.Helper()
	eventually(t, "status of "+node+" written", func() error {
		set, err := e.nodeSet(node)
		if err != nil {
			return err
		}
		set.Status.Images = nil
		for _, img := range set.Spec.Images {
			st := prepullv1.NodeImageStatus{Image: img.Image, Phase: prepullv1.PhasePulling}
			if present(img.Image) {
				st.Phase, st.Digest = prepullv1.PhasePresent, digestOf(img.Image)
			}
			set.Status.Images = append(set.Status.Images, st)
		}
		return e.c.Status().Update(ctx, set)
	})
}

// handed waits until node's NodeImageSet holds n images.
func (e *env) handed(t *testing.T, node string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d images handed to %s", n, node), func() error {
		set, err := e.nodeSet(node)
		if err != nil || len(set.Spec.Images) != n {
			return fmt.Errorf("node image set %v, %v", set, err)
		}
		return nil
	})
}

// gatedPool makes, in a namespace of its own, a gating list of image with
// rollout.maxConcurrentNodes maxConcurrent over n nodes that register
// tainted, and returns their names.
func (e *env) gatedPool(t *testing.T, name, image, maxConcurrent string, n int) []string {
	t.Helper()
	ns := e.namespace(t, name)
	pool := map[string]string{"pool": name}
	l := gated(list(ns, "web", image), pool, time.Hour)
	l.Spec.Rollout.MaxConcurrentNodes = intOrString(maxConcurrent)
	e.mustCreate(t, l)
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("%s-%d", name, i))
		e.taintedNode(t, names[i], pool)
	}
	return names
}

func gated(l *prepullv1.PrePullList, sel map[string]string, timeout time.Duration) *prepullv1.PrePullList {
	l.Spec.NodeSelector = selector(sel)
	l.Spec.NodeGate = &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: timeout}}
	return l
}

func digestImage(repo string, n int) string {
	return fmt.Sprintf("reg.test/%s@sha256:%064x", repo, n)
}

func TestNodeGate(t *testing.T) {
	e := setup(t)

	t.Run("the gate opens only when every gating list is present, and touches no other taint", func(t *testing.T) {
		ns := e.namespace(t, "gate-all")
		pool := map[string]string{"pool": "gate-all"}
		web, db := digestImage("web", 1), digestImage("db", 2)
		e.mustCreate(t, gated(list(ns, "web", web), pool, time.Hour))
		e.mustCreate(t, gated(list(ns, "db", db), pool, time.Hour))
		e.taintedNode(t, "gate-all-1", pool)

		eventually(t, "condition ImagesMissing naming both lists", func() error {
			c := e.imagesReady(t, "gate-all-1")
			if c == nil || c.Status != corev1.ConditionFalse || c.Reason != prepullv1.ReasonImagesMissing ||
				!strings.Contains(c.Message, ns+"/web") || !strings.Contains(c.Message, ns+"/db") {
				return fmt.Errorf("condition %+v", c)
			}
			return nil
		})
		e.handed(t, "gate-all-1", 2)
		e.report(t, "gate-all-1", func(img string) bool { return img == web })
		eventually(t, "list db counts the node as waiting, web's image present", func() error {
			l := e.getList(t, list(ns, "db"))
			if l.Status.NodeGate == nil || l.Status.NodeGate.Waiting != 1 {
				return fmt.Errorf("status.nodeGate %+v", l.Status.NodeGate)
			}
			c := e.imagesReady(t, "gate-all-1")
			if c == nil || strings.Contains(c.Message, ns+"/web") || !strings.Contains(c.Message, db) {
				return fmt.Errorf("condition %+v: want only db's image named", c)
			}
			return nil
		})
		if got := e.taints(t, "gate-all-1"); !slices.Contains(got, prepullv1.DefaultStartupTaint) {
			t.Fatalf("taints %v: the gate opened with db's image missing", got)
		}

		e.report(t, "gate-all-1", func(string) bool { return true })
		eventually(t, "startup taint removed, the other kept, condition True", func() error {
			got := e.taints(t, "gate-all-1")
			if !slices.Equal(got, []string{"example.com/other"}) {
				return fmt.Errorf("taints %v", got)
			}
			if c := e.imagesReady(t, "gate-all-1"); c == nil || c.Status != corev1.ConditionTrue || c.Reason != prepullv1.ReasonImagesPresent {
				return fmt.Errorf("condition %+v", c)
			}
			if l := e.getList(t, list(ns, "db")); l.Status.NodeGate == nil || l.Status.NodeGate.Waiting != 0 {
				return fmt.Errorf("status.nodeGate %+v", l.Status.NodeGate)
			}
			return nil
		})

		// Karpenter restores startup taints removed before it initialized
		// the node: the node still qualifies, so it goes again.
		n := &corev1.Node{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: "gate-all-1"}, n); err != nil {
			t.Fatal(err)
		}
		n.Spec.Taints = append(n.Spec.Taints, startupTaint)
		if err := e.c.Update(ctx, n); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the re-added taint removed again", func() error {
			if got := e.taints(t, "gate-all-1"); !slices.Equal(got, []string{"example.com/other"}) {
				return fmt.Errorf("taints %v", got)
			}
			return nil
		})
	})

	t.Run("a node no gating list selects is never held", func(t *testing.T) {
		ns := e.namespace(t, "gate-none")
		e.mustCreate(t, gated(list(ns, "web", digestImage("web", 3)), map[string]string{"pool": "gate-none"}, time.Hour))
		e.taintedNode(t, "gate-free-1", map[string]string{"pool": "elsewhere"})
		eventually(t, "the startup taint removed at once", func() error {
			if got := e.taints(t, "gate-free-1"); !slices.Equal(got, []string{"example.com/other"}) {
				return fmt.Errorf("taints %v", got)
			}
			return nil
		})
		if c := e.imagesReady(t, "gate-free-1"); c != nil {
			t.Errorf("a node no gating list selects has condition %+v", c)
		}
	})

	t.Run("the timeout opens the gate, with a Warning event and the list's count", func(t *testing.T) {
		ns := e.namespace(t, "gate-late")
		pool := map[string]string{"pool": "gate-late"}
		img := digestImage("slow", 4)
		l := gated(list(ns, "slow", img), pool, 3*time.Second)
		e.mustCreate(t, l)
		e.taintedNode(t, "gate-late-1", pool)
		if got := e.taints(t, "gate-late-1"); !slices.Contains(got, prepullv1.DefaultStartupTaint) {
			t.Fatalf("taints %v right after registration", got)
		}
		eventually(t, "the gate opened at the timeout", func() error {
			if got := e.taints(t, "gate-late-1"); slices.Contains(got, prepullv1.DefaultStartupTaint) {
				return fmt.Errorf("taints %v", got)
			}
			return nil
		})
		c := e.imagesReady(t, "gate-late-1")
		if c == nil || c.Status != corev1.ConditionFalse || c.Reason != prepullv1.ReasonGateTimedOut || !strings.Contains(c.Message, img) {
			t.Errorf("condition %+v: want False, GateTimedOut, naming %s", c, img)
		}
		eventually(t, "a Warning event on the list naming the node and the image", func() error {
			for _, ev := range e.events(t, ns, "NodeGateTimedOut") {
				if ev.Type == corev1.EventTypeWarning && strings.Contains(ev.Note, "gate-late-1") && strings.Contains(ev.Note, img) {
					return nil
				}
			}
			return fmt.Errorf("no NodeGateTimedOut event")
		})
		// The list reads its timeouts on its own clock.
		e.clock.SetTime(time.Now())
		touch(t, e, l)
		eventually(t, "the list counts the node let through", func() error {
			got := e.getList(t, l)
			if got.Status.NodeGate == nil || got.Status.NodeGate.TimedOut != 1 || got.Status.NodeGate.Waiting != 0 {
				return fmt.Errorf("status.nodeGate %+v", got.Status.NodeGate)
			}
			if d := condition(got, prepullv1.ConditionDegraded); d == nil || d.Reason != prepullv1.ReasonNodeGateTimedOut {
				return fmt.Errorf("Degraded %+v, want reason %s", d, prepullv1.ReasonNodeGateTimedOut)
			}
			return nil
		})
	})

	t.Run("nodes held by the gate take no rollout turn", func(t *testing.T) {
		for _, name := range e.gatedPool(t, "gate-pool", digestImage("pool", 6), "1", 3) {
			// No node reports anything meanwhile.
			e.handed(t, name, 1)
		}
	})

	t.Run("taint edits made while the gate opens survive", func(t *testing.T) {
		names := e.gatedPool(t, "gate-race", digestImage("race", 5), "100%", 5)
		for _, name := range names {
			e.handed(t, name, 1)
		}
		// Each node's images turn present while someone else adds a taint
		// to it: the gate's removal must not write over that edit.
		var wg sync.WaitGroup
		for _, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.report(t, name, func(string) bool { return true })
			}()
			wg.Add(1)
			go func() {
				defer wg.Done()
				eventually(t, "a taint added to "+name, func() error {
					n := &corev1.Node{}
					if err := e.c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
						return err
					}
					n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "example.com/late", Effect: corev1.TaintEffectNoSchedule})
					return e.c.Update(ctx, n)
				})
			}()
		}
		wg.Wait()
		for _, name := range names {
			eventually(t, "startup taint gone from "+name+", the others kept", func() error {
				if got := e.taints(t, name); !slices.Equal(got, []string{"example.com/other", "example.com/late"}) {
					return fmt.Errorf("taints %v", got)
				}
				return nil
			})
		}
	})
}

// TestConditionOnlyGate: with the gate keeping only the condition, a
// joining node's prepull.io/ImagesReady goes False while a gating list's
// images are missing and True once they are present, and no taint of the
// node is touched — its own startup taint of another tool included.
func TestConditionOnlyGate(t *testing.T) {
	e := setup(t, func(e *env) { e.gateConditionOnly = true })
	ns := e.namespace(t, "cond")
	pool := map[string]string{"pool": "cond"}
	web := digestImage("web", 7)
	e.mustCreate(t, gated(list(ns, "web", web), pool, time.Hour))
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cond-1", Labels: pool}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{
		{Key: "readiness.example.com/images", Effect: corev1.TaintEffectNoSchedule},
		{Key: prepullv1.DefaultStartupTaint, Effect: corev1.TaintEffectNoSchedule},
	}}}
	e.mustCreate(t, n)
	eventually(t, "ImagesReady False while the image is missing", func() error {
		if c := e.imagesReady(t, "cond-1"); c == nil || c.Status != corev1.ConditionFalse || c.Reason != prepullv1.ReasonImagesMissing {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	e.handed(t, "cond-1", 1)
	e.report(t, "cond-1", func(string) bool { return true })
	eventually(t, "ImagesReady True once it is present", func() error {
		if c := e.imagesReady(t, "cond-1"); c == nil || c.Status != corev1.ConditionTrue || c.Reason != prepullv1.ReasonImagesPresent {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	if got := e.taints(t, "cond-1"); len(got) != 2 {
		t.Errorf("taints %v: want both left as they were", got)
	}
}
