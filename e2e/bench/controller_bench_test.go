// Package bench holds benchmarks that run prepull's real binaries against
// the test ground: `make bench` runs them and prints the figures recorded in
// docs/benchmarks.md.
package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

var nodeCount = flag.Int("nodes", 1000, "simulated nodes in BenchmarkControllerRollout")

// countingProxy forwards to a registry and counts the requests it sees.
type countingProxy struct {
	host     string
	requests atomic.Int64
}

func startCountingProxy(b *testing.B, target string) *countingProxy {
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &countingProxy{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	p.host = fmt.Sprintf("127.0.0.1:%d", testground.FreePort(b))
	srv.Addr = p.host
	go func() { _ = srv.ListenAndServe() }()
	b.Cleanup(func() { srv.Close() })
	for i := 0; i < 100; i++ {
		if resp, err := http.Get("http://" + p.host + "/v2/"); err == nil {
			resp.Body.Close()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.requests.Store(0)
	return p
}

// BenchmarkControllerRollout measures one PrePullList rolled out to
// -nodes simulated nodes by the real controller binary on the project's
// kube-apiserver: time to Ready, the controller's API writes per node,
// registry requests for the rollout, and the controller's peak RSS.
func BenchmarkControllerRollout(b *testing.B) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(b, "PREPULL_BINARY is not set: run `make bench`, which builds bin/prepull")
	}
	n := *nodeCount
	cfg, env := testground.StartAPIServer(b, "../../deploy/crd")
	cfg.QPS, cfg.Burst = 500, 1000
	reg := testground.StartRegistry(b)
	proxy := startCountingProxy(b, reg.Host)

	c := testground.APIClient(b, cfg, "prepull-system", "bench")
	ctx := context.Background()
	parallel(n, 16, func(i int) {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%05d", i), Labels: map[string]string{"pool": "bench"}}}
		if err := c.Create(ctx, node); err != nil {
			b.Error(err)
		}
	})

	// The image is named through the counting proxy, so every registry
	// request the controller makes is seen.
	pushed := reg.MustPushRandom(b, "bench/app:v1", 1024, 1)
	tag := strings.Replace(pushed.Tag, reg.Host, proxy.host, 1)

	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		b.Fatal(err)
	}
	metricsPort := testground.FreePort(b)
	ctrlLog, err := os.Create(filepath.Join(b.TempDir(), "controller.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "controller", "--leader-elect=false", "--namespace=prepull-system",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", testground.FreePort(b)),
		"--insecure-registries="+proxy.host)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = ctrlLog, ctrlLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})

	agentCtx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	var agentWrites atomic.Int64
	go simulateAgents(agentCtx, c, &agentWrites)

	b.ResetTimer()
	start := time.Now()
	l := &prepullv1.PrePullList{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "rollout"},
		Spec: prepullv1.PrePullListSpec{
			Images:       []prepullv1.PrePullImage{{Image: tag}},
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "bench"}},
		},
	}
	if err := c.Create(ctx, l); err != nil {
		b.Fatal(err)
	}
	want := fmt.Sprintf("%d/%d", n, n)
	deadline := time.Now().Add(15 * time.Minute)
	for {
		got := &prepullv1.PrePullList{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			b.Fatal(err)
		}
		if got.Status.ReadyNodes == want {
			break
		}
		for _, i := range got.Status.Images {
			if i.Message != "" {
				b.Fatalf("resolution failed: %s", i.Message)
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("not Ready after 15m: %s", got.Status.ReadyNodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	metrics := scrape(b, metricsPort)
	writes := 0.0
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		writes += metrics[`rest_client_requests_total{code="200",host="`+hostOf(cfg.Host)+`",method="`+m+`"}`]
		writes += metrics[`rest_client_requests_total{code="201",host="`+hostOf(cfg.Host)+`",method="`+m+`"}`]
	}
	rss := peakRSS(b, cmd.Process.Pid)
	regRequests := proxy.requests.Load()
	resolutions := metrics[`prepull_tag_resolutions_total{result="resolved"}`]

	b.ReportMetric(elapsed.Seconds(), "s-to-ready")
	b.ReportMetric(writes/float64(n), "api-writes/node")
	b.ReportMetric(float64(regRequests), "registry-requests")
	b.ReportMetric(float64(rss)/1024, "controller-peak-MiB")
	fmt.Printf("\ncontroller rollout: %d nodes, 1 tag, maxConcurrentNodes 25%%\n", n)
	fmt.Printf("  time to Ready:              %.1f s\n", elapsed.Seconds())
	fmt.Printf("  controller API writes:      %.0f (%.2f per node)\n", writes, writes/float64(n))
	fmt.Printf("  tag resolutions:            %.0f (a pull per node would resolve %d times: %.0fx fewer)\n", resolutions, n, float64(n)/max(resolutions, 1))
	fmt.Printf("  registry HTTP requests:     %d\n", regRequests)
	fmt.Printf("  simulated agent writes:     %d\n", agentWrites.Load())
	fmt.Printf("  controller peak RSS:        %.0f MiB\n", float64(rss)/1024)
}

// simulateAgents plays every node's agent: each image of a NodeImageSet
// spec is reported Present, pinned, as an agent that pulled it would.
func simulateAgents(ctx context.Context, c client.Client, writes *atomic.Int64) {
	for ctx.Err() == nil {
		var sets prepullv1.NodeImageSetList
		if err := c.List(ctx, &sets); err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var todo []*prepullv1.NodeImageSet
		for i := range sets.Items {
			s := &sets.Items[i]
			if len(s.Status.Images) != len(s.Spec.Images) {
				todo = append(todo, s)
			}
		}
		parallel(len(todo), 16, func(i int) {
			s := todo[i]
			s.Status.Images = nil
			for _, img := range s.Spec.Images {
				_, d, _ := strings.Cut(img.Image, "@")
				var owners []string
				for _, o := range img.Owners {
					owners = append(owners, o.List)
				}
				s.Status.Images = append(s.Status.Images, prepullv1.NodeImageStatus{
					Image: img.Image, Phase: prepullv1.PhasePresent, Digest: d, Pinned: true, PinOwners: owners,
				})
			}
			if err := c.Status().Update(ctx, s); err == nil {
				writes.Add(1)
			} else if !apierrors.IsConflict(err) && ctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "simulated agent:", err)
			}
		})
		time.Sleep(200 * time.Millisecond)
	}
}

func parallel(n, workers int, f func(int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				f(i)
			}
		}()
	}
	wg.Wait()
}

func hostOf(h string) string {
	u, err := url.Parse(h)
	if err != nil || u.Host == "" {
		return h
	}
	return u.Host
}

// scrape reads the controller's Prometheus metrics into a map keyed by the
// sample's name and labels as printed.
func scrape(b *testing.B, port int) map[string]float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		b.Fatalf("scrape controller metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// peakRSS reads a process's peak resident set size in KiB.
func peakRSS(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}
