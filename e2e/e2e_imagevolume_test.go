//go:build e2e

package e2e

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
)

// weights pushes an image holding only files (no program): what an image
// volume mounts, model weights in two parts of part bytes each.
func weights(t testing.TB, repoTag string, part int) (string, int64) {
	t.Helper()
	files := []testground.File{
		{Path: "weights/part-0.bin", Mode: 0o644, Data: testground.RandomBytes(part)},
		{Path: "weights/part-1.bin", Mode: 0o644, Data: testground.RandomBytes(part)},
		{Path: "config.json", Mode: 0o644, Data: []byte(`{"model":"e2e"}`)},
	}
	var size int64
	for _, f := range files {
		size += int64(len(f.Data))
	}
	img, err := testground.Image(testground.Linux(runtime.GOARCH), nil, files)
	if err != nil {
		t.Fatal(err)
	}
	ref := cluster.RegistryHost + "/" + repoTag
	if _, err := testground.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref, size
}

// readerPod is a pod of the reader image that mounts volume at /models and
// reads every file there.
func readerSpec(reader, volume string) corev1.PodSpec {
	return corev1.PodSpec{
		Containers: []corev1.Container{{Name: "reader", Image: reader, ImagePullPolicy: corev1.PullIfNotPresent,
			Env:          []corev1.EnvVar{{Name: "READ_DIR", Value: "/models"}},
			VolumeMounts: []corev1.VolumeMount{{Name: "models", MountPath: "/models", ReadOnly: true}}}},
		Volumes: []corev1.Volume{{Name: "models", VolumeSource: corev1.VolumeSource{
			Image: &corev1.ImageVolumeSource{Reference: volume, PullPolicy: corev1.PullIfNotPresent}}}},
		TerminationGracePeriodSeconds: new(int64),
	}
}

// readsAll waits until pod's log says it read files files and bytes bytes.
func readsAll(t *testing.T, pod string, files int, bytes int64) {
	t.Helper()
	want := fmt.Sprintf("read %d files, %d bytes under /models (error: <nil>)", files, bytes)
	testground.Eventually(t, 2*time.Minute, pod+" read the image volume", func() error {
		logs, err := cs.CoreV1().Pods("e2e").GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return err
		}
		if !strings.Contains(string(logs), want) {
			return fmt.Errorf("log %q, want %q", logs, want)
		}
		return nil
	})
}

// TestImageVolumesArePrePulledAndStartWithoutARegistry: on the real kubelet
// (image volumes on), a Deployment whose pod mounts an image of files as an
// image volume (KEP-4639) is discovered; its volume's image is pre-pulled
// and pinned like a container's; with the registry stopped, the Deployment
// scales up and its pod starts and reads every file. The same for a list
// naming the volume's image directly, and a pod made after the registry
// stopped.
func TestImageVolumesArePrePulledAndStartWithoutARegistry(t *testing.T) {
	reader, _ := push(t, "e2e/reader:1", 0)
	discovered, size := weights(t, "e2e/weights:1", 3<<20)
	named, _ := weights(t, "e2e/weights:2", 3<<20)
	labels := map[string]string{"app": "model"}
	d := deployment("model", reader)
	d.Labels = map[string]string{"group": "model"}
	d.Spec.Replicas = ptr.To(int32(0))
	d.Spec.Template.Spec = readerSpec(reader, discovered)
	d.Spec.Template.Labels, d.Spec.Selector.MatchLabels = labels, labels
	if err := cl.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(ctx, d) })
	byWorkloads := applyList(t, "model", func(l *prepullv1.PrePullList) {
		l.Spec.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": "model"}}}
	})
	t.Cleanup(func() { deleteList(t, byWorkloads) })
	byName := applyList(t, "weights", nil, named)
	t.Cleanup(func() { deleteList(t, byName) })
	for _, l := range []*prepullv1.PrePullList{byWorkloads, byName} {
		waitReady(t, l)
	}
	for _, ref := range []string{discovered, named} {
		if present, pinned, _ := onNode(ref); !present || !pinned {
			t.Errorf("the volume's image %s: present %t, pinned %t", ref, present, pinned)
		}
	}

	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	if err := cl.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
		t.Fatal(err)
	}
	d.Spec.Replicas = ptr.To(int32(1))
	if err := cl.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	var pod string
	testground.Eventually(t, 2*time.Minute, "the Deployment's pod Running", func() error {
		p := podOf(t, "model")
		if p == nil || p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod %+v", p)
		}
		pod = p.Name
		return nil
	})
	readsAll(t, pod, 3, size)

	direct := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "named-weights"}, Spec: readerSpec(reader, named)}
	if _, err := cluster.WaitPodRunning(ctx, cs, direct, 2*time.Minute); err != nil {
		t.Fatalf("a pod of the named volume image, the registry stopped: %v", err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods("e2e").Delete(ctx, direct.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		cluster.WaitPodGone(ctx, cs, "e2e", direct.Name)
	})
	readsAll(t, direct.Name, 3, size)
}

// TestAnOCIArtifactIsPrePulled: an OCI artifact (an image manifest with an
// artifactType and the empty config: no platform, no program), named by a
// list, is made present and pinned by the agent's CRI pull, as the kubelet
// sees it ("already present on machine"). containerd 2.4 does not mount
// such an artifact as an image volume whoever pulled it ("failed to unpack
// image volume: mismatched image rootfs and manifest layers": its config
// has no rootfs), so an image volume needs an image-shaped artifact (a
// config with its layers' rootfs), as the test above mounts.
func TestAnOCIArtifactIsPrePulled(t *testing.T) {
	files := []testground.File{
		{Path: "weights/part-0.bin", Mode: 0o644, Data: testground.RandomBytes(4 << 20)},
		{Path: "tokenizer.json", Mode: 0o644, Data: []byte(`{"vocab":1}`)},
	}
	art, err := testground.Artifact("application/vnd.example.model.v1", files)
	if err != nil {
		t.Fatal(err)
	}
	ref := cluster.RegistryHost + "/e2e/model-artifact:1"
	if _, err := testground.Push(ref, art); err != nil {
		t.Fatal(err)
	}
	l := applyList(t, "artifact", nil, ref)
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l)
	if present, pinned, _ := onNode(ref); !present || !pinned {
		t.Errorf("the artifact %s: present %t, pinned %t", ref, present, pinned)
	}
}
