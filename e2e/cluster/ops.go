package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// Start brings the cluster up, pushes its pause image, waits until node 1
// is Ready, and then adds nodes up to Nodes, each Ready.
func (c *Cluster) Start(ctx context.Context, logf func(string, ...any)) error {
	start := time.Now()
	if err := c.Up(ctx, logf); err != nil {
		return err
	}
	if _, err := c.PushWorkload(PauseImage, 0); err != nil {
		return err
	}
	cs, _, err := c.Clients()
	if err != nil {
		return err
	}
	if err := WaitNodeReady(ctx, cs, c.NodeName, 2*time.Minute); err != nil {
		return c.withLog(c.withLog(err, "containerd"), "kubelet")
	}
	logf("node %s Ready %s after start; kubeconfig: %s", c.NodeName, time.Since(start).Round(time.Millisecond), c.Kubeconfig())
	for len(c.RunningNodes()) < c.Nodes {
		n, err := c.AddNode(ctx, cs)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		logf("node %s (%s) Ready %s after start", n.Name, n.IP, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// Clients are clients of the cluster as its admin.
func (c *Cluster) Clients() (*kubernetes.Clientset, client.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	scheme := testground.Scheme()
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	return cs, cl, err
}

// WaitNodeReady waits for a Ready condition with a heartbeat newer than the
// wait itself: after a restart, a stale Ready status lies.
func WaitNodeReady(ctx context.Context, cs *kubernetes.Clientset, name string, timeout time.Duration) error {
	since := time.Now().Add(-time.Second)
	last := "the node was never read"
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if ctx.Err() == nil {
				// Not the wait's own end: that would hide what was seen.
				last = err.Error()
			}
			return false, nil
		}
		last = "no Ready condition"
		for _, cond := range n.Status.Conditions {
			if cond.Type != corev1.NodeReady {
				continue
			}
			if cond.Status == corev1.ConditionTrue && cond.LastHeartbeatTime.After(since) {
				return true, nil
			}
			last = fmt.Sprintf("Ready=%s (%s: %s), last heartbeat %s", cond.Status, cond.Reason, cond.Message, cond.LastHeartbeatTime.Format(time.RFC3339))
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready after %s: %s", name, timeout, last)
	}
	return nil
}

// Kubectl runs the built kubectl against the cluster.
func (c *Cluster) Kubectl(args ...string) error { return c.tool("kubectl", args...) }

// tool runs a built client (kubectl, helm) against the cluster.
func (c *Cluster) tool(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(c.Bin, name), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// WaitPodRunning creates pod and watches it to Running, returning the time
// from creation to Running with millisecond precision.
func WaitPodRunning(ctx context.Context, cs *kubernetes.Clientset, pod *corev1.Pod, timeout time.Duration) (time.Duration, error) {
	pods := cs.CoreV1().Pods(pod.Namespace)
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String()})
	if err != nil {
		return 0, err
	}
	defer w.Stop()
	start := time.Now()
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-w.ResultChan():
			if ev.Type == watch.Error {
				return 0, apierrors.FromObject(ev.Object)
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if p.Status.Phase == corev1.PodRunning {
				return time.Since(start), nil
			}
			for _, s := range p.Status.ContainerStatuses {
				if w := s.State.Waiting; w != nil && (w.Reason == "ErrImageNeverPull" || w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
					return 0, fmt.Errorf("pod %s: %s: %s", p.Name, w.Reason, w.Message)
				}
			}
		case <-deadline:
			return 0, fmt.Errorf("pod %s not Running after %s", pod.Name, timeout)
		}
	}
}

// PrepullImage is where the demo pushes the prepull image; the overlay in
// hack/cluster/overlay names it.
const PrepullImage = RegistryHost + "/prepull/prepull:dev"

