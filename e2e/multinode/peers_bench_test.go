//go:build e2e

package multinode

import (
	"fmt"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
)

// BenchmarkPeersRollout: three real nodes, the registry behind a 100
// Mbit/s link they share, the nodes' own links unshaped; three images of
// four layers of many files each (about 70 MiB compressed each). The
// same rollout with new images each time: to one node; to three without
// peers; to three with peers. It reports the registry's bytes (counted at
// its link) against the images' distinct bytes, and the time until every
// node holds every image against one node's.
func BenchmarkPeersRollout(b *testing.B) {
	nodes := c.RunningNodes()
	if len(nodes) < 3 {
		b.Fatalf("%d nodes: the benchmark needs 3", len(nodes))
	}
	nodes = nodes[:3]
	front := testground.StartThrottleAt(b, c.Node(1).IP, &testground.Registry{Host: cluster.RegistryHost}, 100<<20/8, 0)
	if err := c.TrustHost(front.Host); err != nil {
		b.Fatal(err)
	}
	type result struct {
		took             time.Duration
		served, distinct int64
	}
	run := func(name string, n int) result {
		var refs []string
		var distinct int64
		for i := range 3 {
			img, err := testground.LayeredImage(160<<20, 4, 400)
			if err != nil {
				b.Fatal(err)
			}
			ref := fmt.Sprintf("%s/bench-%s/app-%d:1", cluster.RegistryHost, name, i)
			if _, err := testground.Push(ref, img); err != nil {
				b.Fatal(err)
			}
			distinct += imageBytes(b, img)
			refs = append(refs, fmt.Sprintf("%s/bench-%s/app-%d:1", front.Host, name, i))
		}
		var names []string
		for _, nd := range nodes[:n] {
			names = append(names, nd.Name)
		}
		l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bench-" + name}}
		for _, r := range refs {
			l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: r})
		}
		l.Spec.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "kubernetes.io/hostname", Operator: metav1.LabelSelectorOpIn, Values: names}}}
		l.Spec.Rollout.MaxConcurrentNodes = new(intstr.FromInt32(int32(n)))
		before := front.Bytes()
		start := time.Now()
		if err := cl.Create(ctx, l); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cluster.DeleteList(ctx, cl, l, 2*time.Minute) })
		testground.Eventually(b, 10*time.Minute, "list "+l.Name+" Ready", func() error {
			got := &prepullv1.PrePullList{}
			if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
				return err
			}
			if got.Status.ReadyNodes != fmt.Sprintf("%d/%d", n, n) {
				return fmt.Errorf("ready %s", got.Status.ReadyNodes)
			}
			return nil
		})
		return result{took: time.Since(start), served: front.Bytes() - before, distinct: distinct}
	}
	one := run("one", 1)
	direct := run("direct", 3)
	withPeers(b)
	peers := run("peers", 3)
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	fmt.Printf("\npeers: 3 images, %.0f MiB distinct, registry behind 100 Mbit/s shared by 3 nodes\n", mib(peers.distinct))
	fmt.Printf("  one node:             %6.1f s, registry served %6.1f MiB (%.2fx the distinct bytes)\n", one.took.Seconds(), mib(one.served), float64(one.served)/float64(one.distinct))
	fmt.Printf("  3 nodes, no peers:    %6.1f s (%.2fx one node), registry served %6.1f MiB (%.2fx)\n", direct.took.Seconds(), direct.took.Seconds()/one.took.Seconds(), mib(direct.served), float64(direct.served)/float64(direct.distinct))
	fmt.Printf("  3 nodes, with peers:  %6.1f s (%.2fx one node), registry served %6.1f MiB (%.2fx)\n", peers.took.Seconds(), peers.took.Seconds()/one.took.Seconds(), mib(peers.served), float64(peers.served)/float64(peers.distinct))
	b.ReportMetric(float64(peers.served)/float64(peers.distinct), "registry-bytes/distinct-peers")
	b.ReportMetric(float64(direct.served)/float64(direct.distinct), "registry-bytes/distinct-direct")
	b.ReportMetric(peers.took.Seconds()/one.took.Seconds(), "time/one-node-peers")
	b.ReportMetric(direct.took.Seconds()/one.took.Seconds(), "time/one-node-direct")
}

// imageBytes are img's manifest, config and layers, compressed.
func imageBytes(b *testing.B, img v1.Image) int64 {
	m, err := img.Manifest()
	if err != nil {
		b.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		b.Fatal(err)
	}
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}
