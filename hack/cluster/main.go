// Command cluster runs prepull's local cluster (package e2e/cluster) and its
// demo:
//
//	go run ./hack/cluster up      # a single-node cluster from the built binaries
//	go run ./hack/cluster demo    # up, deploy prepull, pre-pull, stop the registry, start pods
//	go run ./hack/cluster down    # stop everything and restore the machine
//
// make demo and make demo-down call it as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"prepull.io/prepull/e2e/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	dir := fs.String("dir", "/var/lib/prepull-cluster", "the cluster's directory (the overlay in hack/cluster/overlay names paths in it)")
	bin := fs.String("bin", "bin", "directory of the built binaries")
	node := fs.String("node", "prepull-node", "the node's name")
	if len(os.Args) < 2 {
		return errors.New("usage: cluster up|down|demo [flags]")
	}
	if err := fs.Parse(os.Args[2:]); err != nil {
		return err
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	c := cluster.New(*dir, binDir, *node)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "up":
		return up(ctx, c)
	case "down":
		if err := c.Down(logf); err != nil {
			return err
		}
		logf("cluster in %s is down; the machine is as it was", c.Dir)
		return nil
	case "demo":
		return demo(ctx, c)
	}
	return fmt.Errorf("unknown command %q: want up, down or demo", os.Args[1])
}

func logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// up brings the cluster up, pushes its pause image and waits for the node.
func up(ctx context.Context, c *cluster.Cluster) error {
	start := time.Now()
	if err := c.Up(ctx, logf); err != nil {
		return err
	}
	pause, err := cluster.BuildPause(".")
	if err != nil {
		return err
	}
	img, err := cluster.Image([]string{"/pause"}, []cluster.File{{Path: "pause", Mode: 0o755, Data: pause}})
	if err != nil {
		return err
	}
	if _, err := cluster.Push(cluster.PauseImage, img); err != nil {
		return err
	}
	cs, _, err := clients(c)
	if err != nil {
		return err
	}
	if err := waitNodeReady(ctx, cs, c.NodeName, 2*time.Minute); err != nil {
		return err
	}
	logf("node %s Ready %s after start; kubeconfig: %s", c.NodeName, time.Since(start).Round(time.Millisecond), c.Kubeconfig())
	return nil
}

func clients(c *cluster.Cluster) (*kubernetes.Clientset, client.Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	scheme := clientcmdScheme()
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	return cs, cl, err
}

// waitNodeReady waits for a Ready condition with a heartbeat newer than the
// wait itself: after a restart, a stale Ready status lies.
func waitNodeReady(ctx context.Context, cs *kubernetes.Clientset, name string, timeout time.Duration) error {
	since := time.Now().Add(-time.Second)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue && cond.LastHeartbeatTime.After(since) {
					return nil
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("node %s not Ready after %s", name, timeout)
}

// kubectl runs the built kubectl against the cluster.
func kubectl(c *cluster.Cluster, args ...string) error {
	cmd := exec.Command(filepath.Join(c.Bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// waitPodRunning creates pod and watches it to Running, returning the time
// from creation to Running with millisecond precision.
func waitPodRunning(ctx context.Context, cs *kubernetes.Clientset, pod *corev1.Pod, timeout time.Duration) (time.Duration, error) {
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
