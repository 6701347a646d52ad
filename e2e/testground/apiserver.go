package testground

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// StartAPIServer starts etcd and the kube-apiserver the project builds,
// through envtest, with the CRDs in crdDirs installed; both stop when the
// test ends.
func StartAPIServer(t testing.TB, crdDirs ...string) (*rest.Config, *envtest.Environment) {
	t.Helper()
	dir := BinDir()
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			Unavailable(t, "%s is not built in %s: run `make testground`", b, dir)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: len(crdDirs) > 0,
		// A certificate directory of the test's own, which envtest keeps
		// across a Stop, so that a test can stop the API server and start
		// it again (env.ControlPlane.APIServer) with the same serving
		// certificate and the same users.
		ControlPlane: envtest.ControlPlane{APIServer: &envtest.APIServer{CertDir: TempDir(t, "prepull-apiserver-")}},
	}
	cfg, err := env.Start()
	if err != nil {
		// A failure after the processes started (CRDs refused) leaves them
		// running: stop them before failing.
		_ = env.Stop()
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	return cfg, env
}

// APIClient returns an uncached client of the apiserver at cfg, after
// creating namespaces in it.
func APIClient(t testing.TB, cfg *rest.Config, namespaces ...string) client.Client {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}
	return c
}
