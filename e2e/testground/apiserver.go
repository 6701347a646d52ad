package testground

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
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
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	return cfg, env
}
