package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

var (
	discoveryNodes       = flag.Int("discovery-nodes", 1000, "simulated nodes in BenchmarkDiscovery")
	discoveryDeployments = flag.Int("discovery-deployments", 2000, "Deployments in BenchmarkDiscovery, spread over its namespaces")
	discoveryImages      = flag.Int("discovery-images", 300, "distinct images the Deployments of BenchmarkDiscovery use")
	discoveryNamespaces  = flag.Int("discovery-namespaces", 20, "namespaces in BenchmarkDiscovery, one list each")
)

// BenchmarkDiscovery measures the cost of discovering images from
// workloads: -discovery-deployments Deployments of three containers each,
// using -discovery-images distinct images, in -discovery-namespaces
// namespaces, each namespace's images pre-pulled by one list onto its own
// pool of the -discovery-nodes simulated nodes. The same rollout runs twice
// on a fresh API server with the same workloads: once with the lists naming
// the images by hand, once with the lists discovering them
// (spec.workloads). It prints, for each, the time from the lists' creation
// until every list is Ready with every image, and the controller's peak
// RSS, and the ratios; and, as a baseline for the memory the controller's
// cache of workloads takes, the listed rollout with no workload at all.
func BenchmarkDiscovery(b *testing.B) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(b, "PREPULL_BINARY is not set: run `make bench`, which builds bin/prepull")
	}
	nNS, nImages := max(*discoveryNamespaces, 1), max(*discoveryImages, *discoveryNamespaces)
	reg := testground.StartRegistry(b)
	tags := make([]string, nImages)
	parallel(nImages, 8, func(i int) {
		tags[i] = reg.MustPushRandom(b, fmt.Sprintf("disc/app-%03d:v1", i), 1024, 1).Tag
	})
	// Namespace k uses the images i with i % nNS == k.
	imagesOf := func(k int) []string {
		var out []string
		for i := k; i < nImages; i += nNS {
			out = append(out, tags[i])
		}
		return out
	}
	type result struct {
		ready time.Duration
		rss   int64
	}
	run := func(discover, workloads bool) result {
		cfg, env := testground.StartAPIServer(b, "../../deploy/crd")
		cfg.QPS, cfg.Burst = 500, 1000
		namespaces := []string{"prepull-system"}
		for k := range nNS {
			namespaces = append(namespaces, fmt.Sprintf("disc-%02d", k))
		}
		c := testground.APIClient(b, cfg, namespaces...)
		ctx := context.Background()
		parallel(*discoveryNodes, 16, func(i int) {
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%05d", i),
				Labels: map[string]string{"pool": fmt.Sprintf("p-%02d", i%nNS)}}}
			if err := c.Create(ctx, node); err != nil {
				b.Error(err)
			}
		})
		deployments := *discoveryDeployments
		if !workloads {
			deployments = 0
		}
		parallel(deployments, 16, func(d int) {
			k := d % nNS
			pool := imagesOf(k)
			sel := map[string]string{"app": fmt.Sprintf("app-%04d", d)}
			var containers []corev1.Container
			for j := range 3 {
				containers = append(containers, corev1.Container{Name: fmt.Sprintf("c%d", j), Image: pool[(d/nNS*3+j)%len(pool)]})
			}
			dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("disc-%02d", k), Name: fmt.Sprintf("app-%04d", d)},
				Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}, Spec: corev1.PodSpec{Containers: containers}}}}
			if err := c.Create(ctx, dep); err != nil {
				b.Error(err)
			}
		})
		cmd, _ := startBenchController(b, bin, env.KubeConfig, reg.Host)
		agentCtx, stopAgents := context.WithCancel(ctx)
		defer stopAgents()
		var agentWrites atomic.Int64
		go simulateAgents(agentCtx, b, cfg, &agentWrites)

		var lists []*prepullv1.PrePullList
		for k := range nNS {
			l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("disc-%02d", k), Name: "images"},
				Spec: prepullv1.PrePullListSpec{NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": fmt.Sprintf("p-%02d", k)}}}}
			if discover {
				l.Spec.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{}}
			} else {
				for _, t := range imagesOf(k) {
					l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: t})
				}
			}
			lists = append(lists, l)
		}
		start := time.Now()
		for _, l := range lists {
			if err := c.Create(ctx, l); err != nil {
				b.Fatal(err)
			}
		}
		for k, l := range lists {
			want := len(imagesOf(k))
			perPool := (*discoveryNodes + nNS - 1 - k) / nNS
			testground.Eventually(b, 15*time.Minute, "list "+l.Namespace+" Ready", func() error {
				got := &prepullv1.PrePullList{}
				if err := c.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
					return err
				}
				ready := meta.IsStatusConditionTrue(got.Status.Conditions, prepullv1.ConditionReady)
				if !ready || len(got.Status.Images) != want || got.Status.ReadyNodes != fmt.Sprintf("%d/%d", perPool, perPool) {
					return fmt.Errorf("ready %v, %d images of %d, nodes %s", ready, len(got.Status.Images), want, got.Status.ReadyNodes)
				}
				return nil
			})
		}
		r := result{ready: time.Since(start), rss: peakRSS(b, cmd.Process.Pid)}
		stopAgents()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		return r
	}
	b.ResetTimer()
	bare := run(false, false)
	listed := run(false, true)
	discovered := run(true, true)
	b.StopTimer()
	b.ReportMetric(discovered.ready.Seconds()/listed.ready.Seconds(), "time-ratio")
	b.ReportMetric(float64(discovered.rss-listed.rss)/1024, "extra-MiB")
	fmt.Printf("\ndiscovery: %d Deployments (3 containers each, %d distinct images) in %d namespaces, %d lists, %d simulated nodes (one pool per list)\n",
		*discoveryDeployments, nImages, nNS, nNS, *discoveryNodes)
	fmt.Printf("  listed, no workload in the cluster: Ready in %.1f s, controller peak RSS %.0f MiB\n", bare.ready.Seconds(), float64(bare.rss)/1024)
	fmt.Printf("  images listed by hand:  Ready in %.1f s, controller peak RSS %.0f MiB\n", listed.ready.Seconds(), float64(listed.rss)/1024)
	fmt.Printf("  images discovered:      Ready in %.1f s, controller peak RSS %.0f MiB\n", discovered.ready.Seconds(), float64(discovered.rss)/1024)
	fmt.Printf("  discovered / listed:    time %.2fx, memory %+.0f MiB\n", discovered.ready.Seconds()/listed.ready.Seconds(), float64(discovered.rss-listed.rss)/1024)
	fmt.Printf("  the workloads' cache:   %+.0f MiB (listed with the Deployments beside listed without)\n", float64(listed.rss-bare.rss)/1024)
}

// startBenchController starts the controller binary on the API server of
// kubeconfig, resolving over plain HTTP at registry, and returns it and its
// metrics port; it is stopped when the benchmark ends.
func startBenchController(b *testing.B, bin string, kubeconfig []byte, registry string, extra ...string) (*exec.Cmd, int) {
	metricsPort := testground.FreePort(b)
	args := append([]string{"controller", "--leader-elect=false", "--namespace=prepull-system",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", testground.FreePort(b)),
		"--insecure-registries=" + registry, "--pprof-bind-address=" + *pprofAddr}, extra...)
	cmd := testground.StartBinary(b, bin, kubeconfig, filepath.Join(b.TempDir(), "controller.log"), args...)
	return cmd, metricsPort
}
