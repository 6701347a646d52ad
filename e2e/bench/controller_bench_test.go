// Package bench holds benchmarks that run prepull's real binaries against
// the test ground: `make bench` runs them and prints the figures recorded in
// docs/benchmarks.md.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageplan"
)

var (
	nodeCount  = flag.Int("nodes", 1000, "simulated nodes in BenchmarkControllerRollout")
	listCount  = flag.Int("lists", 1, "PrePullLists in BenchmarkControllerRollout, all selecting every node")
	imageCount = flag.Int("images", 1, "distinct tags in BenchmarkControllerRollout; with several lists each tag is named by two")
	moveShare  = flag.Float64("move", 0.1, "share of the tags pushed again with other bytes for the second phase; 0 skips it")
	refreshAt  = flag.Duration("refresh", time.Minute, "the lists' refreshInterval: the second phase starts at the first refresh after the move")
	pprofAddr  = flag.String("controller-pprof", "0", "where the benchmarked controller serves Go's profiles, e.g. 127.0.0.1:6060; 0 turns them off")
	verifyOn   = flag.Bool("verify", false, "sign every image and give every list spec.verify (Enforce) in BenchmarkControllerRollout")
	peersOn    = flag.Bool("peers", false, "run the controller with --peers and the simulated agents serving peers, in BenchmarkControllerRollout: count the routes' writes")
)

// countingProxy forwards to a registry and counts the requests it sees,
// and apart those for signatures (signature tags and referrers).
type countingProxy struct {
	host       string
	requests   atomic.Int64
	signatures atomic.Int64
}

