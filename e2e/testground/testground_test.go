package testground_test

import (
	"context"
	"net/http"
	"os"
	"regexp"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"prepull.io/prepull/e2e/testground"
)

// pinnedKubeVersion reads the Kubernetes version the test ground pins.
func pinnedKubeVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../hack/tools/kube/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require k8s.io/kubernetes (v\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("hack/tools/kube/go.mod does not require k8s.io/kubernetes")
	}
	return string(m[1])
}

func TestAPIServerSmoke(t *testing.T) {
	cfg, _ := testground.StartAPIServer(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if want := pinnedKubeVersion(t); v.GitVersion != want {
		t.Errorf("kube-apiserver reports version %q, want the pinned %q", v.GitVersion, want)
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "smoke"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	got, err := cs.CoreV1().Namespaces().Get(ctx, "smoke", metav1.GetOptions{})
	if err != nil || got.Name != "smoke" {
		t.Fatalf("read back namespace: %v, %v", got, err)
	}
}

func TestRegistryStopsAndRestartsWithItsData(t *testing.T) {
	reg := testground.StartRegistry(t, testground.WithBasicAuth("bob", "pw"))
	pushed := reg.MustPushRandom(t, "kept:v1", 1024, 1)

	anon, err := http.Get("http://" + reg.Host + "/v2/kept/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	anon.Body.Close()
	if anon.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous manifest GET: %s, want 401", anon.Status)
	}

	reg.Stop()
	if _, err := http.Get("http://" + reg.Host + "/v2/"); err == nil {
		t.Fatal("registry still answers after Stop")
	}
	reg.Start()
	ref, err := name.NewDigest(pushed.Digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(ref, remote.WithAuth(&authn.Basic{Username: "bob", Password: "pw"})); err != nil {
		t.Errorf("image pushed before the restart is gone: %v", err)
	}
}