// PushPrepull builds the prepull image from the built binary, without a
// Docker engine, and pushes it to the cluster's registry: the binary alone,
// as the Dockerfile's image (it carries its own CA roots).
func (c *Cluster) PushPrepull() error {
	bin, err := os.ReadFile(filepath.Join(c.Bin, "prepull"))
	if err != nil {
		return fmt.Errorf("read the prepull binary (make build): %w", err)
	}
	files := []testground.File{{Path: "prepull", Mode: 0o755, Data: bin}}
	img, err := testground.Image(platform(), []string{"/prepull"}, files)
	if err != nil {
		return err
	}
	_, err = testground.Push(PrepullImage, img)
	return err
}

// Deploy installs prepull on the cluster, the way how says, and waits until
// the agent and the controller are ready.
func (c *Cluster) Deploy(ctx context.Context, cs *kubernetes.Clientset, how Install) error {
	if err := c.PushPrepull(); err != nil {
		return err
	}
	switch how {
	case Kustomize:
		// The CRDs first, established, so that the base's default
		// PrePullPolicy has its kind when the rest is applied.
		crds := filepath.Join(c.Root, "deploy", "crd")
		if err := c.Kubectl("apply", "--server-side", "-f", crds); err != nil {
			return fmt.Errorf("kubectl apply -f %s: %w", crds, err)
		}
		if err := c.Kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds); err != nil {
			return fmt.Errorf("kubectl wait for the CRDs: %w", err)
		}
		overlay := filepath.Join(c.Root, "hack", "cluster", "overlay")
		if err := c.Kubectl("apply", "--server-side", "-k", overlay); err != nil {
			return fmt.Errorf("kubectl apply -k %s: %w", overlay, err)
		}
	case Helm:
		chart, values := filepath.Join(c.Root, "deploy", "chart", "prepull"), filepath.Join(c.Root, "hack", "cluster", "values.yaml")
		if err := c.tool("helm", "upgrade", "--install", "prepull", chart, "--values", values); err != nil {
			return fmt.Errorf("helm upgrade --install prepull %s --values %s: %w", chart, values, err)
		}
	default:
		return fmt.Errorf("install %q: must be %s or %s", how, Kustomize, Helm)
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		ds, err1 := cs.AppsV1().DaemonSets("prepull-system").Get(ctx, "prepull-agent", metav1.GetOptions{})
		dep, err2 := cs.AppsV1().Deployments("prepull-system").Get(ctx, "prepull-controller", metav1.GetOptions{})
		return err1 == nil && err2 == nil && ds.Status.DesiredNumberScheduled > 0 && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled && dep.Status.ReadyReplicas >= 1, nil
	}); err != nil {
		return errors.New("prepull's agent and controller not ready after 3m: kubectl -n prepull-system get pods,events")
	}
	return nil
}

// WaitListReady waits until the list is Ready with at least one node
// selected.
func WaitListReady(ctx context.Context, cl client.Client, l *prepullv1.PrePullList, timeout time.Duration) error {
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		got := &prepullv1.PrePullList{}
		err := cl.Get(ctx, client.ObjectKeyFromObject(l), got)
		return err == nil && meta.IsStatusConditionTrue(got.Status.Conditions, prepullv1.ConditionReady) && got.Status.Nodes.Selected > 0, nil
	}); err != nil {
		return fmt.Errorf("PrePullList %s/%s not Ready after %s: kubectl get ppl -A -o yaml", l.Namespace, l.Name, timeout)
	}
	return nil
}

// DeleteList deletes l and waits until it is gone: released by every node's
// agent and its finalizer removed.
func DeleteList(ctx context.Context, cl client.Client, l *prepullv1.PrePullList, timeout time.Duration) error {
	if err := cl.Delete(ctx, l); err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		return apierrors.IsNotFound(cl.Get(ctx, client.ObjectKeyFromObject(l), &prepullv1.PrePullList{})), nil
	}); err != nil {
		return fmt.Errorf("PrePullList %s/%s still there %s after its deletion: kubectl get ppl -A -o yaml", l.Namespace, l.Name, timeout)
	}
	return nil
}

