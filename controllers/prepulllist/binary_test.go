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

	"sigs.k8s.io/controller-runtime/pkg/client"

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
	metricsPort, probePort, _ := startController(t, bin, kubeconfig, reg, "--leader-elect=false")

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

// startController starts `prepull controller` with its own metrics and
// probe ports and args; it is killed when the test ends, its log shown if
// the test failed. kill kills it before.
func startController(t *testing.T, bin, kubeconfig string, reg *testground.Registry, args ...string) (metricsPort, probePort int, kill func()) {
	t.Helper()
	metricsPort, probePort = testground.FreePort(t), testground.FreePort(t)
	cmd := exec.Command(bin, append([]string{"controller", "--namespace=" + controllerNS,
		"--insecure-registries=" + reg.Host,
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort)}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logPath := filepath.Join(t.TempDir(), "controller.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := testground.StartChild(cmd); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	kill = func() {
		once.Do(func() {
			select {
			case <-exited:
				t.Errorf("controller (metrics :%d) had exited before the test stopped it: %v", metricsPort, waitErr)
			default:
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(func() {
		kill()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("controller (metrics :%d) log:\n%s", metricsPort, data)
		}
	})
	return metricsPort, probePort, kill
}

// TestControllerFailover runs two `prepull controller` replicas with leader
// election on one apiserver, kills the leader with SIGKILL while a paced
// rollout is half-way, and shows that the other takes the lease, completes
// the rollout without resolving the tag again, and leaves every node's
// NodeImageSet whole.
func TestControllerFailover(t *testing.T) {
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
	img := reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	nodes := []string{"fo-node-1", "fo-node-2", "fo-node-3", "fo-node-4"}
	for _, n := range nodes {
		e.node(t, n, nil)
	}
	type replica struct {
		metrics int
		kill    func()
	}
	var replicas []replica
	for range 2 {
		m, _, kill := startController(t, bin, kubeconfig, reg, "--leader-elect=true")
		replicas = append(replicas, replica{m, kill})
	}
	const leaderMetric = `leader_election_master_status{name="prepull-controller.prepull.io"} 1`
	leader := func() (int, error) {
		found := -1
		for i, r := range replicas {
			_, body := testground.HTTPGet(t, r.metrics, "/metrics", true)
			if strings.Contains(body, leaderMetric) {
				if found >= 0 {
					return -1, fmt.Errorf("replicas %d and %d both lead", found, i)
				}
				found = i
			}
		}
		if found < 0 {
			return -1, fmt.Errorf("no replica leads yet")
		}
		return found, nil
	}
	first := -1
	eventually(t, "a leader", func() (err error) {
		first, err = leader()
		return err
	})

	l := list("shop", "web", img.Tag)
	l.Spec.Rollout.MaxConcurrentNodes = intOrString("1")
	e.mustCreate(t, l)
	// Two nodes done under the first leader, one at a time.
	done := map[string]bool{}
	next := func() string {
		var got string
		eventually(t, "the next node handed", func() error {
			var handed []string
			for _, n := range nodes {
				if !done[n] && e.entry(n, img.Digest) != nil {
					handed = append(handed, n)
				}
			}
			if len(handed) != 1 {
				var sets prepullv1.NodeImageSetList
				_ = c.List(ctx, &sets)
				var seen []string
				for _, s := range sets.Items {
					seen = append(seen, fmt.Sprintf("%s: spec %+v status %+v", s.Name, s.Spec.Images, s.Status.Images))
				}
				got := e.getList(t, l)
				return fmt.Errorf("nodes handed and not done: %v; list status %+v; node image sets:\n%s", handed, got.Status, strings.Join(seen, "\n"))
			}
			got = handed[0]
			return nil
		})
		return got
	}
	for range 2 {
		n := next()
		e.agent(t, n, nil)
		done[n] = true
	}
	tr := &prepullv1.TagResolution{}
	if err := c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(img.Tag)}, tr); err != nil {
		t.Fatal(err)
	}
	resolvedAt := tr.Status.ResolvedAt

	replicas[first].kill()
	second := 1 - first
	testground.Eventually(t, 60*time.Second, "the other replica leads", func() error {
		_, body := testground.HTTPGet(t, replicas[second].metrics, "/metrics", true)
		if !strings.Contains(body, leaderMetric) {
			return fmt.Errorf("replica %d does not lead", second)
		}
		return nil
	})
	for len(done) < len(nodes) {
		n := next()
		e.agent(t, n, nil)
		done[n] = true
	}
	eventually(t, "list Ready on every node", func() error {
		got := e.getList(t, l)
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		if got.Status.Nodes.Ready != int32(len(nodes)) {
			return fmt.Errorf("nodes %+v", got.Status.Nodes)
		}
		return nil
	})
	if err := c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(img.Tag)}, tr); err != nil {
		t.Fatal(err)
	}
	if !tr.Status.ResolvedAt.Equal(resolvedAt) {
		t.Errorf("the tag was resolved again after the failover: %v, then %v", resolvedAt, tr.Status.ResolvedAt)
	}
	_, body := testground.HTTPGet(t, replicas[second].metrics, "/metrics", true)
	if strings.Contains(body, `prepull_tag_resolutions_total{result="resolved"}`) {
		t.Errorf("the new leader resolved the tag:\n%s", grepLines(body, "prepull_tag_resolutions_total"))
	}
	for _, n := range nodes {
		en := e.entry(n, img.Digest)
		if en == nil || len(activeOwners(en)) != 1 {
			t.Errorf("node %s: entry %+v", n, en)
		}
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
