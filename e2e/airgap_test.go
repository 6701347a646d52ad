//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/e2e/testground"
)

// The air gap: the images' registry lives in a network namespace of the
// test's own; once the bundle is written, the host's route into it goes, so
// the node's runtime cannot reach it while it keeps running.
var gap = link{ns: "prepull-airgap", host: "pp-gap0", peer: "pp-gap1", hostIP: "192.168.232.1", peerIP: "192.168.232.2"}

func TestAirGappedNodeGetsImagesFromAnArchive(t *testing.T) {
	prepull := os.Getenv("PREPULL_BINARY")
	if prepull == "" {
		prepull = testground.Binary(t, "prepull")
	}
	gap.up(t)
	host := gap.registry(t, t.TempDir())

	// On the connected side: images in the registry, a bundle of the lists.
	app, tool := host+"/airgap/app:1.0", host+"/airgap/tool:1.0"
	appDigest, err := c.PushWorkload(app, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PushWorkload(tool, 4<<20); err != nil {
		t.Fatal(err)
	}
	lists := filepath.Join(t.TempDir(), "lists.yaml")
	text := fmt.Sprintf(`apiVersion: prepull.io/v1alpha1
kind: PrePullList
metadata: {name: airgap-cluster, namespace: e2e}
spec:
  images: [{image: %q}]
---
apiVersion: prepull.io/v1alpha1
kind: PrePullList
metadata: {name: airgap-node, namespace: e2e}
spec:
  images: [{image: %q}]
`, app, tool)
	if err := os.WriteFile(lists, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	archives := filepath.Join(c.Dir, "archives")
	if err := os.MkdirAll(archives, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(archives, "site.tar")
	out, err := exec.Command(prepull, "bundle", "-f", lists, "-o", archive, "--platform", "linux/"+goruntime.GOARCH).CombinedOutput()
	if err != nil {
		t.Fatalf("prepull bundle: %v\n%s", err, out)
	}
	t.Logf("prepull bundle:\n%s", out)
	sum, err := bundle.SumFile(archive)
	if err != nil {
		t.Fatal(err)
	}

	// The gap: no route from the node to the registry, which still runs.
	gap.cut(t)
	if _, err := images.PullImage(ctx, app, nil); err == nil || !noRoute(err.Error()) {
		t.Fatalf("a pull of %s across the gap: %v, want no route to the registry", app, err)
	}
	if _, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + host + "/v2/"); err == nil {
		t.Fatalf("the registry at %s answers across the gap", host)
	}

	t.Run("through a PrePullList with source.archive", func(t *testing.T) {
		l := applyList(t, "airgap-cluster", func(l *prepullv1.PrePullList) {
			l.Spec.Source = &prepullv1.ImageSource{Archive: &prepullv1.ArchiveSource{Path: "site.tar", SHA256: sum}}
		}, app)
		waitReady(t, l)
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			t.Fatal(err)
		}
		if _, want, _ := strings.Cut(appDigest, "@"); got.Status.Images[0].Digest != want {
			t.Errorf("list status digest %s, want that of %s", got.Status.Images[0].Digest, appDigest)
		}
		if present, pinned, _ := onNode(app); !present || !pinned {
			t.Errorf("%s on the node: present %t pinned %t", app, present, pinned)
		}
		never := runPod(t, "airgap-never", app, corev1.PullNever)
		ifNotPresent := runPod(t, "airgap-ifnotpresent", app, corev1.PullIfNotPresent)
		t.Logf("across the gap: Never pod Running in %s, IfNotPresent pod in %s", never, ifNotPresent)
		deleteList(t, l)
	})

	t.Run("through prepull node apply", func(t *testing.T) {
		apply := exec.Command(prepull, "node", "apply", "-f", lists, "--archive", archive, "--archive-sha256", sum,
			"--cri-endpoint", c.ContainerdSocket())
		out, err := apply.CombinedOutput()
		if err != nil {
			t.Fatalf("prepull node apply: %v\n%s", err, out)
		}
		t.Logf("prepull node apply:\n%s", out)
		for _, want := range []string{"e2e/airgap-node", tool, "imported", "true"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("node apply report lacks %q", want)
			}
		}
		if present, _, _ := onNode(tool); !present {
			t.Fatalf("%s not on the node after node apply", tool)
		}
		never := runPod(t, "airgap-node-never", tool, corev1.PullNever)
		ifNotPresent := runPod(t, "airgap-node-ifnotpresent", tool, corev1.PullIfNotPresent)
		t.Logf("after node apply: Never pod Running in %s, IfNotPresent pod in %s", never, ifNotPresent)

		again, err := exec.Command(prepull, "node", "apply", "-f", lists, "--archive", archive, "--cri-endpoint", c.ContainerdSocket()).CombinedOutput()
		if err != nil || strings.Contains(string(again), "imported") || !strings.Contains(string(again), "present") {
			t.Errorf("node apply again: %v\n%s\nwant every image already present", err, again)
		}
	})
}
