//go:build e2e

// Package e2e proves prepull on a real local cluster (package e2e/cluster):
// a real kubelet, containerd and scheduler run the pods, prepull runs as its
// deploy/ manifests say, and the registry is really stopped.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/doctor"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
)

var (
	c      *cluster.Cluster
	cs     *kubernetes.Clientset
	cl     client.Client
	images *cri.Remote
	ctx    = context.Background()
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	return cluster.RunSuite(m, "e2e", 1, cluster.Helm, "e2e", func(s *cluster.Suite) error {
		c, cs, cl = s.Cluster, s.Clientset, s.Client
		var err error
		images, err = cri.NewRemote(c.ContainerdSocket())
		return err
	})
}

// push pushes a new runnable image of size random bytes to repoTag in the
// cluster's registry.
func push(t testing.TB, repoTag string, size int) (tag, digest string) {
	t.Helper()
	tag = cluster.RegistryHost + "/" + repoTag
	digest, err := c.PushWorkload(tag, size)
	if err != nil {
		t.Fatal(err)
	}
	return tag, digest
}

func applyList(t *testing.T, name string, mutate func(*prepullv1.PrePullList), images ...string) *prepullv1.PrePullList {
	t.Helper()
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name}}
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	if mutate != nil {
		mutate(l)
	}
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	return l
}

