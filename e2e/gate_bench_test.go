//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/imageplan"
)

// join is what one node joining afresh showed, measured from the moment its
// Node object was seen.
type join struct {
	// podRunning is when the Deployment's pod was Running.
	podRunning time.Duration
	// present is when the NodeImageSet's status said the image Present,
	// and opened when the startup taint was gone.
	present, opened time.Duration
}

// BenchmarkGatedNodeJoin: a node joins a pool (it registers afresh, with
// the startup taint) while a Deployment of a 150 MiB image waits for it,
// the image's registry behind the shaped link. Without a gating list, the
// pod lands at once and pulls cold; with one, it waits for prepull's pull
// and then starts in container time. Both are timed from the node's
// registration, and so is the gate's own delay after the image was
// reported Present.
func BenchmarkGatedNodeJoin(b *testing.B) {
	const size = 150 << 20
	without, digestWithout := push(b, "gatejoin/without:1.0", size)
	with, digestWith := push(b, "gatejoin/with:1.0", size)
	via := shapedRegistry(b)
	without = strings.Replace(without, cluster.RegistryHost, via, 1)
	with = strings.Replace(with, cluster.RegistryHost, via, 1)

	b.ResetTimer()
	cold := joinOnce(b, "gatejoin-without", without, digestPart(digestWithout), false)
	gated := joinOnce(b, "gatejoin-with", with, digestPart(digestWith), true)
	b.StopTimer()

	delay := gated.opened - gated.present
	b.ReportMetric(float64(cold.podRunning)/float64(gated.podRunning), "without/with")
	b.ReportMetric(float64(delay.Milliseconds()), "gate-delay-ms")
	fmt.Printf("\na node joins with a Deployment of a %d MiB image waiting, registry behind a %s veth (tc tbf both ways); from the node's registration:\n", size>>20, linkRate)
	fmt.Printf("  without a gate: pod Running after     %6d ms (it landed at once and pulled cold; no gating list: the taint went at once)\n", cold.podRunning.Milliseconds())
	fmt.Printf("  with spec.nodeGate: pod Running after %6d ms (image reported Present at %d ms, gate opened at %d ms)\n", gated.podRunning.Milliseconds(), gated.present.Milliseconds(), gated.opened.Milliseconds())
	fmt.Printf("  the gate's own delay after Present:   %6d ms\n", delay.Milliseconds())
	fmt.Printf("  pod start, pod Running - gate opened: %6d ms\n", (gated.podRunning - gated.opened).Milliseconds())
	fmt.Printf("  without / with:                       %6.2fx\n", float64(cold.podRunning)/float64(gated.podRunning))
}

// joinOnce re-registers the node with a Deployment of image waiting (and,
// when gate, a gating list of it) and times what follows.
func joinOnce(b *testing.B, name, image, digest string, gate bool) join {
	dep := deployment(name, image)
	var l *prepullv1.PrePullList
	err := c.Reregister(ctx, cs, prepullv1.DefaultStartupTaint, func() error {
		if gate {
			l = &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name},
				Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: image}}, NodeGate: &prepullv1.NodeGate{}}}
			if err := cl.Create(ctx, l); err != nil {
				return err
			}
		}
		_, err := cs.AppsV1().Deployments("e2e").Create(ctx, dep, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	registered := time.Now()
	b.Cleanup(func() {
		_ = cs.AppsV1().Deployments("e2e").Delete(ctx, name, metav1.DeleteOptions{})
		if l != nil {
			_ = cl.Delete(ctx, l)
		}
	})
	var out join
	for deadline := registered.Add(10 * time.Minute); out.podRunning == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%s: no pod Running 10 minutes after the node registered", name)
		}
		now := time.Since(registered)
		if out.opened == 0 && !startupTainted(b) {
			out.opened = now
		}
		if out.present == 0 && presentInStatus(digest) {
			out.present = now
		}
		if p := podOf(b, name); p != nil && p.Status.Phase == corev1.PodRunning {
			out.podRunning = now
		}
	}
	if gate && out.present == 0 {
		// The image cannot be missing from the agent's report when the gate
		// opened on it: a zero here would make the gate's delay up.
		b.Fatalf("%s: the pod ran, and no status ever said %s Present", name, digest)
	}
	return out
}

// presentInStatus reports whether the node's agent reported digest Present.
func presentInStatus(digest string) bool {
	set := &prepullv1.NodeImageSet{}
	if err := cl.Get(ctx, client.ObjectKey{Name: c.NodeName}, set); err != nil {
		return false
	}
	if err := imageplan.Expand(ctx, cl, set); err != nil {
		return false
	}
	return slices.ContainsFunc(set.Status.Images, func(st prepullv1.NodeImageStatus) bool {
		return st.Digest == digest && st.Phase == prepullv1.PhasePresent
	})
}