func startCountingProxy(b *testing.B, target string) *countingProxy {
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &countingProxy{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if strings.HasSuffix(r.URL.Path, ".sig") || strings.Contains(r.URL.Path, "/referrers/") {
			p.signatures.Add(1)
		}
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

// BenchmarkControllerRollout measures -lists PrePullLists naming -images
// distinct tags, rolled out to -nodes simulated nodes by the real controller
// binary on the project's kube-apiserver, in two phases: the first rollout,
// then a move of -move of the tags (pushed again with other bytes) picked up
// at the next refresh. For each phase it prints the time to Ready, the
// registry resolutions (one per distinct tag is the goal, against one per
// list and tag for lists resolving on their own), and the controller's API
// writes per node; then one node's NodeImageSet size, the controller's peak
// RSS and etcd's database size.
func BenchmarkControllerRollout(b *testing.B) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(b, "PREPULL_BINARY is not set: run `make bench`, which builds bin/prepull")
	}
	n, nLists, nImages := *nodeCount, max(*listCount, 1), max(*imageCount, 1)
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

	// The images are named through the counting proxy, so every registry
	// request the controller makes is seen.
	// With -verify, each image is signed as it is pushed.
	key := testground.NewSigningKey(b, false)
	push := func(i int) testground.Pushed {
		pushed := reg.MustPushRandom(b, fmt.Sprintf("bench/app-%03d:v1", i), 1024, 1)
		if *verifyOn {
			reg.MustSign(b, pushed.Digest, key, false)
		}
		return pushed
	}
	tags := make([]string, nImages)
	parallel(nImages, 8, func(i int) {
		tags[i] = strings.Replace(push(i).Tag, reg.Host, proxy.host, 1)
	})
	lists := benchLists(nLists, tags)
	if *verifyOn {
		if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "signing"}, Data: map[string][]byte{"cosign.pub": key.PEM}}); err != nil {
			b.Fatal(err)
		}
		for _, l := range lists {
			l.Spec.Verify = &prepullv1.VerifyPolicy{Keys: []prepullv1.PublicKeySource{{Secret: &prepullv1.KeyReference{Name: "signing", Key: "cosign.pub"}}}}
		}
	}
	named := 0
	for _, l := range lists {
		named += len(l.Spec.Images)
	}

	var extra []string
	if *peersOn {
		extra = append(extra, "--peers")
	}
	cmd, metricsPort := startBenchController(b, bin, env.KubeConfig, proxy.host, extra...)

	agentCtx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	var agentWrites atomic.Int64
	go simulateAgents(agentCtx, b, cfg, &agentWrites)

	b.ResetTimer()
	start := time.Now()
	for _, l := range lists {
		if err := c.Create(ctx, l); err != nil {
			b.Fatal(err)
		}
	}
	waitReady(b, c, lists, n, nil)
	first := time.Since(start)
	gens1 := generations(b, c)
	routes := countRoutes(b, c, nImages)
	m1 := scrape(b, metricsPort)
	req1, sig1 := proxy.requests.Load(), proxy.signatures.Load()

	// Phase two: a share of the tags moves; the next refresh sees it.
	moved := map[string]string{}
	for i := 0; i < int(math.Ceil(*moveShare*float64(nImages))); i++ {
		pushed := push(i)
		moved[tags[i]] = pushed.Digest[strings.Index(pushed.Digest, "@")+1:]
	}
	var second, tidied time.Duration
	mReady := m1
	if len(moved) > 0 {
		seen := waitMoved(b, c, moved)
		waitReady(b, c, lists, n, moved)
		second = time.Since(seen)
		mReady = scrape(b, metricsPort)
		// The old digests' entries are dropped from the specs later, in
		// tidy writes; the phase's writes count them.
		waitTidy(b, c)
		tidied = time.Since(seen)
	}
	b.StopTimer()
	m2 := scrape(b, metricsPort)

	writes := func(m map[string]float64) float64 {
		w := 0.0
		for _, verb := range []string{"POST", "PUT", "PATCH", "DELETE"} {
			for _, code := range []string{"200", "201"} {
				w += m[`rest_client_requests_total{code="`+code+`",host="`+hostOf(cfg.Host)+`",method="`+verb+`"}`]
			}
		}
		return w
	}
	res1 := m1[`prepull_tag_resolutions_total{result="resolved"}`]
	// The move's resolutions are those until it is Ready: the tidy writes
	// after it may outlast the lists' refreshInterval.
	res2 := mReady[`prepull_tag_resolutions_total{result="resolved"}`] - res1
	w1, w2 := writes(m1), writes(m2)-writes(m1)
	rss := peakRSS(b, cmd.Process.Pid)
	one := &prepullv1.NodeImageSet{}
	if err := c.Get(ctx, client.ObjectKey{Name: "node-00000"}, one); err != nil {
		b.Fatal(err)
	}
	one.ManagedFields = nil
	setBytes, _ := json.Marshal(one)
	specBytes, _ := json.Marshal(one.Spec)
	plan := &prepullv1.ImagePlan{}
	if err := c.Get(ctx, client.ObjectKey{Name: one.Spec.Plan}, plan); err != nil {
		b.Fatal(err)
	}
	plan.ManagedFields = nil
	planBytes, _ := json.Marshal(plan)
	plansMade := &prepullv1.ImagePlanList{}
	if err := c.List(ctx, plansMade); err != nil {
		b.Fatal(err)
	}
	dbSize := etcdDBSize(b, env)

	b.ReportMetric(first.Seconds(), "s-to-ready")
	b.ReportMetric(second.Seconds(), "s-to-move")
	b.ReportMetric(w1/float64(n), "api-writes/node")
	b.ReportMetric(res1, "resolutions")
	b.ReportMetric(float64(rss)/1024, "controller-peak-MiB")
	verified := "signatures not checked"
	if *verifyOn {
		verified = "every image signed, every list with spec.verify (Enforce)"
	}
	fmt.Printf("\ncontroller rollout: %d nodes, %d lists, %d distinct tags (%d list entries), maxConcurrentNodes 25%%, refreshInterval %s, %s\n",
		n, nLists, nImages, named, *refreshAt, verified)
	fmt.Printf("  first rollout, time to Ready:  %.1f s\n", first.Seconds())
	fmt.Printf("    tag resolutions:             %.0f for %d distinct tags (lists resolving on their own: %d; per node: %d)\n", res1, nImages, named, named*n)
	fmt.Printf("    registry HTTP requests:      %d (%d of them for signatures)\n", req1, sig1)
	if *verifyOn {
		v1 := m1[`prepull_signature_verifications_total{result="verified"}`]
		fmt.Printf("    signature checks:            %.0f verified (%d distinct digests; per node and list: %d)\n", v1, nImages, named*n)
	}
	fmt.Printf("    controller API writes:       %.0f (%.2f per node)\n", w1, w1/float64(n))
	fmt.Printf("    spec writes per node:        %s\n", gens1)
	fmt.Printf("  %d tags moved, from the refresh that saw it to Ready: %.1f s\n", len(moved), second.Seconds())
	fmt.Printf("    old digests dropped from every spec: %.1f s after the refresh (tidy writes)\n", tidied.Seconds())
	fmt.Printf("    tag resolutions until Ready: %.0f (the refresh resolves each distinct tag once)\n", res2)
	if *verifyOn {
		v := m2[`prepull_signature_verifications_total{result="verified"}`] - m1[`prepull_signature_verifications_total{result="verified"}`]
		fmt.Printf("    signature checks:            %.0f verified (the moved digests); registry requests for signatures: %d\n", v, proxy.signatures.Load()-sig1)
	}
	fmt.Printf("    controller API writes:       %.0f (%.2f per node)\n", w2, w2/float64(n))
	fmt.Printf("    spec writes per node, both:  %s\n", generations(b, c))
	fmt.Printf("  one node's NodeImageSet:       %d bytes (spec %d bytes, naming a plan of %d entries)\n", len(setBytes), len(specBytes), len(plan.Spec.Images))
	fmt.Printf("  its ImagePlan:                 %d bytes, shared; %d plans in the API at the end\n", len(planBytes), len(plansMade.Items))
	fmt.Printf("  simulated agent writes:        %d\n", agentWrites.Load())
	if *peersOn {
		rw := m1["prepull_controller_route_writes_total"]
		fmt.Printf("  image routes (--peers):        %d routes, %.0f writes in the first rollout (%.1f per image; at most %d holders listed each)\n",
			routes, rw, rw/float64(max(routes, 1)), prepullv1.MaxHolders)
		b.ReportMetric(rw/float64(max(routes, 1)), "route-writes/image")
	}
	fmt.Printf("  list reconciles:               %.0f, %.1f s in all; controller CPU %.1f s, kube-apiserver CPU %.1f s, etcd CPU %.1f s\n",
		m2[`controller_runtime_reconcile_total{controller="prepulllist",result="success"}`]+m2[`controller_runtime_reconcile_total{controller="prepulllist",result="requeue_after"}`]+m2[`controller_runtime_reconcile_total{controller="prepulllist",result="requeue"}`],
		m2[`controller_runtime_reconcile_time_seconds_sum{controller="prepulllist"}`], m2["process_cpu_seconds_total"], cpuSeconds("kube-apiserver"), cpuSeconds("etcd"))
	fmt.Printf("  controller peak RSS:           %.0f MiB\n", float64(rss)/1024)
	fmt.Printf("  etcd database size:           %.0f MiB\n", dbSize/(1<<20))
}

