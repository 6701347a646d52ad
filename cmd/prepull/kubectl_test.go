package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/inspect"
)

const (
	appDigest  = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	toolDigest = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// rollout is a half-done rollout as the controller and two agents would
// have reported it on a real apiserver: list shop/web with two images, node
// n1 pulling one (50 of 100 MiB, for 10 s) and failing the other, node n2
// holding both, and a second list in another namespace.
type rollout struct {
	c          client.Client
	kubeconfig string
	list       *prepullv1.PrePullList
}

func startRollout(t *testing.T) *rollout {
	t.Helper()
	cfg, env := testground.StartAPIServer(t, "../../deploy/crd")
	c := testground.APIClient(t, cfg, "shop", "ops")
	user, err := env.AddUser(envtest.User{Name: "operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	r := &rollout{c: c, kubeconfig: filepath.Join(t.TempDir(), "kubeconfig")}
	if err := os.WriteFile(r.kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := metav1.NewTime(time.Now().Add(-10 * time.Second))

	r.list = &prepullv1.PrePullList{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: "127.0.0.1:5000/app:1.0"}, {Image: "127.0.0.1:5000/tool:2.0"}}},
	}
	must(t, c.Create(ctx, r.list))
	r.list.Status = prepullv1.PrePullListStatus{
		Conditions: []metav1.Condition{
			{Type: prepullv1.ConditionReady, Status: metav1.ConditionFalse, Reason: "Progressing", Message: "1/2 nodes hold every image", LastTransitionTime: now},
			{Type: prepullv1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: "NodesFailed", Message: "1 node failed an image", LastTransitionTime: now},
		},
		Images: []prepullv1.ImageResolution{
			{Image: "127.0.0.1:5000/app:1.0", Digest: appDigest, NodesReady: 1},
			{Image: "127.0.0.1:5000/tool:2.0", Digest: toolDigest, NodesReady: 1, NodesFailed: 1},
		},
		Nodes:      prepullv1.NodeCounts{Selected: 2, Ready: 1, Pulling: 1, Failed: 1},
		ReadyNodes: "1/2", ImageCount: 2, FailureCount: 1,
	}
	must(t, c.Status().Update(ctx, r.list))
	other := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "ops", Name: "base"},
		Spec: prepullv1.PrePullListSpec{Images: []prepullv1.PrePullImage{{Image: "127.0.0.1:5000/base:1"}}}}
	must(t, c.Create(ctx, other))

	n1 := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: prepullv1.DefaultStartupTaint, Effect: corev1.TaintEffectNoSchedule}}}}
	must(t, c.Create(ctx, n1))
	n1.Status.Conditions = []corev1.NodeCondition{{Type: prepullv1.NodeConditionImagesReady, Status: corev1.ConditionFalse, Reason: "ImagesMissing", Message: "shop/web: 1 image missing"}}
	must(t, c.Status().Update(ctx, n1))
	must(t, c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}))

	// As the controller hands them: both nodes name one plan. n2's agent
	// counts the app image, present as asked (fetched from a peer), and
	// lists the tool image, present but not pinned.
	owner := []prepullv1.ImageOwner{{List: "shop/web"}}
	images := []prepullv1.NodeImage{
		{Image: "127.0.0.1:5000/app@" + appDigest, Owners: owner},
		{Image: "127.0.0.1:5000/tool@" + toolDigest, Owners: owner},
	}
	plan := &prepullv1.ImagePlan{ObjectMeta: metav1.ObjectMeta{Name: prepullv1.ImagePlanName(images)},
		Spec: prepullv1.ImagePlanSpec{Count: 2, Images: images}}
	must(t, c.Create(ctx, plan))
	for name, images := range map[string][]prepullv1.NodeImageStatus{
		"n1": {
			{Image: "127.0.0.1:5000/app@" + appDigest, Phase: prepullv1.PhasePulling, BytesDone: 50 << 20, BytesTotal: 100 << 20, LastTransitionTime: &now},
			{Image: "127.0.0.1:5000/tool@" + toolDigest, Phase: prepullv1.PhaseFailed, Reason: "Unauthorized", LastError: "401 from the registry", Attempts: 3},
		},
		"n2": {
			{Image: "127.0.0.1:5000/tool@" + toolDigest, Phase: prepullv1.PhasePresent, Digest: toolDigest},
		},
	} {
		s := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: prepullv1.NodeImageSetSpec{Plan: plan.Name}}
		must(t, c.Create(ctx, s))
		s.Status = prepullv1.NodeImageSetStatus{ObservedGeneration: 1, Runtime: "containerd v2.4.2", Images: images, Plan: plan.Name,
			ImageFilesystem: &prepullv1.ImageFilesystem{UsedBytes: 1 << 30, CapacityBytes: 4 << 30}}
		if name == "n2" {
			s.Status.PlanPresent, s.Status.PlanSources = 1, "P"
		}
		if name == "n1" {
			s.Status.Checks = []prepullv1.RuntimeCheck{
				{Name: "runtime", Result: prepullv1.CheckPass, Message: "containerd v2.4.2"},
				{Name: "registry-hosts", Result: prepullv1.CheckFail, Message: "config_path is a list", Advice: "set one directory"},
			}
		}
		must(t, c.Status().Update(ctx, s))
	}
	return r
}

