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
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/cluster"
)

func clientcmdScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = prepullv1.AddToScheme(s)
	return s
}

// PrepullImage is where the demo pushes the prepull image; the overlay in
// hack/cluster/overlay names it.
const PrepullImage = cluster.RegistryHost + "/prepull/prepull:dev"

// pushPrepull builds the prepull image from the built binary, without a
// Docker engine, and pushes it to the cluster's registry.
func pushPrepull(c *cluster.Cluster) error {
	bin, err := os.ReadFile(filepath.Join(c.Bin, "prepull"))
	if err != nil {
		return fmt.Errorf("read the prepull binary (make build): %w", err)
	}
	files := []cluster.File{{Path: "prepull", Mode: 0o755, Data: bin}}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		files = append(files, cluster.File{Path: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: ca})
	}
	img, err := cluster.Image([]string{"/prepull"}, files)
	if err != nil {
		return err
	}
	_, err = cluster.Push(PrepullImage, img)
	return err
}

// Deploy deploys prepull on the cluster and waits until the agent and the
// controller are ready.
func deploy(ctx context.Context, c *cluster.Cluster, cs *kubernetes.Clientset) error {
	if err := pushPrepull(c); err != nil {
		return err
	}
	if err := kubectl(c, "apply", "--server-side", "-k", "hack/cluster/overlay"); err != nil {
		return fmt.Errorf("kubectl apply -k hack/cluster/overlay: %w", err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		ds, err1 := cs.AppsV1().DaemonSets("prepull-system").Get(ctx, "prepull-agent", metav1.GetOptions{})
		dep, err2 := cs.AppsV1().Deployments("prepull-system").Get(ctx, "prepull-controller", metav1.GetOptions{})
		if err1 == nil && err2 == nil && ds.Status.DesiredNumberScheduled > 0 && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled && dep.Status.ReadyReplicas >= 1 {
			return nil
		}
		time.Sleep(time.Second)
	}
	return errors.New("prepull's agent and controller not ready after 3m: kubectl -n prepull-system get pods,events")
}

// demo shows the product's promise on the local cluster: images pre-pulled
// by a PrePullList, the registry stopped, and pods with imagePullPolicy
// Never and IfNotPresent starting all the same.
func demo(ctx context.Context, c *cluster.Cluster) error {
	if _, err := os.Stat(filepath.Join(c.Dir, "pids")); err != nil {
		logf("bringing up a single-node cluster in %s", c.Dir)
		if err := up(ctx, c); err != nil {
			return err
		}
	} else {
		logf("using the cluster already up in %s", c.Dir)
	}
	cs, cl, err := clients(c)
	if err != nil {
		return err
	}
	logf("building the prepull image (no Docker engine) and deploying prepull (kubectl apply -k hack/cluster/overlay)")
	if err := deploy(ctx, c, cs); err != nil {
		return err
	}
	logf("prepull's controller and agent are running")

	pause, err := cluster.BuildPause(".")
	if err != nil {
		return err
	}
	images := map[string]int{cluster.RegistryHost + "/demo/web:1.0": 96 << 20, cluster.RegistryHost + "/demo/worker:2.1": 48 << 20}
	for ref, size := range images {
		img, err := cluster.Image([]string{"/pause"},
			[]cluster.File{{Path: "pause", Mode: 0o755, Data: pause}},
			[]cluster.File{{Path: "payload.bin", Mode: 0o644, Data: cluster.RandomBytes(size)}})
		if err != nil {
			return err
		}
		if _, err := cluster.Push(ref, img); err != nil {
			return err
		}
		logf("pushed %s (%d MiB)", ref, size>>20)
	}

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil && !isExists(err) {
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
	if err := cl.Create(ctx, list); err != nil && !isExists(err) {
		return err
	}
	logf("applied PrePullList demo/shop with 2 images; waiting for Ready")
	if err := waitListReady(ctx, cl, list, 5*time.Minute); err != nil {
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

	if err := waitServiceAccount(ctx, cs, "demo"); err != nil {
		return err
	}
	for _, p := range []struct {
		name, image string
		policy      corev1.PullPolicy
	}{
		{"web-never", cluster.RegistryHost + "/demo/web:1.0", corev1.PullNever},
		{"worker-ifnotpresent", cluster.RegistryHost + "/demo/worker:2.1", corev1.PullIfNotPresent},
	} {
		_ = cs.CoreV1().Pods("demo").Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		waitGone(ctx, cs, "demo", p.name)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: p.name},
			Spec: corev1.PodSpec{
				Containers:                    []corev1.Container{{Name: "app", Image: p.image, ImagePullPolicy: p.policy}},
				TerminationGracePeriodSeconds: new(int64),
			},
		}
		d, err := waitPodRunning(ctx, cs, pod, 2*time.Minute)
		if err != nil {
			return err
		}
		logf("pod demo/%s (imagePullPolicy %s) Running %d ms after creation, with no registry", p.name, p.policy, d.Milliseconds())
	}
	fmt.Printf(`
The cluster stays up. Look around:
  %s/kubectl --kubeconfig %s get prepulllists -A
  %s/kubectl --kubeconfig %s get nodeimagesets -o yaml
Tear it all down: sudo make demo-down
`, c.Bin, c.Kubeconfig(), c.Bin, c.Kubeconfig())
	return nil
}

func isExists(err error) bool {
	return err != nil && metav1.StatusReasonAlreadyExists == reasonOf(err)
}

func reasonOf(err error) metav1.StatusReason {
	var s interface{ Status() metav1.Status }
	if errors.As(err, &s) {
		return s.Status().Reason
	}
	return ""
}

func waitListReady(ctx context.Context, cl client.Client, l *prepullv1.PrePullList, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err == nil {
			if meta.IsStatusConditionTrue(got.Status.Conditions, prepullv1.ConditionReady) && got.Status.Nodes.Selected > 0 {
				return nil
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("PrePullList %s/%s not Ready after %s: kubectl get ppl -A -o yaml", l.Namespace, l.Name, timeout)
}

func waitServiceAccount(ctx context.Context, cs *kubernetes.Clientset, ns string) error {
	for range 120 {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("no default service account in %s", ns)
}

func waitGone(ctx context.Context, cs *kubernetes.Clientset, ns, name string) {
	for range 60 {
		if _, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}
