package bench

import (
	"context"

	"flag"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/e2e/testground"
)

var (
	agentImages    = flag.Int("agent-images", 8, "images per run in BenchmarkAgentPulls")
	agentImageSize = flag.Int64("agent-image-mib", 8, "size of each image in MiB in BenchmarkAgentPulls")
	agentRounds    = flag.Int("agent-rounds", 4, "rounds of raw and agent runs, alternating, in BenchmarkAgentPulls")
	agentStatus    = flag.Duration("agent-status-interval", nodeimageset.DefaultStatusInterval, "the agents' --status-interval in BenchmarkAgentPulls")
	agentLinks     = flag.String("agent-links", "loopback,shaped", "the links BenchmarkAgentPulls measures, of loopback and shaped")
	agentBudget    = flag.Float64("agent-disk-budget", 0.9, "the agents' --disk-budget in BenchmarkAgentPulls (0 turns it off; 0.9, the agents' default when the figures of docs/benchmarks.md were taken)")
)

// BenchmarkAgentPulls compares the agent pulling N images — pull, tag,
// verify, pin, report — with the same number of raw CRI pulls on the same
// containerd, in the same run: sequentially (the agent's overhead) and with
// the agent's parallel pulls (its speed-up). Each run pulls images of its own,
// of the same size, so that none is already present.
func BenchmarkAgentPulls(b *testing.B) {
	n, size := *agentImages, *agentImageSize<<20
	// The agents' logs would drown the figures.
	ctrl.SetLogger(logr.Discard())
	cfg, _ := testground.StartAPIServer(b, "../../deploy/crd")
	ctd := testground.StartContainerd(b)
	reg := testground.StartRegistry(b)
	ctd.TrustRegistry(reg)
	images, store := ctd.Clients(b)
	scheme := testground.Scheme()
	c := testground.APIClient(b, cfg, "prepull-system")
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	push := func(run string) []testground.Pushed {
		var out []testground.Pushed
		for i := range n {
			out = append(out, reg.MustPushRandom(b, fmt.Sprintf("%s/img%d:v1", run, i), size, 1))
		}
		return out
	}
	raw := func(set []testground.Pushed) time.Duration {
		start := time.Now()
		for _, p := range set {
			if _, err := images.PullImage(ctx, p.Digest, nil); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	agent := func(node string, set []testground.Pushed, parallel int) time.Duration {
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Scheme:     scheme,
			Metrics:    metricsserver.Options{BindAddress: "0"},
			Controller: config.Controller{SkipNameValidation: ptrTo(true)},
			Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
				&prepullv1.NodeImageSet{}: {Field: fields.OneTermEqualSelector("metadata.name", node)},
			}},
		})
		if err != nil {
			b.Fatal(err)
		}
		r := &nodeimageset.Reconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), NodeName: node, Namespace: "prepull-system",
			Images: images, Store: store, MaxConcurrentPulls: parallel,
			StatusInterval: *agentStatus, ResyncInterval: time.Minute, DiskBudget: *agentBudget,
		}
		if err := r.SetupWithManager(mgr); err != nil {
			b.Fatal(err)
		}
		mctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { _ = mgr.Start(mctx) }()
		if !mgr.GetCache().WaitForCacheSync(mctx) {
			b.Fatal("cache not synced")
		}
		set0 := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: node}}
		for _, p := range set {
			e := prepullv1.NodeImage{Image: p.Digest,
				Owners: []prepullv1.ImageOwner{{List: "bench/list", Tags: []string{p.Tag}}}}
			set0.Spec.Images = append(set0.Spec.Images, e)
		}
		// The agent is running once it reported on an empty spec; the clock
		// starts when the images are handed to it.
		wanted := set0.Spec.Images
		set0.Spec.Images = nil
		if err := c.Create(ctx, set0); err != nil {
			b.Fatal(err)
		}
		for set0.Status.ObservedGeneration == 0 {
			time.Sleep(10 * time.Millisecond)
			if err := c.Get(ctx, client.ObjectKey{Name: node}, set0); err != nil {
				b.Fatal(err)
			}
		}
		// The clock stops at the status write that says Present for all,
		// seen through a watch: polling would load the API server the
		// pulls share the machine with, and add its own interval.
		w, err := wc.Watch(ctx, &prepullv1.NodeImageSetList{}, client.MatchingFields{"metadata.name": node})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Stop()
		orig := set0.DeepCopy()
		set0.Spec.Images = wanted
		start := time.Now()
		if err := c.Patch(ctx, set0, client.MergeFrom(orig)); err != nil {
			b.Fatal(err)
		}
		timeout := time.After(10 * time.Minute)
		present := 0
		for {
			select {
			case ev := <-w.ResultChan():
				got, ok := ev.Object.(*prepullv1.NodeImageSet)
				if !ok {
					b.Fatalf("watch of node image set %s: %v", node, ev.Object)
				}
				present = 0
				for _, st := range got.Status.Images {
					if st.Phase == prepullv1.PhasePresent {
						present++
					}
				}
				if present == n {
					return time.Since(start)
				}
			case <-timeout:
				b.Fatalf("agent: %d of %d present after 10m", present, n)
			}
		}
	}

	th := testground.StartThrottle(b, reg, 100_000_000/8, 10*time.Millisecond)
	ctd.TrustHost(th.Host)
	profiles := []struct {
		name string
		link string
		ref  func(testground.Pushed) testground.Pushed
	}{
		{"loopback", "loopback, no shaping", func(p testground.Pushed) testground.Pushed { return p }},
		{"shaped", "100 Mbit/s shared, 10 ms per request", func(p testground.Pushed) testground.Pushed {
			p.Tag, p.Digest = th.Ref(reg, p.Tag), th.Ref(reg, p.Digest)
			return p
		}},
	}
	b.ResetTimer()
	for _, prof := range profiles {
		if !slices.Contains(strings.Split(*agentLinks, ","), prof.name) {
			continue
		}
		// Raw and agent runs alternate, round after round, so that what
		// the shared machine does meanwhile falls on both alike. The first
		// round warms up and is not counted.
		rounds := *agentRounds
		var rawTotal, agentTotal time.Duration
		var raws, agents []string
		for i := range rounds + 1 {
			b.StopTimer()
			sets := map[string][]testground.Pushed{}
			for _, run := range []string{"raw", "agent"} {
				for _, p := range push(fmt.Sprintf("%s-%s%d", prof.name, run, i)) {
					sets[run] = append(sets[run], prof.ref(p))
				}
			}
			b.StartTimer()
			// Each run starts from a quiet machine — the previous run's
			// writes on disk, the pushes' garbage collected — and the two
			// take turns going first, so that neither pays for the other.
			var r, a time.Duration
			runRaw := func() { quiesce(); r = raw(sets["raw"]) }
			runAgent := func() { quiesce(); a = agent(fmt.Sprintf("%s-seq%d", prof.name, i), sets["agent"], 1) }
			if i%2 == 0 {
				runRaw()
				runAgent()
			} else {
				runAgent()
				runRaw()
			}
			// The round's images go, so that every round finds the
			// runtime holding as much as the first: containerd's work per
			// pull grows with what its store holds.
			b.StopTimer()
			for _, set := range sets {
				for _, p := range set {
					if err := images.RemoveImage(ctx, p.Digest); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StartTimer()
			if i == 0 {
				// A warm-up round, not counted: it pays for what every
				// later round finds warm (connections, the page cache, the
				// API server's first requests of each kind).
				continue
			}
			rawTotal, agentTotal = rawTotal+r, agentTotal+a
			raws, agents = append(raws, round(r).String()), append(agents, round(a).String())
		}
		b.StopTimer()
		var par []testground.Pushed
		for _, p := range push(prof.name + "-agentpar") {
			par = append(par, prof.ref(p))
		}
		b.StartTimer()
		quiesce()
		agentPar := agent(prof.name+"-par", par, 4)

		rawMean, agentMean := rawTotal/time.Duration(rounds), agentTotal/time.Duration(rounds)
		overhead := agentTotal.Seconds() / rawTotal.Seconds()
		speedup := agentMean.Seconds() / agentPar.Seconds()
		b.ReportMetric(overhead, prof.name+"-agent-seq/raw-seq")
		b.ReportMetric(speedup, prof.name+"-agent-seq/agent-par4")
		fmt.Printf("\nagent pulls, %s: %d images of %d MiB, one layer each, %d rounds\n", prof.link, n, size>>20, rounds)
		fmt.Printf("  raw CRI pulls, sequential:       %s (mean %s)\n", strings.Join(raws, " "), round(rawMean))
		fmt.Printf("  agent, 1 pull at a time:         %s (mean %s; pull + tag + verify + pin + status Present)\n", strings.Join(agents, " "), round(agentMean))
		fmt.Printf("  agent, 4 pulls at a time:        %s\n", round(agentPar))
		fmt.Printf("  sequential overhead (agent/raw): %.3f\n", overhead)
		fmt.Printf("  parallel speed-up (1 vs 4):      %.2fx\n", speedup)
	}
}

// quiesce writes back what earlier runs left in the page cache and collects
// the garbage of the pushes, so that a run does not pay for the one before.
func quiesce() {
	syscall.Sync()
	runtime.GC()
}

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func ptrTo[T any](v T) *T { return &v }
