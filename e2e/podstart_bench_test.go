//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
)

// The shaped link: a network namespace of the benchmark's own, joined to the
// host by a veth pair whose two ends each cap the rate with a token bucket
// (tc tbf), with a registry inside. (This machine's kernel has no netem, so
// the link adds no delay of its own.)
var shaped = link{ns: "prepull-bench", host: "pp-bench0", peer: "pp-bench1", hostIP: "192.168.231.1", peerIP: "192.168.231.2"}

const linkRate = "100mbit"

// shapedRegistry serves the cluster registry's storage from inside the
// shaped namespace, at linkRate, and returns its host:port.
func shapedRegistry(b *testing.B) string { return shapedRegistryAt(b, linkRate) }

// shapedRegistryAt is shapedRegistry at another rate (tc's units, "24mbit").
func shapedRegistryAt(t testing.TB, rate string) string {
	shaped.up(t)
	tbf := []string{"root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"}
	sh(t, append([]string{"tc", "qdisc", "add", "dev", shaped.host}, tbf...)...)
	sh(t, append([]string{"ip", "netns", "exec", shaped.ns, "tc", "qdisc", "add", "dev", shaped.peer}, tbf...)...)
	return shaped.registry(t, filepath.Join(c.Dir, "registry", "data"))
}

// BenchmarkPodStart measures pod start latency, creation to Running, for an
// image pre-pulled by prepull, an absent image (a cold pull over the shaped
// link), and an image the kubelet itself pulled earlier.
func BenchmarkPodStart(b *testing.B) {
	const size = 150 << 20
	var refs [3]string
	for i, name := range []string{"prepulled", "cold", "kubelet"} {
		tag, _ := push(b, fmt.Sprintf("podstart/%s:1.0", name), size)
		refs[i] = tag
	}
	via := shapedRegistry(b)
	for i := range refs {
		refs[i] = strings.Replace(refs[i], cluster.RegistryHost, via, 1)
	}
	prepulled, cold, kubelet := refs[0], refs[1], refs[2]

	start := time.Now()
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "podstart"},
		Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: prepulled}}}}
	if err := cl.Create(ctx, l); err != nil {
		b.Fatal(err)
	}
	if err := cluster.WaitListReady(ctx, cl, l, 10*time.Minute); err != nil {
		b.Fatal(err)
	}
	prepullTime := time.Since(start)
	warm := podStart(b, "warmup", kubelet)
	deletePod(b, "warmup")

	// Pre-pulled and kubelet-pulled alternate, five pods each, and their
	// medians are compared: one pod start is noisy on a shared machine.
	b.ResetTimer()
	var pre, kub []time.Duration
	for i := range 5 {
		pre = append(pre, podStart(b, fmt.Sprintf("prepulled-%d", i), prepulled))
		kub = append(kub, podStart(b, fmt.Sprintf("kubelet-pulled-%d", i), kubelet))
		deletePod(b, fmt.Sprintf("prepulled-%d", i))
		deletePod(b, fmt.Sprintf("kubelet-pulled-%d", i))
	}
	tCold := podStart(b, "cold", cold)
	b.StopTimer()
	tPre, tKubelet := testground.Median(pre), testground.Median(kub)

	b.ReportMetric(float64(tCold)/float64(tPre), "cold/prepulled")
	b.ReportMetric(float64(tPre)/float64(tKubelet), "prepulled/kubelet-pulled")
	fmt.Printf("\npod start, creation to Running (watched), %d MiB image, registry behind a %s veth (tc tbf both ways):\n", size>>20, linkRate)
	fmt.Printf("  pre-pulled by prepull:            %6d ms  median of %v (the list was Ready %s after it was applied)\n", tPre.Milliseconds(), testground.Millis(pre), prepullTime.Round(time.Millisecond))
	fmt.Printf("  pulled earlier by the kubelet:    %6d ms  median of %v (the pod that pulled it took %d ms)\n", tKubelet.Milliseconds(), testground.Millis(kub), warm.Milliseconds())
	fmt.Printf("  absent (cold pull):               %6d ms\n", tCold.Milliseconds())
	fmt.Printf("  cold / pre-pulled:                %6.1fx\n", float64(tCold)/float64(tPre))
	fmt.Printf("  pre-pulled / kubelet-pulled:      %6.3f\n", float64(tPre)/float64(tKubelet))
}

func podStart(b *testing.B, name, image string) time.Duration {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	d, err := cluster.WaitPodRunning(ctx, cs, pod, 10*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { deletePod(b, name) })
	return d
}

func deletePod(b *testing.B, name string) {
	_ = cs.CoreV1().Pods("e2e").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	cluster.WaitPodGone(ctx, cs, "e2e", name)
}

// BenchmarkImageVolumePodStart measures the start of a pod that mounts an
// image volume (model weights, KEP-4639), creation to Running, when prepull
// pre-pulled the volume's image and when the kubelet must pull it over the
// shaped link; the pod's own image is pre-pulled in both.
func BenchmarkImageVolumePodStart(b *testing.B) {
	const part = 75 << 20
	reader, _ := push(b, "podstart/reader:1.0", 0)
	prepulled, size := weights(b, "podstart/weights-prepulled:1.0", part)
	cold, _ := weights(b, "podstart/weights-cold:1.0", part)
	via := shapedRegistry(b)
	for _, ref := range []*string{&reader, &prepulled, &cold} {
		*ref = strings.Replace(*ref, cluster.RegistryHost, via, 1)
	}
	start := time.Now()
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "volume-podstart"},
		Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: reader}, {Image: prepulled}}}}
	if err := cl.Create(ctx, l); err != nil {
		b.Fatal(err)
	}
	if err := cluster.WaitListReady(ctx, cl, l, 10*time.Minute); err != nil {
		b.Fatal(err)
	}
	prepullTime := time.Since(start)
	volumePod := func(name, volume string) time.Duration {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: name}, Spec: readerSpec(reader, volume)}
		d, err := cluster.WaitPodRunning(ctx, cs, pod, 10*time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { deletePod(b, name) })
		return d
	}
	b.ResetTimer()
	var pre []time.Duration
	for i := range 5 {
		pre = append(pre, volumePod(fmt.Sprintf("volume-prepulled-%d", i), prepulled))
		deletePod(b, fmt.Sprintf("volume-prepulled-%d", i))
	}
	tCold := volumePod("volume-cold", cold)
	b.StopTimer()
	tPre := testground.Median(pre)
	b.ReportMetric(float64(tCold)/float64(tPre), "cold/prepulled")
	fmt.Printf("\npod start with an image volume, creation to Running (watched), %d MiB of weights, registry behind a %s veth (tc tbf both ways):\n", size>>20, linkRate)
	fmt.Printf("  volume pre-pulled by prepull:     %6d ms  median of %v (the list was Ready %s after it was applied)\n", tPre.Milliseconds(), testground.Millis(pre), prepullTime.Round(time.Millisecond))
	fmt.Printf("  volume absent (the kubelet pulls): %6d ms\n", tCold.Milliseconds())
	fmt.Printf("  cold / pre-pulled:                %6.1fx\n", float64(tCold)/float64(tPre))
}
