//go:build e2e

package multinode

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
)

// BenchmarkAlwaysVerifyPodStart: on a node whose kubelet runs
// imagePullCredentialsVerificationPolicy AlwaysVerify, the registry (with
// authentication) behind a 100 Mbit/s link, private images of 50 MiB: the
// start of pods presenting the Secret on images prepull pre-pulled (two
// pods of each, one after the other), on an image the kubelet pulled
// earlier with that Secret, and on one absent (a cold pull), with the
// manifest requests the registry answered for each kind. Pod start is
// creation to Running, watched.
func BenchmarkAlwaysVerifyPodStart(b *testing.B) {
	const images, pods, size = 5, 5, 50 << 20
	var repos []string
	for i := range images {
		repos = append(repos, fmt.Sprintf("private/prepulled-%d:1", i))
	}
	v := startVerifyingNode(b, size, append(repos, "private/kubelet:1", "private/cold:1")...)
	host := v.front.Host
	var refs []string
	for _, r := range repos {
		refs = append(refs, host+"/"+r)
	}
	listTook := v.prePull(b, refs...)
	kubeletPull := v.podStart(b, "bench-kubelet-pull", host+"/private/kubelet:1", true)
	deletePod("bench-kubelet-pull")

	// start starts a pod of image and returns its start, adding the
	// manifest requests the registry answered meanwhile to *asked.
	start := func(name, image string, asked *int) time.Duration {
		before := v.front.Manifests()
		took := v.podStart(b, name, image, true)
		*asked += v.front.Manifests() - before
		deletePod(name)
		return took
	}
	served := v.front.Blobs()
	var first, again, kubelet []time.Duration
	var firstAsked, againAsked, kubeletAsked, coldAsked int
	for i, ref := range refs {
		first = append(first, start(fmt.Sprintf("bench-verified-%d", i), ref, &firstAsked))
		again = append(again, start(fmt.Sprintf("bench-recorded-%d", i), ref, &againAsked))
	}
	if blobs := v.front.Blobs(); !maps.Equal(blobs, served) {
		b.Errorf("the registry served blobs for pods of pre-pulled images: %v, before %v", blobs, served)
	}
	for i := range pods {
		kubelet = append(kubelet, start(fmt.Sprintf("bench-kubelet-%d", i), host+"/private/kubelet:1", &kubeletAsked))
	}
	cold := start("bench-cold", host+"/private/cold:1", &coldAsked)

	median := func(d []time.Duration) time.Duration { return slices.Sorted(slices.Values(d))[len(d)/2] }
	ms := func(d []time.Duration) string {
		var out []string
		for _, x := range d {
			out = append(out, fmt.Sprint(x.Milliseconds()))
		}
		return fmt.Sprint(out)
	}
	fmt.Printf("\npod start under AlwaysVerify, %d MiB private images, registry behind 100 Mbit/s (the list of %d images Ready in %.1f s; the kubelet's own pull took %.1f s):\n",
		size>>20, images, listTook.Seconds(), kubeletPull.Seconds())
	fmt.Printf("  pre-pulled, first pod:          median %5d ms of %s; %d manifest requests for %d pods\n", median(first).Milliseconds(), ms(first), firstAsked, len(first))
	fmt.Printf("  pre-pulled, second pod:         median %5d ms of %s; %d manifest requests for %d pods\n", median(again).Milliseconds(), ms(again), againAsked, len(again))
	fmt.Printf("  pulled earlier by the kubelet:  median %5d ms of %s; %d manifest requests for %d pods\n", median(kubelet).Milliseconds(), ms(kubelet), kubeletAsked, len(kubelet))
	fmt.Printf("  absent, a cold pull:                   %5d ms; %d manifest requests\n", cold.Milliseconds(), coldAsked)
	b.ReportMetric(float64(median(first))/float64(median(kubelet)), "verified/kubelet-pulled")
	b.ReportMetric(float64(median(again))/float64(median(kubelet)), "recorded/kubelet-pulled")
	b.ReportMetric(float64(cold)/float64(median(first)), "cold/verified")
}
