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
	n, err := c.AddNodeWith(ctx, cs, func(n cluster.Node) error { return cluster.ShapeLink(n, linkRate) })
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
		if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err == nil && len(set.Status.Images) == len(l.Spec.Images) {
			present, total := 0, int64(0)
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
	b.StopTimer()

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
	b.ReportMetric(took.Seconds(), "s-ready-to-present")
	b.ReportMetric(float64(took)/float64(limit), "join/link-limit")
	fmt.Printf("\na node that joins, %s link of its own (tc tbf both ways), a list of one %d MiB image:\n", linkRate, size>>20)
	fmt.Printf("  Node Ready to the list's images Present on it: %6d ms\n", took.Milliseconds())
	fmt.Printf("  the link's limit for the list's %d bytes:     %6d ms  ratio %.2f\n", listBytes, limit.Milliseconds(), float64(took)/float64(limit))
	fmt.Printf("  with the agent's and pause images (%d bytes) the node fetched first: %d ms  ratio %.2f\n", otherBytes, limitAll.Milliseconds(), float64(took)/float64(limitAll))
	fmt.Printf("  from Ready: the agent started %s; containerd pulled the list's image from %s to %s\n", agentStart, pullFrom, pullTo)
}
