package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"prepull.io/prepull/e2e/testground"
)

// Suite is a test package's local cluster with prepull installed and a
// namespace of the package's own.
type Suite struct {
	*Cluster
	Clientset *kubernetes.Clientset
	Client    client.Client
}

// RunSuite runs a package's tests (m) on a fresh cluster of nodes nodes in
// /var/lib/prepull-cluster with prepull installed as how says and the
// namespace ns, then tears it down and fails unless the machine is as it
// was. A cluster already up there (make demo) is torn down first. Without
// root it skips loudly, or fails under CI=true. It returns the exit code.
func RunSuite(m *testing.M, name string, nodes int, how Install, ns string, ready func(*Suite) error) int {
	logf := func(f string, a ...any) { fmt.Printf(name+": "+f+"\n", a...) }
	// The tests' clients log nothing (without a logger, controller-runtime
	// prints a stack the first time one is made).
	ctrllog.SetLogger(logr.Discard())
	if os.Geteuid() != 0 {
		logf("TEST GROUND UNAVAILABLE: the tests run a real cluster and need root (make test-e2e as root)")
		if os.Getenv("CI") == "true" {
			return 1
		}
		return 0
	}
	c := New("/var/lib/prepull-cluster", testground.BinDir(), nodes)
	if _, err := os.Stat(filepath.Join(c.Dir, "pids")); err == nil {
		logf("a local cluster is up in %s (make demo?); tearing it down for a fresh one", c.Dir)
		if err := c.Down(logf); err != nil {
			logf("tear down: %v", err)
			return 1
		}
	}
	code := c.runSuite(m, logf, how, ns, ready)
	if err := c.Down(logf); err != nil {
		logf("tear down: %v", err)
		code = 1
	}
	if left := c.Leftovers(); len(left) > 0 {
		logf("FAIL: the cluster is down but left on the machine:\n  %s", strings.Join(left, "\n  "))
		code = 1
	}
	return code
}

func (c *Cluster) runSuite(m *testing.M, logf func(string, ...any), how Install, ns string, ready func(*Suite) error) int {
	ctx := context.Background()
	if err := c.Start(ctx, logf); err != nil {
		logf("cluster: %v", err)
		return 1
	}
	s := &Suite{Cluster: c}
	var err error
	if s.Clientset, s.Client, err = c.Clients(); err != nil {
		logf("clients: %v", err)
		return 1
	}
	if err := c.Deploy(ctx, s.Clientset, how); err != nil {
		logf("deploy: %v", err)
		return 1
	}
	if _, err := s.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		logf("namespace: %v", err)
		return 1
	}
	if err := WaitServiceAccount(ctx, s.Clientset, ns); err != nil {
		logf("%v", err)
		return 1
	}
	if err := ready(s); err != nil {
		logf("%v", err)
		return 1
	}
	return m.Run()
}
