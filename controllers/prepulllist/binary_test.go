package prepulllist_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// TestControllerBinary runs `prepull controller` as it runs in a cluster,
// on its own apiserver, and reads its readiness and metrics while a list
// rolls out to one node whose agent the test plays.
func TestControllerBinary(t *testing.T) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
	}
	cfg, api := testground.StartAPIServer(t, "../../deploy/crd")
	reg := testground.StartRegistry(t)
	c := testground.APIClient(t, cfg, controllerNS, "shop")
	e := &env{c: c, top: t}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, api.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	proc := startController(t, bin, kubeconfig, reg, "--leader-elect=false")
	metricsPort, probePort := proc.metrics, proc.probe

	// No list yet: once its caches are synced, the leader has nothing to
	// reconcile, and is ready.
	if _, body := testground.HTTPGet(t, probePort, "/readyz?verbose", true); !strings.Contains(body, "[+]reconciled ok") || !strings.Contains(body, "[+]api ok") {
		t.Fatalf("/readyz with no list: %q", body)
	}
	img := reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	e.node(t, "bin-node-1", nil)
	l := list("shop", "web", img.Tag)
	e.mustCreate(t, l)
	e.handed(t, "bin-node-1", 1)
	e.agent(t, "bin-node-1", nil)
	eventually(t, "list Ready", func() error {
		got := &prepullv1.PrePullList{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			return err
		}
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		return nil
	})
	if code, body := testground.HTTPGet(t, probePort, "/readyz?verbose", false); code != http.StatusOK {
		t.Errorf("/readyz after a rollout: %d %q", code, body)
	}
	eventually(t, "metrics of the rollout", func() error {
		_, body := testground.HTTPGet(t, metricsPort, "/metrics", true)
		for _, want := range []string{
			`prepull_tag_resolutions_total{result="resolved"} 1`,
			`prepull_list_nodes{name="web",namespace="shop",state="ready"} 1`,
			`prepull_list_nodes{name="web",namespace="shop",state="failed"} 0`,
			`prepull_list_rollouts_total{name="web",namespace="shop"} 1`,
			`controller_runtime_reconcile_total{controller="prepulllist",result="success"}`,
			`controller_runtime_reconcile_errors_total{controller="prepulllist"}`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("metrics lack %q", want)
			}
		}
		return nil
	})
}

// controllerProc is a `prepull controller` a test started.
type controllerProc struct {
	metrics, probe int
	// exited is closed once the process has ended, with err.
	exited chan struct{}
	err    error
	// mayExit says the test expects it to end by itself.
	mayExit bool
	once    sync.Once
	cmd     *exec.Cmd
}

// kill ends the process by its PID, and fails the test if it had ended by
// itself unexpectedly.
func (p *controllerProc) kill(t *testing.T) {
	p.once.Do(func() {
		select {
		case <-p.exited:
			if !p.mayExit {
				t.Errorf("controller (metrics :%d) had exited before the test stopped it: %v", p.metrics, p.err)
			}
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// startController starts `prepull controller` with its own metrics and
// probe ports and args; it is killed when the test ends, its log shown if
// the test failed.
func startController(t *testing.T, bin, kubeconfig string, reg *testground.Registry, args ...string) *controllerProc {
	t.Helper()
	p := &controllerProc{metrics: testground.FreePort(t), probe: testground.FreePort(t), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"controller", "--namespace=" + controllerNS,
		"--insecure-registries=" + reg.Host,
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", p.metrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", p.probe)}, args...)...)
	p.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logPath := filepath.Join(t.TempDir(), "controller.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := testground.StartChild(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("controller (metrics :%d) log:\n%s", p.metrics, data)
		}
	})
	return p
}

// binaryGround is what the tests of the controller binary run on: a real
// API server with the CRDs, a registry, and a kubeconfig for the binary.
type binaryGround struct {
	bin, kubeconfig string
	api             *envtest.Environment
	reg             *testground.Registry
	c               client.Client
	e               *env
}

