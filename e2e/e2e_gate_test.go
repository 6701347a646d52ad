//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// startupTainted reports whether the node carries the startup taint.
func startupTainted(t testing.TB) bool {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(n.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == prepullv1.DefaultStartupTaint })
}

func deployment(name, image string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent}},
					TerminationGracePeriodSeconds: new(int64),
				},
			},
		},
	}
}

// podOf is the one pod of the Deployment name, or nil.
func podOf(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods("e2e").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i]
		}
	}
	return nil
}

// TestGateHoldsAJoiningNodeUntilItsImagesArePresent: the node joins afresh
// with the startup taint, after a gating list and a Deployment of its image
// were made. The Deployment's pod is not scheduled while the taint is on;
// the controller removes it once the image is present; the registry is
// stopped right then, and the pod starts from the pre-pulled image.
func TestGateHoldsAJoiningNodeUntilItsImagesArePresent(t *testing.T) {
	tag, _ := push(t, "e2e/gated:1.0", 32<<20)
	var l *prepullv1.PrePullList
	dep := deployment("gated", tag)
	err := c.Reregister(ctx, cs, prepullv1.DefaultStartupTaint, func() error {
		l = applyList(t, "gated", func(l *prepullv1.PrePullList) {
			l.Spec.NodeGate = &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: 5 * time.Minute}}
		}, tag)
		_, err := cs.AppsV1().Deployments("e2e").Create(ctx, dep, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.AppsV1().Deployments("e2e").Delete(ctx, dep.Name, metav1.DeleteOptions{})
		deleteList(t, l)
	})

	// While the taint is on, the pod is not scheduled.
	var lastTainted time.Time
	sawTaintInMessage, sawPending := false, false
	testground.Eventually(t, 3*time.Minute, "the gate opens", func() error {
		// The pod first, then the node: a pod bound while the node still
		// carries the taint afterwards was bound through it.
		p := podOf(t, dep.Name)
		if !startupTainted(t) {
			return nil
		}
		lastTainted = time.Now()
		if p != nil {
			if p.Spec.NodeName != "" {
				t.Fatalf("pod %s was scheduled on %s while the node carried the startup taint", p.Name, p.Spec.NodeName)
			}
			sawPending = true
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodScheduled && strings.Contains(cond.Message, prepullv1.DefaultStartupTaint) {
					sawTaintInMessage = true
				}
			}
		}
		return fmt.Errorf("the node carries the startup taint")
	})
	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	if lastTainted.IsZero() {
		t.Fatal("the node never carried the startup taint: it did not register with it")
	}
	if !sawPending {
		t.Fatal("the Deployment's pod was never seen Pending while the node carried the taint")
	}
	t.Logf("the pod waited on the taint (scheduler said so: %v)", sawTaintInMessage)

	n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cond *corev1.NodeCondition
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == prepullv1.NodeConditionImagesReady {
			cond = &n.Status.Conditions[i]
		}
	}
	if cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != prepullv1.ReasonImagesPresent {
		t.Errorf("node condition %s: %+v, want True, %s", prepullv1.NodeConditionImagesReady, cond, prepullv1.ReasonImagesPresent)
	}

	// With the registry stopped, the pod starts from what prepull put there.
	testground.Eventually(t, 2*time.Minute, "the Deployment's pod Running", func() error {
		p := podOf(t, dep.Name)
		if p == nil || p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod %v", p)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionTrue && cond.LastTransitionTime.Time.Before(lastTainted.Add(-time.Second)) {
				t.Fatalf("pod scheduled at %s, before the taint was last seen at %s", cond.LastTransitionTime, lastTainted)
			}
		}
		return nil
	})
}

// TestGateOpensAtItsTimeoutWithoutARegistry: the node joins afresh with no
// registry in reach; its gating list's image can never arrive, and the gate
// opens at the list's timeout, with a Warning event.
func TestGateOpensAtItsTimeoutWithoutARegistry(t *testing.T) {
	tag, _ := push(t, "e2e/unreachable:1.0", 1<<20)
	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	const timeout = 20 * time.Second
	var l *prepullv1.PrePullList
	err := c.Reregister(ctx, cs, prepullv1.DefaultStartupTaint, func() error {
		l = applyList(t, "unreachable", func(l *prepullv1.PrePullList) {
			l.Spec.NodeGate = &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: timeout}}
		}, tag)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	registered := n.CreationTimestamp.Time
	testground.Eventually(t, 2*time.Minute, "the gate opens at the timeout", func() error {
		if startupTainted(t) {
			return fmt.Errorf("the node carries the startup taint")
		}
		return nil
	})
	// Second precision of the creation time.
	if opened := time.Since(registered); opened < timeout-time.Second {
		t.Errorf("the gate opened %s after registration, before the %s timeout", opened, timeout)
	}
	testground.Eventually(t, time.Minute, "a Warning event NodeGateTimedOut on the list", func() error {
		var evs eventsv1.EventList
		if err := cl.List(ctx, &evs, client.InNamespace("e2e")); err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Reason == "NodeGateTimedOut" && ev.Type == corev1.EventTypeWarning && ev.Regarding.Name == l.Name && strings.Contains(ev.Note, c.NodeName) {
				return nil
			}
		}
		return fmt.Errorf("no such event among %d", len(evs.Items))
	})
}