func waitReady(t *testing.T, l *prepullv1.PrePullList) {
	t.Helper()
	if err := cluster.WaitListReady(ctx, cl, l, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func deleteList(t *testing.T, l *prepullv1.PrePullList) {
	t.Helper()
	if err := cluster.DeleteList(ctx, cl, l, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// onNode is what the node's runtime reports for ref: present and pinned.
func onNode(ref string) (present, pinned bool, id string) {
	img, err := images.ImageStatus(ctx, ref)
	if err != nil {
		return false, false, ""
	}
	return true, img.Pinned, img.ID
}

func runPod(t *testing.T, name, image string, policy corev1.PullPolicy) time.Duration {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: policy}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	d, err := cluster.WaitPodRunning(ctx, cs, pod, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods("e2e").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		cluster.WaitPodGone(ctx, cs, "e2e", name)
	})
	return d
}

func TestPrePulledImagesStartPodsWithoutARegistry(t *testing.T) {
	tag, digest := push(t, "e2e/web:1.0", 16<<20)
	l := applyList(t, "web", nil, tag)
	waitReady(t, l)
	testground.Eventually(t, time.Minute, "tag and digest present and pinned on the node", func() error {
		tp, tpin, tid := onNode(tag)
		dp, dpin, did := onNode(digest)
		if !tp || !dp || tid != did || !tpin || !dpin {
			return fmt.Errorf("tag present %t pinned %t id %s; digest present %t pinned %t id %s", tp, tpin, tid, dp, dpin, did)
		}
		return nil
	})

	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	never := runPod(t, "never", tag, corev1.PullNever)
	ifNotPresent := runPod(t, "ifnotpresent", tag, corev1.PullIfNotPresent)
	t.Logf("with the registry stopped: Never pod Running in %s, IfNotPresent pod in %s", never, ifNotPresent)
}

func TestDeletedListsUnpinAndRemove(t *testing.T) {
	keepTag, keepDigest := push(t, "e2e/kept:1.0", 1<<20)
	goneTag, goneDigest := push(t, "e2e/gone:1.0", 1<<20)
	unpin := applyList(t, "unpin", nil, keepTag)
	remove := applyList(t, "remove", func(l *prepullv1.PrePullList) { l.Spec.OnDelete = prepullv1.DeleteRemove }, goneTag)
	waitReady(t, unpin)
	waitReady(t, remove)
	for _, ref := range []string{keepDigest, goneDigest} {
		testground.Eventually(t, time.Minute, ref+" pinned", func() error {
			if _, pinned, _ := onNode(ref); !pinned {
				return errors.New("not pinned")
			}
			return nil
		})
	}
	deleteList(t, unpin)
	deleteList(t, remove)
	if present, pinned, _ := onNode(keepDigest); !present || pinned {
		t.Errorf("onDelete Unpin: present %t, pinned %t; want present and unpinned", present, pinned)
	}
	if present, _, _ := onNode(goneDigest); present {
		t.Errorf("onDelete Remove: the image is still on the node")
	}
}

// onDelete: Remove removes only what prepull brought and nothing in use,
// on a real kubelet: an image the kubelet pulled for a running pod, the
// sandbox image, and an image prepull brought that a pod now runs all stay
// when the list naming them with onDelete: Remove is deleted, unpinned; a
// Never pod of the kubelet's image still starts. An image prepull brought
// that no container uses goes.
func TestRemoveTakesOnlyWhatPrepullBroughtAndNoPodUses(t *testing.T) {
	kubeletsTag, kubeletsDigest := push(t, "e2e/kubelets:1.0", 1<<20)
	runPod(t, "kubelets", kubeletsTag, corev1.PullIfNotPresent)
	oursTag, oursDigest := push(t, "e2e/ours-in-use:1.0", 1<<20)
	unusedTag, unusedDigest := push(t, "e2e/ours-unused:1.0", 1<<20)
	l := applyList(t, "remove-only-ours", func(l *prepullv1.PrePullList) { l.Spec.OnDelete = prepullv1.DeleteRemove },
		kubeletsTag, oursTag, unusedTag, cluster.PauseImage)
	waitReady(t, l)
	runPod(t, "ours-in-use", oursTag, corev1.PullNever)
	deleteList(t, l)
	for _, ref := range []string{kubeletsDigest, kubeletsTag, oursDigest} {
		if present, pinned, _ := onNode(ref); !present || pinned {
			t.Errorf("%s after the list went: present %t, pinned %t; want present and unpinned", ref, present, pinned)
		}
	}
	// The sandbox image keeps the pin containerd itself gives it.
	if present, _, _ := onNode(cluster.PauseImage); !present {
		t.Errorf("the sandbox image %s is gone", cluster.PauseImage)
	}
	if present, _, _ := onNode(unusedDigest); present {
		t.Errorf("%s, which prepull brought and no pod uses, is still on the node", unusedDigest)
	}
	runPod(t, "kubelets-never", kubeletsTag, corev1.PullNever)
}

func TestAnAlwaysPodLeavesThePin(t *testing.T) {
	tag, digest := push(t, "e2e/always:1.0", 1<<20)
	l := applyList(t, "always", nil, tag)
	waitReady(t, l)
	runPod(t, "always", tag, corev1.PullAlways)
	// The kubelet's pull rewrites the tag's record; the agent restores any
	// pin it lost, and the image must never stay unpinned.
	testground.Eventually(t, time.Minute, "still pinned after the kubelet re-pulled", func() error {
		_, tagPinned, _ := onNode(tag)
		_, digestPinned, _ := onNode(digest)
		if !tagPinned || !digestPinned {
			return fmt.Errorf("tag pinned %t, digest pinned %t", tagPinned, digestPinned)
		}
		return nil
	})
	deleteList(t, l)
}

func TestANodeRelabelledOutLosesThePin(t *testing.T) {
	tag, digest := push(t, "e2e/labelled:1.0", 1<<20)
	setLabel(t, "pool", "e2e")
	defer setLabel(t, "pool", "")
	l := applyList(t, "labelled", func(l *prepullv1.PrePullList) {
		l.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "e2e"}}
	}, tag)
	waitReady(t, l)
	testground.Eventually(t, time.Minute, "pinned", func() error {
		if _, pinned, _ := onNode(digest); !pinned {
			return errors.New("not pinned")
		}
		return nil
	})
	setLabel(t, "pool", "other")
	testground.Eventually(t, 2*time.Minute, "unpinned after the node left the selector", func() error {
		if _, pinned, _ := onNode(digest); pinned {
			return errors.New("still pinned")
		}
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			return err
		}
		if got.Status.Nodes.Selected != 0 {
			return fmt.Errorf("status still selects %d nodes", got.Status.Nodes.Selected)
		}
		return nil
	})
	deleteList(t, l)
}

