//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// TestWorkloadImagesStartWithoutARegistry: a list discovers a Deployment's
// image while the Deployment has no replica. With the registry stopped, the
// Deployment scales to 2 and its IfNotPresent pods start. The registry back,
// the Deployment's image changes (its rollout paused): the list shows the
// new image Present on the node without anyone touching the list; the
// registry stopped again, the rollout resumes and its pods run the new
// image.
func TestWorkloadImagesStartWithoutARegistry(t *testing.T) {
	v1, _ := push(t, "e2e/discovered:1.0", 4<<20)
	v2, _ := push(t, "e2e/discovered:2.0", 4<<20)
	d := deployment("discovered", v1)
	d.Labels = map[string]string{"group": "discovered"}
	d.Spec.Replicas = ptr.To(int32(0))
	if err := cl.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(ctx, d) })
	l := applyList(t, "discovered", func(l *prepullv1.PrePullList) {
		l.Spec.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": "discovered"}}}
	})
	t.Cleanup(func() { deleteList(t, l) })
	present := func(image string) {
		t.Helper()
		testground.Eventually(t, 3*time.Minute, image+" Present on the node", func() error {
			got := &prepullv1.PrePullList{}
			if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
				return err
			}
			for _, img := range got.Status.Images {
				if img.Image == image && img.NodesReady == 1 {
					return nil
				}
			}
			return fmt.Errorf("images %+v", got.Status.Images)
		})
	}
	present(v1)

	edit := func(change func(*corev1.PodTemplateSpec, *bool, *int32)) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := cl.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				return err
			}
			change(&d.Spec.Template, &d.Spec.Paused, d.Spec.Replicas)
			return cl.Update(ctx, d)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	running := func(image string) {
		t.Helper()
		testground.Eventually(t, 3*time.Minute, "2 pods Running "+image, func() error {
			var pods corev1.PodList
			if err := cl.List(ctx, &pods, client.InNamespace("e2e"), client.MatchingLabels{"app": "discovered"}); err != nil {
				return err
			}
			n := 0
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Spec.Containers[0].Image == image {
					n++
				} else if p.DeletionTimestamp == nil {
					return fmt.Errorf("pod %s: %s, image %s", p.Name, p.Status.Phase, p.Spec.Containers[0].Image)
				}
			}
			if n != 2 {
				return fmt.Errorf("%d pods running %s", n, image)
			}
			return nil
		})
	}

	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	edit(func(_ *corev1.PodTemplateSpec, _ *bool, replicas *int32) { *replicas = 2 })
	running(v1)
	if err := c.StartRegistry(ctx); err != nil {
		t.Fatal(err)
	}
	edit(func(tpl *corev1.PodTemplateSpec, paused *bool, _ *int32) {
		*paused = true
		tpl.Spec.Containers[0].Image = v2
	})
	present(v2)
	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	edit(func(_ *corev1.PodTemplateSpec, paused *bool, _ *int32) { *paused = false })
	running(v2)
}