// benchLists are nLists lists over every node; with several lists, each of
// the tags is named by two lists, neighbours in a ring.
func benchLists(nLists int, tags []string) []*prepullv1.PrePullList {
	per := len(tags)
	if nLists > 1 {
		per = min(len(tags), max(1, 2*len(tags)/nLists))
	}
	step := max(1, len(tags)/nLists)
	out := make([]*prepullv1.PrePullList, nLists)
	for i := range out {
		l := &prepullv1.PrePullList{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("list-%02d", i)},
			Spec: prepullv1.PrePullListSpec{
				NodeSelector:    &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "bench"}},
				RefreshInterval: &metav1.Duration{Duration: *refreshAt},
			},
		}
		for k := range per {
			l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: tags[(i*step+k)%len(tags)]})
		}
		out[i] = l
	}
	return out
}

// waitReady waits until every list is Ready on all n nodes and, for each
// moved tag it names, reports the moved digest.
func waitReady(b *testing.B, c client.Client, lists []*prepullv1.PrePullList, n int, moved map[string]string) {
	want := fmt.Sprintf("%d/%d", n, n)
	deadline := time.Now().Add(15 * time.Minute)
	var said time.Time
	for {
		// With -v, every 2 s, each list's ready nodes.
		verbose := testing.Verbose() && time.Since(said) >= 2*time.Second
		var ready []string
		done := true
		for _, l := range lists {
			got := &prepullv1.PrePullList{}
			if err := c.Get(context.Background(), client.ObjectKeyFromObject(l), got); err != nil {
				b.Fatal(err)
			}
			ready = append(ready, got.Status.ReadyNodes)
			ok := got.Status.ReadyNodes == want && len(got.Status.Images) == len(l.Spec.Images)
			for _, i := range got.Status.Images {
				if i.Message != "" {
					b.Fatalf("resolution failed: %s", i.Message)
				}
				if d, ok2 := moved[i.Image]; ok2 && i.Digest != d {
					ok = false
				}
			}
			if !ok {
				done = false
				if time.Now().After(deadline) {
					b.Fatalf("list %s not Ready after 15m: %s", l.Name, got.Status.ReadyNodes)
				}
				if !verbose {
					break
				}
			}
		}
		if verbose {
			said = time.Now()
			fmt.Fprintf(os.Stderr, "%s ready: %s\n", said.Format("15:04:05.0"), strings.Join(ready, " "))
		}
		if done {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMoved waits until the controller resolved the first moved tag to its
// new digest, and returns when it saw that.
func waitMoved(b *testing.B, c client.Client, moved map[string]string) time.Time {
	deadline := time.Now().Add(*refreshAt + 5*time.Minute)
	for time.Now().Before(deadline) {
		for tag, d := range moved {
			rec := &prepullv1.TagResolution{}
			if err := c.Get(context.Background(), client.ObjectKey{Name: prepullv1.TagResolutionName(tag)}, rec); err == nil && rec.Status.Digest == d {
				return time.Now()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatal("no moved tag was resolved again")
	return time.Time{}
}

// waitTidy waits until no node's spec holds an entry a list is releasing.
func waitTidy(b *testing.B, c client.Client) {
	ctx := context.Background()
	// Plans never change: each is read once.
	reader := imageplan.NewReader(c, 1024)
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		sets := &prepullv1.NodeImageSetList{}
		if err := c.List(ctx, sets); err != nil {
			b.Fatal(err)
		}
		plans := map[string]bool{}
		for _, s := range sets.Items {
			if s.Spec.Plan != "" {
				plans[s.Spec.Plan] = true
			}
		}
		releasing := 0
		for name := range plans {
			p, err := reader.Get(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			if slices.ContainsFunc(p.Spec.Images, func(e prepullv1.NodeImage) bool { return len(e.ActiveOwners()) < len(e.Owners) }) {
				releasing++
			}
		}
		if releasing == 0 {
			return
		}
		if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "%s tidy: %d of %d plans named hold a releasing owner\n", time.Now().Format("15:04:05.0"), releasing, len(plans))
		}
		time.Sleep(time.Second)
	}
	b.Fatal("released entries still in the specs after 5m")
}

// etcdDBSize is etcd's database size in bytes, from its metrics.
func etcdDBSize(b *testing.B, env *envtest.Environment) float64 {
	u := *env.ControlPlane.Etcd.URL
	u.Path = "/metrics"
	resp, err := http.Get(u.String())
	if err != nil {
		b.Logf("etcd metrics: %v", err)
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "etcd_mvcc_db_total_size_in_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// simulateAgents plays every node's agent: on each change of a
// NodeImageSet's spec, every image is reported Present and pinned for its
// active owners, or Released when only releasing owners are left, as an
// agent that pulled it would; one status patch per spec generation.
func simulateAgents(ctx context.Context, b *testing.B, cfg *rest.Config, writes *atomic.Int64) {
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: testground.Scheme()})
	if err != nil {
		b.Error(err)
		return
	}
	// Agents read a plan once, by name, as the agent does.
	plans := imageplan.NewReader(wc, 256)
	var mu sync.Mutex
	latest := map[string]*prepullv1.NodeImageSet{}
	answered := map[string]int64{}
	work := make(chan string, 1<<16)
	for range 16 {
		go func() {
			for name := range work {
				mu.Lock()
				s := latest[name]
				delete(latest, name)
				mu.Unlock()
				if s == nil {
					continue
				}
				err := plans.Spec(ctx, s)
				if err == nil {
					err = reportPresent(ctx, wc, s)
				}
				if err != nil && ctx.Err() == nil {
					fmt.Fprintln(os.Stderr, "simulated agent:", err)
					continue
				}
				writes.Add(1)
			}
		}()
	}
	for ctx.Err() == nil {
		w, err := wc.Watch(ctx, &prepullv1.NodeImageSetList{})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*prepullv1.NodeImageSet)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			mu.Lock()
			if s.Generation > answered[s.Name] {
				answered[s.Name] = s.Generation
				_, queued := latest[s.Name]
				latest[s.Name] = s
				if !queued {
					work <- s.Name
				}
			}
			mu.Unlock()
		}
	}
}

func reportPresent(ctx context.Context, c client.Client, s *prepullv1.NodeImageSet) error {
	status := prepullv1.NodeImageSetStatus{ObservedGeneration: s.Generation, Plan: s.Spec.Plan}
	if *peersOn {
		status.Peer = &prepullv1.Peer{Node: s.Name, Address: "10.0.0.1:8085", CertSHA256: strings.Repeat("0", 64)}
	}
	for _, img := range s.Spec.Images {
		_, d, _ := strings.Cut(img.Image, "@")
		active := img.ActiveOwners()
		st := prepullv1.NodeImageStatus{Image: img.Image, Phase: prepullv1.PhasePresent, Digest: d, Pinned: true, PinOwners: active}
		if len(active) == 0 {
			st = prepullv1.NodeImageStatus{Image: img.Image, Phase: prepullv1.PhaseReleased, Digest: d}
		}
		// As the agent does: what is present as asked is counted.
		if s.Spec.Plan != "" && img.IsPresentAsAsked(&st) {
			status.PlanPresent++
			continue
		}
		status.Images = append(status.Images, st)
	}
	fields := map[string]any{}
	raw, err := json.Marshal(status)
	if err == nil {
		err = json.Unmarshal(raw, &fields)
	}
	if err != nil {
		return err
	}
	// A merge patch replaces the list whole; null drops it.
	fields["images"] = status.Images
	body, err := json.Marshal(map[string]any{"status": fields})
	if err != nil {
		return err
	}
	patched := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: s.Name}}
	return c.Status().Patch(ctx, patched, client.RawPatch(types.MergePatchType, body))
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

// cpuSeconds is the CPU time used so far by the processes named comm that
// this benchmark started.
func cpuSeconds(comm string) float64 {
	dirs, _ := os.ReadDir("/proc")
	total := 0.0
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		name, err := os.ReadFile("/proc/" + d.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue
		}
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command's closing parenthesis: the parent's
		// PID is the 2nd; utime and stime are the 12th and 13th, in clock
		// ticks (100 a second). Only this benchmark's own processes count.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 12 && f[1] == strconv.Itoa(os.Getpid()) {
			u, _ := strconv.ParseFloat(f[11], 64)
			s, _ := strconv.ParseFloat(f[12], 64)
			total += (u + s) / 100
		}
	}
	return total
}