func (r *rollout) run(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(append(args, "--kubeconfig", r.kubeconfig), &out); err != nil {
		t.Fatalf("prepull %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestKubectlStatus(t *testing.T) {
	r := startRollout(t)

	t.Run("table", func(t *testing.T) {
		out := r.run(t, "status", "-n", "shop")
		for _, want := range []string{
			"shop/web", "NotReady", "nodes ready 1/2 (pulling 1, waiting 0, failed 1)",
			"Ready=False", "1/2 nodes hold every image", "Degraded=True", "NodesFailed",
			"127.0.0.1:5000/app:1.0", appDigest,
			// n1 pulls app, shown by the list's own name for it, half done.
			"[##########----------]  50%", "50 MiB/100 MiB", "MiB/s",
			// n1 failed tool.
			"FAILED ON", "Unauthorized", "401 from the registry",
			// n2's app image, counted in its plan, came from a peer.
			"fetched: 0 from registries, 1 from peers, 0 from archives",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("status does not show %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "ops/base") {
			t.Errorf("status -n shop shows a list of namespace ops:\n%s", out)
		}
		pulling := lineWith(out, "[##########")
		if !strings.HasPrefix(strings.TrimSpace(pulling), "n1 ") || !strings.Contains(pulling, "127.0.0.1:5000/app:1.0") {
			t.Errorf("the pull's row names another node or image: %q", pulling)
		}
		failed := lineWith(out, "Unauthorized")
		if !strings.HasPrefix(strings.TrimSpace(failed), "n1 ") || !strings.Contains(failed, "127.0.0.1:5000/tool:2.0") {
			t.Errorf("the failure's row names another node or image: %q", failed)
		}
	})

	t.Run("all namespaces and one list", func(t *testing.T) {
		out := r.run(t, "status", "-A")
		if !strings.Contains(out, "ops/base") || !strings.Contains(out, "shop/web") {
			t.Errorf("status -A does not show both lists:\n%s", out)
		}
		out = r.run(t, "status", "base", "-n", "ops")
		if !strings.Contains(out, "ops/base") || strings.Contains(out, "shop/web") {
			t.Errorf("status base -n ops shows another list:\n%s", out)
		}
		var stdout bytes.Buffer
		err := run([]string{"status", "nosuch", "-n", "ops", "--kubeconfig", r.kubeconfig}, &stdout)
		if err == nil || !strings.Contains(err.Error(), "ops/nosuch") || !strings.Contains(err.Error(), "not found") {
			t.Errorf("status of a missing list: %v, want an error naming it", err)
		}
	})

	t.Run("json", func(t *testing.T) {
		var reports []inspect.ListReport
		if err := json.Unmarshal([]byte(r.run(t, "status", "-n", "shop", "-o", "json")), &reports); err != nil {
			t.Fatal(err)
		}
		if len(reports) != 1 || len(reports[0].Pulling) != 1 || len(reports[0].Failures) != 1 {
			t.Fatalf("status -o json: %+v", reports)
		}
		p := reports[0].Pulling[0]
		if p.Node != "n1" || p.BytesDone != 50<<20 || p.BytesTotal != 100<<20 || p.BytesPerSecond <= 0 {
			t.Errorf("pull in json: %+v", p)
		}
	})

	t.Run("watch until Ready", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		done := make(chan error, 1)
		var out bytes.Buffer
		go func() {
			done <- run([]string{"status", "web", "-n", "shop", "--watch", "--interval", "100ms", "--kubeconfig", r.kubeconfig}, &out)
		}()
		time.Sleep(500 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("status --watch returned while the list is not Ready: %v\n%s", err, out.String())
		default:
		}
		l := r.list.DeepCopy()
		must(t, r.c.Get(ctx, client.ObjectKeyFromObject(l), l))
		meta.SetStatusCondition(&l.Status.Conditions, metav1.Condition{Type: prepullv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Ready", Message: "2/2"})
		must(t, r.c.Status().Update(ctx, l))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("status --watch did not return once the list was Ready")
		}
		frames := strings.Count(out.String(), "shop/web")
		if frames < 2 || !strings.Contains(out.String(), "shop/web  Ready") {
			t.Errorf("status --watch drew %d frames, the last not Ready:\n%s", frames, out.String())
		}
	})

	t.Run("bad flags", func(t *testing.T) {
		var stdout bytes.Buffer
		err := run([]string{"status", "web", "-A", "-o", "xml", "--kubeconfig", r.kubeconfig}, &stdout)
		if err == nil || !strings.Contains(err.Error(), "-A") || !strings.Contains(err.Error(), `-o: "xml"`) {
			t.Errorf("status web -A -o xml: %v, want both flags named", err)
		}
	})
}

func TestKubectlNode(t *testing.T) {
	r := startRollout(t)
	out := r.run(t, "node", "n1")
	for _, want := range []string{
		"Node:", "n1", "containerd v2.4.2", "1.0 GiB used of 4.0 GiB (25%)",
		"held: the node carries the " + prepullv1.DefaultStartupTaint + " taint",
		"ImagesReady:", "ImagesMissing",
		"127.0.0.1:5000/app@" + appDigest, "shop/web", "Pulling", "50 MiB/100 MiB",
		"Unauthorized: 401 from the registry",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("node n1 does not show %q:\n%s", want, out)
		}
	}
	out = r.run(t, "node", "n2", "-o", "yaml")
	for _, want := range []string{"tainted: false", "pinned: true", "- shop/web", "phase: Present"} {
		if !strings.Contains(out, want) {
			t.Errorf("node n2 -o yaml does not show %q:\n%s", want, out)
		}
	}
	var stdout bytes.Buffer
	if err := run([]string{"node", "n9", "--kubeconfig", r.kubeconfig}, &stdout); err == nil || !strings.Contains(err.Error(), "node n9") {
		t.Errorf("node n9: %v, want an error naming the node", err)
	}
}

func TestKubectlDoctor(t *testing.T) {
	r := startRollout(t)
	var out bytes.Buffer
	err := run([]string{"doctor", "n1", "--kubeconfig", r.kubeconfig}, &out)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 checks failed: registry-hosts") {
		t.Errorf("doctor n1: %v, want the failed check named", err)
	}
	for _, want := range []string{"PASS  runtime", "FAIL  registry-hosts", "config_path is a list", "→ set one directory"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("doctor n1 does not show %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	err = run([]string{"doctor", "n2", "--kubeconfig", r.kubeconfig}, &out)
	if err == nil || !strings.Contains(err.Error(), "no checks yet") {
		t.Errorf("doctor of a node whose agent reported no checks: %v", err)
	}
}

// TestDoctorOnTheNode runs `prepull doctor` against a real containerd whose
// configuration fails a check: the table says so and the command fails.
func TestDoctorOnTheNode(t *testing.T) {
	ctd := testground.StartContainerdWith(t, func(s string) string {
		return strings.Replace(s, "    snapshotter = 'overlayfs'\n", "    snapshotter = 'overlayfs'\n    max_concurrent_downloads = 8\n", 1)
	})
	kubelet := filepath.Join(t.TempDir(), "kubelet.yaml")
	if err := os.WriteFile(kubelet, []byte("kind: KubeletConfiguration\nimagePullCredentialsVerificationPolicy: AlwaysVerify\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := run([]string{"doctor", "--cri-endpoint", ctd.Socket, "--containerd-config", ctd.ConfigPath(), "--kubelet-config", kubelet, "--disk-budget", "0.000001"}, &out)
	if err == nil || !strings.Contains(err.Error(), "image-filesystem") {
		t.Errorf("doctor with a full disk budget: %v, want image-filesystem failed", err)
	}
	for _, want := range []string{"PASS  runtime", "WARN  concurrent-downloads", "WARN  kubelet-credential-verification", "FAIL  image-filesystem"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("doctor does not show %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run([]string{"doctor", "--cri-endpoint", ctd.Socket, "--containerd-config", ctd.ConfigPath(), "--kubelet-config", kubelet, "-o", "json"}, &out); err != nil {
		t.Errorf("doctor -o json with nothing failing: %v", err)
	}
	var checks []prepullv1.RuntimeCheck
	if err := json.Unmarshal(out.Bytes(), &checks); err != nil || len(checks) < 8 {
		t.Errorf("doctor -o json: %v, %d checks:\n%s", err, len(checks), out.String())
	}
}

func lineWith(s, substr string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