// WaitServiceAccount waits for the default service account of ns, which pods
// need.
func WaitServiceAccount(ctx context.Context, cs *kubernetes.Clientset, ns string) error {
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("no default service account in %s after a minute", ns)
	}
	return nil
}

// WaitPodGone waits, for at most 30 s, until the pod is gone.
func WaitPodGone(ctx context.Context, cs *kubernetes.Clientset, ns, name string) {
	_ = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err != nil, nil
	})
}

// StartRegistry starts the cluster's registry, at Up or again after Stop,
// on the same storage, and waits until it answers.
func (c *Cluster) StartRegistry(ctx context.Context) error {
	if err := c.start("registry", c.lookPath("docker-registry"), "serve", c.path("registry", "config.yml")); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "registry", "http://"+RegistryHost+"/v2/", 60*time.Second); err != nil {
		return c.withLog(err, "registry")
	}
	return nil
}

// RestartKubelet stops the kubelet, appends extra to its configuration, and
// starts it again; it returns once the node reports Ready with a fresh
// heartbeat.
func (c *Cluster) RestartKubelet(ctx context.Context, cs *kubernetes.Clientset, extra string) error {
	if err := c.Stop("kubelet"); err != nil {
		return err
	}
	f, err := os.OpenFile(c.path("kubelet", "config.yaml"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(extra); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if err := c.startKubelet(); err != nil {
		return err
	}
	return WaitNodeReady(ctx, cs, c.NodeName, 2*time.Minute)
}

// Reregister makes the node join the cluster afresh, as a new node of a
// scaling pool does: the kubelet stops, the Node object is deleted (its
// NodeImageSet goes with it), away runs while no node exists, and the
// kubelet starts again and registers with the startup taint key
// (registerWithTaints, NoSchedule). It returns once the new Node exists.
func (c *Cluster) Reregister(ctx context.Context, cs *kubernetes.Clientset, taint string, away func() error) error {
	if err := c.Stop("kubelet"); err != nil {
		return err
	}
	if err := cs.CoreV1().Nodes().Delete(ctx, c.NodeName, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", c.NodeName, err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return fmt.Errorf("node %s not gone after a minute", c.NodeName)
	}
	if err := away(); err != nil {
		return err
	}
	cfg := c.path("kubelet", "config.yaml")
	data, err := os.ReadFile(cfg)
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), "registerWithTaints:") {
		data = append(data, fmt.Sprintf("registerWithTaints:\n- key: %s\n  effect: NoSchedule\n", taint)...)
		if err := os.WriteFile(cfg, data, 0o600); err != nil {
			return err
		}
	}
	if err := c.startKubelet(); err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return c.withLog(fmt.Errorf("node %s did not register again within 2 minutes", c.NodeName), "kubelet")
	}
	return nil
}

// platform is this machine's, the node's.
func platform() v1.Platform { return testground.Linux(goruntime.GOARCH) }

// PushWorkload pushes to ref an image that runs the pause program, with a
// layer of payload random bytes when payload > 0, so that it weighs what a
// real workload's image weighs; it returns the digest reference.
func (c *Cluster) PushWorkload(ref string, payload int) (string, error) {
	img, err := c.Workload(payload)
	if err != nil {
		return "", err
	}
	return testground.Push(ref, img)
}

// Workload is the runnable image PushWorkload pushes, for a registry of
// the test's own.
func (c *Cluster) Workload(payload int) (v1.Image, error) {
	if c.pauseBin == nil {
		bin, err := BuildPause(c.Root)
		if err != nil {
			return nil, err
		}
		c.pauseBin = bin
	}
	layers := [][]testground.File{{{Path: "pause", Mode: 0o755, Data: c.pauseBin}}}
	if payload > 0 {
		layers = append(layers, []testground.File{{Path: "payload.bin", Mode: 0o644, Data: testground.RandomBytes(payload)}})
	}
	return testground.Image(platform(), []string{"/pause"}, layers...)
}