func newBinaryGround(t *testing.T) *binaryGround {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
	}
	cfg, api := testground.StartAPIServer(t, "../../deploy/crd")
	g := &binaryGround{bin: bin, api: api, reg: testground.StartRegistry(t)}
	g.c = testground.APIClient(t, cfg, controllerNS, "shop")
	g.e = &env{c: g.c, top: t}
	g.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(g.kubeconfig, api.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// pacedRollout follows a rollout of one image to nodes, one node at a
// time, and plays each node's agent once the node is handed the image.
type pacedRollout struct {
	g     *binaryGround
	l     *prepullv1.PrePullList
	image string
	nodes []string
	done  map[string]bool
}

// startPaced creates the nodes and a list of tag that rolls out to one node
// at a time.
func (g *binaryGround) startPaced(t *testing.T, tag, digest string, nodes ...string) *pacedRollout {
	for _, n := range nodes {
		g.e.node(t, n, nil)
	}
	l := list("shop", "web", tag)
	l.Spec.Rollout.MaxConcurrentNodes = intOrString("1")
	g.e.mustCreate(t, l)
	return &pacedRollout{g: g, l: l, image: digest, nodes: nodes, done: map[string]bool{}}
}

// next waits until exactly one node not done yet is handed the image, and
// returns it.
func (r *pacedRollout) next(t *testing.T) string {
	t.Helper()
	return r.nextWithin(t, wait)
}

func (r *pacedRollout) nextWithin(t *testing.T, within time.Duration) string {
	t.Helper()
	var got string
	testground.Eventually(t, within, "the next node handed", func() error {
		var handed []string
		for _, n := range r.nodes {
			if !r.done[n] && r.g.e.entry(n, r.image) != nil {
				handed = append(handed, n)
			}
		}
		if len(handed) != 1 {
			return fmt.Errorf("nodes handed and not done: %v; list status %+v", handed, r.g.e.getList(t, r.l).Status)
		}
		got = handed[0]
		return nil
	})
	return got
}

// finish plays the agent of node n, which holds the image.
func (r *pacedRollout) finish(t *testing.T, n string) {
	t.Helper()
	r.g.e.agent(t, n, nil)
	r.done[n] = true
}

// complete plays every remaining node as it is handed the image, and waits
// for the list to be Ready on all.
func (r *pacedRollout) complete(t *testing.T) {
	t.Helper()
	for len(r.done) < len(r.nodes) {
		r.finish(t, r.next(t))
	}
	eventually(t, "list Ready on every node", func() error {
		got := r.g.e.getList(t, r.l)
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		if got.Status.Nodes.Ready != int32(len(r.nodes)) {
			return fmt.Errorf("nodes %+v", got.Status.Nodes)
		}
		return nil
	})
	for _, n := range r.nodes {
		if en := r.g.e.entry(n, r.image); en == nil || len(activeOwners(en)) != 1 {
			t.Errorf("node %s: entry %+v", n, en)
		}
	}
}

// resolvedAt is when the tag's one TagResolution was last confirmed.
func (g *binaryGround) resolvedAt(t *testing.T, tag string) *metav1.Time {
	t.Helper()
	tr := &prepullv1.TagResolution{}
	if err := g.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(tag)}, tr); err != nil {
		t.Fatal(err)
	}
	return tr.Status.ResolvedAt
}

const leaderMetric = `leader_election_master_status{name="prepull-controller.prepull.io"} 1`

// leads reports whether p holds the lease, by its own metric.
func (p *controllerProc) leads(t *testing.T) bool {
	_, body := testground.HTTPGet(t, p.metrics, "/metrics", true)
	return strings.Contains(body, leaderMetric)
}

