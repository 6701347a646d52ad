package prepulllist_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

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
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
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