// generations says how many times the controller wrote the nodes' specs:
// a NodeImageSet's generation counts its spec's changes, its create
// included.
func generations(b *testing.B, c client.Client) string {
	var sets prepullv1.NodeImageSetList
	if err := c.List(context.Background(), &sets); err != nil {
		b.Fatal(err)
	}
	if len(sets.Items) == 0 {
		return "no node image sets"
	}
	gens := make([]int64, 0, len(sets.Items))
	total := int64(0)
	for _, s := range sets.Items {
		gens = append(gens, s.Generation)
		total += s.Generation
	}
	slices.Sort(gens)
	return fmt.Sprintf("mean %.2f, median %d, 90th percentile %d, max %d", float64(total)/float64(len(gens)), gens[len(gens)/2], gens[len(gens)*9/10], gens[len(gens)-1])
}

// countRoutes waits, with -peers, until every image has its route with a
// full list of holders, and returns how many routes there are.
func countRoutes(b *testing.B, c client.Client, images int) int {
	if !*peersOn {
		return 0
	}
	var n int
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var routes prepullv1.ImageRouteList
		if err := c.List(context.Background(), &routes); err != nil {
			b.Fatal(err)
		}
		full := 0
		for _, r := range routes.Items {
			if len(r.Status.Holders) == prepullv1.MaxHolders {
				full++
			}
		}
		n = len(routes.Items)
		if n >= images && full == n {
			return n
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.Fatalf("%d routes, not all with %d holders, after a minute", n, prepullv1.MaxHolders)
	return n
}