// TestControllerFailover runs two `prepull controller` replicas with leader
// election on one apiserver, kills the leader with SIGKILL while a paced
// rollout is half-way, and shows that the other takes the lease, completes
// the rollout without resolving the tag again, and leaves every node's
// NodeImageSet whole.
func TestControllerFailover(t *testing.T) {
	g := newBinaryGround(t)
	img := g.reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	replicas := []*controllerProc{
		startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true"),
		startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true"),
	}
	first := -1
	eventually(t, "one leader", func() error {
		var leading []int
		for i, r := range replicas {
			if r.leads(t) {
				leading = append(leading, i)
			}
		}
		if len(leading) != 1 {
			return fmt.Errorf("replicas leading: %v", leading)
		}
		first = leading[0]
		return nil
	})
	r := g.startPaced(t, img.Tag, img.Digest, "fo-node-1", "fo-node-2", "fo-node-3", "fo-node-4")
	// Two nodes done under the first leader, one at a time.
	r.finish(t, r.next(t))
	r.finish(t, r.next(t))
	resolvedAt := g.resolvedAt(t, img.Tag)

	replicas[first].kill(t)
	second := replicas[1-first]
	testground.Eventually(t, 60*time.Second, "the other replica leads", func() error {
		if !second.leads(t) {
			return fmt.Errorf("the other replica does not lead")
		}
		return nil
	})
	r.complete(t)
	if again := g.resolvedAt(t, img.Tag); !again.Equal(resolvedAt) {
		t.Errorf("the tag was resolved again after the failover: %v, then %v", resolvedAt, again)
	}
	_, body := testground.HTTPGet(t, second.metrics, "/metrics", true)
	if strings.Contains(body, `prepull_tag_resolutions_total{result="resolved"}`) {
		t.Errorf("the new leader resolved the tag:\n%s", grepLines(body, "prepull_tag_resolutions_total"))
	}
}

// TestControllerRidesOutAnAPIServerOutage stops the API server for a
// minute while a paced rollout is half-way. The leader loses its lease and
// exits, as a leader must when it cannot renew it; the replica started in
// its place while the API server is still away (as the kubelet restarts
// it) waits for it instead of exiting, live and not ready, and completes
// the rollout once it is back, without resolving the tag again.
func TestControllerRidesOutAnAPIServerOutage(t *testing.T) {
	g := newBinaryGround(t)
	img := g.reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	leader := startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true")
	r := g.startPaced(t, img.Tag, img.Digest, "out-node-1", "out-node-2", "out-node-3")
	r.finish(t, r.next(t))
	handed := r.next(t)
	resolvedAt := g.resolvedAt(t, img.Tag)

	const outage = 60 * time.Second
	apiServer := g.api.ControlPlane.APIServer
	if err := apiServer.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	leader.mayExit = true
	select {
	case <-leader.exited:
		t.Logf("the leader exited %s into the outage: %v", time.Since(stopped).Round(time.Second), leader.err)
	case <-time.After(outage / 2):
		t.Logf("the leader still runs %s into the outage; the test stops it", outage/2)
		leader.kill(t)
	}
	replacement := startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true")
	if code, body := testground.HTTPGet(t, replacement.probe, "/healthz", true); code != http.StatusOK {
		t.Errorf("/healthz of the waiting replica: %d %q", code, body)
	}
	if code, body := testground.HTTPGet(t, replacement.probe, "/readyz", false); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the API server") {
		t.Errorf("/readyz of the waiting replica: %d %q", code, body)
	}
	time.Sleep(time.Until(stopped.Add(outage)))
	select {
	case <-replacement.exited:
		t.Fatalf("the replica started during the outage exited: %v", replacement.err)
	default:
	}
	if err := apiServer.Start(); err != nil {
		t.Fatalf("start the API server again: %v", err)
	}
	back := time.Now()
	r.finish(t, handed)
	// The replica takes the lease once the one its predecessor held has
	// not been renewed for the lease's duration (15 s), as it observes it:
	// the API server's return plus that, and a retry period.
	r.finish(t, r.nextWithin(t, 45*time.Second))
	r.complete(t)
	t.Logf("list Ready %s after the API server returned", time.Since(back).Round(100*time.Millisecond))
	if again := g.resolvedAt(t, img.Tag); !again.Equal(resolvedAt) {
		t.Errorf("the tag was resolved again after the outage: %v, then %v", resolvedAt, again)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