func setLabel(t *testing.T, key, value string) {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if value == "" {
		delete(n.Labels, key)
	} else {
		n.Labels[key] = value
	}
	if _, err := cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeletImageGCSparesPinnedImages runs last: it makes the kubelet's
// image garbage collection collect everything it may.
func TestKubeletImageGCSparesPinnedImages(t *testing.T) {
	pinnedTag, pinnedDigest := push(t, "e2e/gc-pinned:1.0", 4<<20)
	looseTag, _ := push(t, "e2e/gc-loose:1.0", 4<<20)
	l := applyList(t, "gc", nil, pinnedTag)
	waitReady(t, l)
	// The other image comes the kubelet's own way: a pod pulls it, then goes.
	runPod(t, "loose", looseTag, corev1.PullIfNotPresent)
	if err := cs.CoreV1().Pods("e2e").Delete(ctx, "loose", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	cluster.WaitPodGone(ctx, cs, "e2e", "loose")
	if present, pinned, _ := onNode(looseTag); !present || pinned {
		t.Fatalf("the kubelet-pulled image: present %t, pinned %t; want present, unpinned", present, pinned)
	}

	// Collect whenever the image filesystem is more than 1% full: always.
	if err := c.RestartKubelet(ctx, cs, "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\n"); err != nil {
		t.Fatal(err)
	}
	// The kubelet collects images every five minutes.
	testground.Eventually(t, 8*time.Minute, "the kubelet collects the unpinned image", func() error {
		if present, _, _ := onNode(looseTag); present {
			return errors.New("still present")
		}
		return nil
	})
	if present, pinned, _ := onNode(pinnedDigest); !present || !pinned {
		t.Errorf("the pinned image after image GC: present %t, pinned %t", present, pinned)
	}
	if present, _, _ := onNode(pinnedTag); !present {
		t.Errorf("the pinned image's tag was collected")
	}
}

// TestAgentMeasuresTheImageFilesystemAndListensOnItsOwnAddress: through
// the one host directory it mounts of the runtime's root (the image
// filesystem the runtime reports), the agent measures that filesystem's
// capacity, and the doctor passes it; its metrics answer on the node's
// address and not on the host's loopback.
func TestAgentMeasuresTheImageFilesystemAndListensOnItsOwnAddress(t *testing.T) {
	n, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ip string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
		}
	}
	if ip == "" || ip == "127.0.0.1" {
		t.Fatalf("node %s: internal address %q, want one beside loopback", n.Name, ip)
	}
	// The agent writes its node's status once a list names the node.
	tag, _ := push(t, "e2e/measured:1.0", 1<<20)
	l := applyList(t, "measured", nil, tag)
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l)
	testground.Eventually(t, time.Minute, "the image filesystem measured and checked", func() error {
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: c.NodeName}, set); err != nil {
			return err
		}
		fs := set.Status.ImageFilesystem
		if fs == nil || fs.CapacityBytes == 0 {
			return fmt.Errorf("image filesystem %+v: no capacity", fs)
		}
		for _, ch := range set.Status.Checks {
			if ch.Name == doctor.CheckImageFilesystem && ch.Result != prepullv1.CheckPass {
				return fmt.Errorf("doctor: %s %s: %s", ch.Name, ch.Result, ch.Message)
			}
		}
		return nil
	})
	get := func(host string) error {
		hc := &http.Client{Timeout: 5 * time.Second}
		resp, err := hc.Get("http://" + net.JoinHostPort(host, "8083") + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "prepull_") {
			return fmt.Errorf("%s: %d", host, resp.StatusCode)
		}
		return nil
	}
	if err := get(ip); err != nil {
		t.Errorf("the agent's metrics on the node's address: %v", err)
	}
	if err := get("127.0.0.1"); err == nil {
		t.Errorf("the agent's metrics answer on the host's loopback: want them on the node's address only")
	}
}
