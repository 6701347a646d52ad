package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
)

// demo shows the product's promise on the local cluster: images pre-pulled
// by a PrePullList, the registry stopped, and pods with imagePullPolicy
// Never and IfNotPresent starting all the same.
func demo(ctx context.Context, c *cluster.Cluster, how cluster.Install) error {
	if _, err := os.Stat(filepath.Join(c.Dir, "pids")); err != nil {
		logf("bringing up a cluster of %d node(s) in %s", c.Nodes, c.Dir)
		if err := c.Start(ctx, logf); err != nil {
			return err
		}
	} else {
		logf("using the cluster already up in %s", c.Dir)
	}
	cs, cl, err := c.Clients()
	if err != nil {
		return err
	}
	logf("building the prepull image (no Docker engine) and deploying prepull with %s", how)
	if err := c.Deploy(ctx, cs, how); err != nil {
		return err
	}
	logf("prepull's controller and agent are running")

	images := map[string]int{cluster.RegistryHost + "/demo/web:1.0": 96 << 20, cluster.RegistryHost + "/demo/worker:2.1": 48 << 20}
	for ref, size := range images {
		if _, err := c.PushWorkload(ref, size); err != nil {
			return err
		}
		logf("pushed %s (%d MiB)", ref, size>>20)
	}

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	list := &prepullv1.PrePullList{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "shop"},
		Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{
			{Image: cluster.RegistryHost + "/demo/web:1.0"},
			{Image: cluster.RegistryHost + "/demo/worker:2.1"},
		}},
	}
	start := time.Now()
	if err := cl.Create(ctx, list); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	logf("applied PrePullList demo/shop with 2 images; waiting for Ready")
	if err := cluster.WaitListReady(ctx, cl, list, 5*time.Minute); err != nil {
		return err
	}
	if err := cl.Get(ctx, client.ObjectKeyFromObject(list), list); err != nil {
		return err
	}
	logf("PrePullList Ready in %s: %s nodes", time.Since(start).Round(time.Millisecond), list.Status.ReadyNodes)
	for _, i := range list.Status.Images {
		logf("  %s -> %s", i.Image, i.Digest)
	}

	if err := c.Stop("registry"); err != nil {
		return err
	}
	if _, err := (&http.Client{Timeout: time.Second}).Get("http://" + cluster.RegistryHost + "/v2/"); err == nil {
		return errors.New("the registry still answers after it was stopped")
	}
	logf("stopped the registry: %s no longer answers", cluster.RegistryHost)

	if err := cluster.WaitServiceAccount(ctx, cs, "demo"); err != nil {
		return err
	}
	// On every node, one pod of each pull policy, bound to the node.
	for _, n := range c.RunningNodes() {
		for _, p := range []struct {
			name, image string
			policy      corev1.PullPolicy
		}{
			{"web-never", cluster.RegistryHost + "/demo/web:1.0", corev1.PullNever},
			{"worker-ifnotpresent", cluster.RegistryHost + "/demo/worker:2.1", corev1.PullIfNotPresent},
		} {
			name := fmt.Sprintf("%s-%d", p.name, n.Index)
			_ = cs.CoreV1().Pods("demo").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			cluster.WaitPodGone(ctx, cs, "demo", name)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
				Spec: corev1.PodSpec{
					NodeName:                      n.Name,
					Containers:                    []corev1.Container{{Name: "app", Image: p.image, ImagePullPolicy: p.policy}},
					TerminationGracePeriodSeconds: new(int64),
				},
			}
			d, err := cluster.WaitPodRunning(ctx, cs, pod, 2*time.Minute)
			if err != nil {
				return err
			}
			logf("pod demo/%s (imagePullPolicy %s) on %s Running %d ms after creation, with no registry", name, p.policy, n.Name, d.Milliseconds())
		}
	}
	fmt.Printf(`
The cluster stays up. Look around:
  %s/kubectl --kubeconfig %s get prepulllists -A
  %s/kubectl --kubeconfig %s get nodeimagesets -o yaml
Tear it all down (as root): make demo-down
`, c.Bin, c.Kubeconfig(), c.Bin, c.Kubeconfig())
	return nil
}
