//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/imageplan"
)

// linkBits is linkRate in bits per second.
const linkBits = 100e6

// BenchmarkNodeJoin measures how soon a node that joins holds a list's
// images: from the moment its Node is Ready until its agent reports every
// image of the list Present, with the node's own link to the cluster (its
// veth) capped at linkRate both ways, beside the link's limit: the bytes it
// had to fetch over the bandwidth.
func BenchmarkNodeJoin(b *testing.B) {
	const size = 150 << 20
	tag, _ := push(b, "podstart/join:1.0", size)
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "join"},
		Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: tag}}}}
	if err := cl.Create(ctx, l); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Delete(ctx, l) })
	if err := cluster.WaitListReady(ctx, cl, l, 10*time.Minute); err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	fresh := joinNode(b, tag, l, nil)
	// The same, on a node that carries the agent's and the pause images
	// from its node image (put there before its kubelet starts; prepull
	// node apply bakes images the same way), so that only the list's image
	// comes over the link after Ready.
	baked := joinNode(b, tag, l, func(n cluster.Node) error {
		imgs, err := cri.NewRemote(n.ContainerdSocket())
		if err != nil {
			return err
		}
		defer imgs.Close()
		for _, ref := range []string{cluster.PrepullImage, cluster.PauseImage} {
			if _, err := imgs.PullImage(ctx, ref, nil); err != nil {
				return err
			}
		}
		return nil
	})
	b.StopTimer()
	b.ReportMetric(fresh.ratio, "join/link-limit")
	b.ReportMetric(baked.ratio, "baked-join/link-limit")
	fmt.Printf("\na node that joins, %s link of its own (tc tbf both ways), a list of one %d MiB image (%d bytes), link limit %d ms:\n",
		linkRate, size>>20, fresh.listBytes, fresh.limit.Milliseconds())
	for _, r := range []struct {
		what string
		m    joined
	}{{"a fresh node", fresh}, {"a node with the agent's and pause images baked in", baked}} {
		fmt.Printf("  %s: Node Ready to the list's images Present %d ms, ratio %.2f to the link limit\n", r.what, r.m.took.Milliseconds(), r.m.ratio)
		fmt.Printf("    from Ready: the agent started %s; containerd pulled the list's image from %s to %s\n", r.m.agentStart, r.m.pullFrom, r.m.pullTo)
	}
	fmt.Printf("  the fresh node first fetched %d bytes of the agent's and pause images: with them its ratio is %.2f\n", fresh.otherBytes, fresh.ratioAll)
}

// joined is what BenchmarkNodeJoin measured of one node.
type joined struct {
	took                         time.Duration
	listBytes, otherBytes        int64
	limit                        time.Duration
	ratio, ratioAll              float64
	agentStart, pullFrom, pullTo string
}

// joinNode adds a node with its link shaped (and runtime, when given, run
// before its kubelet starts) and measures it; the node goes when b ends.
func joinNode(b *testing.B, tag string, l *prepullv1.PrePullList, runtime func(cluster.Node) error) joined {
	n, err := c.AddNodeWith(ctx, cs, cluster.NodeHooks{Network: func(n cluster.Node) error { return cluster.ShapeLink(n, linkRate) }, Runtime: runtime})
	if err != nil {
		b.Fatal(err)
	}
	ready := time.Now()
	b.Cleanup(func() {
		if err := c.RemoveNode(ctx, cs, n.Name); err != nil {
			b.Error(err)
		}
	})
	var listBytes int64
	for {
		set := &prepullv1.NodeImageSet{}
		err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set)
		if err == nil {
			err = imageplan.Expand(ctx, cl, set)
		}
		if err == nil && len(set.Status.Images) == len(l.Spec.Images) {
			// What the plan's images took is counted, not listed.
			present, total := 0, set.Status.PlanBytes
			for _, st := range set.Status.Images {
				if st.Phase == prepullv1.PhasePresent {
					present++
					total += st.BytesTotal
				}
			}
			if present == len(l.Spec.Images) {
				listBytes = total
				break
			}
		}
		if time.Since(ready) > 10*time.Minute {
			b.Fatalf("%s does not hold the list's images 10m after it was Ready", n.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(ready)

	// What else the node fetched over its link first: the agent's image and
	// the pause image, as its runtime counts them.
	imgs, err := cri.NewRemote(n.ContainerdSocket())
	if err != nil {
		b.Fatal(err)
	}
	defer imgs.Close()
	var otherBytes int64
	for _, ref := range []string{cluster.PrepullImage, cluster.PauseImage} {
		if img, err := imgs.ImageStatus(ctx, ref); err == nil {
			otherBytes += int64(img.Size)
		}
	}
	// Where the time went, by the node's own records: the agent's start,
	// and the list image's pull by containerd (manifest stored to image
	// record made).
	agentStart := "unknown"
	pods, err := cs.CoreV1().Pods("prepull-system").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
	if err == nil && len(pods.Items) == 1 && len(pods.Items[0].Status.ContainerStatuses) == 1 {
		if r := pods.Items[0].Status.ContainerStatuses[0].State.Running; r != nil {
			agentStart = fmt.Sprintf("%+d ms", r.StartedAt.Sub(ready).Milliseconds())
		}
	}
	pullFrom, pullTo := "unknown", "unknown"
	if ctd, err := containerd.New(n.ContainerdSocket(), containerd.WithDefaultNamespace("k8s.io")); err == nil {
		if img, err := ctd.ImageService().Get(ctx, tag); err == nil {
			if info, err := ctd.ContentStore().Info(ctx, img.Target.Digest); err == nil {
				pullFrom = fmt.Sprintf("%+d ms", info.CreatedAt.Sub(ready).Milliseconds())
			}
		}
		if imgs, err := ctd.ImageService().List(ctx); err == nil {
			for _, img := range imgs {
				if strings.Contains(img.Name, "podstart/join@") {
					pullTo = fmt.Sprintf("%+d ms", img.CreatedAt.Sub(ready).Milliseconds())
				}
			}
		}
		ctd.Close()
	}
	limit := time.Duration(float64(listBytes) * 8 / linkBits * float64(time.Second))
	limitAll := time.Duration(float64(listBytes+otherBytes) * 8 / linkBits * float64(time.Second))
	return joined{took: took, listBytes: listBytes, otherBytes: otherBytes, limit: limit,
		ratio: float64(took) / float64(limit), ratioAll: float64(took) / float64(limitAll),
		agentStart: agentStart, pullFrom: pullFrom, pullTo: pullTo}
}
