//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageplan"
)

// TestTwoListsNamingOneTagRunOneDigest: a list names a tag and is Ready;
// the tag is pushed again with other bytes; a second list names the same
// tag. Both lists report the one digest the cluster resolved, the node's
// tag names it, and pods started from the tag for either list run it.
func TestTwoListsNamingOneTagRunOneDigest(t *testing.T) {
	tag, first := push(t, "e2e/shared:1.0", 1<<20)
	l1 := applyList(t, "shared-first", nil, tag)
	waitReady(t, l1)
	if _, moved := push(t, "e2e/shared:1.0", 1<<20); moved == first {
		t.Fatal("the second push has the same digest")
	}
	l2 := applyList(t, "shared-second", nil, tag)
	waitReady(t, l2)
	for _, l := range []*prepullv1.PrePullList{l1, l2} {
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			t.Fatal(err)
		}
		if d := got.Status.Images[0].Digest; d != digestPart(first) {
			t.Errorf("list %s reports %s, want the cluster's %s", l.Name, d, digestPart(first))
		}
	}
	_, _, tagID := onNode(tag)
	_, _, firstID := onNode(first)
	if tagID == "" || tagID != firstID {
		t.Fatalf("the node's tag names %q, want the resolved digest's image %q", tagID, firstID)
	}
	set := &prepullv1.NodeImageSet{}
	if err := cl.Get(ctx, client.ObjectKey{Name: c.NodeName}, set); err != nil {
		t.Fatal(err)
	}
	if err := imageplan.Expand(ctx, cl, set); err != nil {
		t.Fatal(err)
	}
	claims := 0
	for _, e := range set.Spec.Images {
		for _, o := range e.Owners {
			if !o.Releasing && len(o.Tags) > 0 && o.Tags[0] == tag {
				claims++
				if e.Image != first {
					t.Errorf("list %s is handed %s for the tag, want %s", o.List, e.Image, first)
				}
			}
		}
	}
	if claims != 2 {
		t.Errorf("%d owners claim the tag on the node, want the two lists on one entry", claims)
	}

	// A pod for each list's tag, IfNotPresent: both run the one digest.
	for _, name := range []string{"shared-a", "shared-b"} {
		runPod(t, name, tag, corev1.PullIfNotPresent)
		pod, err := cs.CoreV1().Pods("e2e").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		testground.Eventually(t, 30*time.Second, "pod "+name+" reports its image", func() error {
			pod, err = cs.CoreV1().Pods("e2e").Get(ctx, name, metav1.GetOptions{})
			if err != nil || len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].ImageID == "" {
				return fmt.Errorf("no image ID yet (%v)", err)
			}
			return nil
		})
		if got := pod.Status.ContainerStatuses[0].ImageID; !strings.HasSuffix(got, digestPart(first)) && got != firstID {
			t.Errorf("pod %s runs %s, want %s", name, got, digestPart(first))
		}
	}
	deleteList(t, l1)
	deleteList(t, l2)
}

func digestPart(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}
