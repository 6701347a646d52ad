//go:build e2e

// Package multinode proves prepull's fleet promises on a local cluster of
// three real nodes (package e2e/cluster), each with its own network
// namespace, containerd and kubelet: the pacing of nodes, one digest per
// tag across nodes while the tag moves, a node that joins later, and a node
// that dies. prepull is installed with kustomize here (the e2e package uses
// the Helm chart).
package multinode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	godigest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageplan"
	"prepull.io/prepull/nodeauth"
)

const ns = "multi"

var (
	c   *cluster.Cluster
	cs  *kubernetes.Clientset
	cl  client.Client
	ctx = context.Background()
)

func TestMain(m *testing.M) {
	os.Exit(cluster.RunSuite(m, "multinode", 3, cluster.Kustomize, ns, func(s *cluster.Suite) error {
		c, cs, cl = s.Cluster, s.Clientset, s.Client
		return nil
	}))
}

// slowRegistry is the cluster's registry behind a throttle on the host's
// side of the nodes' bridge (8 MiB/s for every node together), which every
// node reaches over its own link; it returns its host:port.
func slowRegistry(t *testing.T) string {
	t.Helper()
	th := testground.StartThrottleAt(t, c.Node(1).IP, &testground.Registry{Host: cluster.RegistryHost}, 8<<20, 0)
	if err := c.TrustHost(th.Host); err != nil {
		t.Fatal(err)
	}
	return th.Host
}

// push pushes a runnable image of size random bytes to repoTag in the
// cluster's registry and returns its tag and digest named through via.
func push(t *testing.T, repoTag string, size int, via string) (tag, digest string) {
	t.Helper()
	ref, err := c.PushWorkload(cluster.RegistryHost+"/"+repoTag, size)
	if err != nil {
		t.Fatal(err)
	}
	return via + "/" + repoTag, ref[strings.LastIndex(ref, "@")+1:]
}

func applyList(t *testing.T, name string, maxNodes int, images ...string) *prepullv1.PrePullList {
	t.Helper()
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	if maxNodes > 0 {
		l.Spec.Rollout.MaxConcurrentNodes = new(intstr.FromInt32(int32(maxNodes)))
	}
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	return l
}

func waitReady(t *testing.T, l *prepullv1.PrePullList, nodes int) *prepullv1.PrePullList {
	t.Helper()
	got := &prepullv1.PrePullList{}
	testground.Eventually(t, 5*time.Minute, fmt.Sprintf("list %s Ready on %d nodes", l.Name, nodes), func() error {
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			return err
		}
		if got.Status.ReadyNodes != fmt.Sprintf("%d/%d", nodes, nodes) {
			return fmt.Errorf("ready %q, conditions %+v", got.Status.ReadyNodes, got.Status.Conditions)
		}
		return nil
	})
	return got
}

func deleteList(t *testing.T, l *prepullv1.PrePullList) {
	t.Helper()
	if err := cluster.DeleteList(ctx, cl, l, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// images is node n's CRI image service.
func images(t *testing.T, n cluster.Node) *cri.Remote {
	t.Helper()
	r, err := cri.NewRemote(n.ContainerdSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// pullSpan is when node n's containerd pulled the image digest names: from
// the moment it stored the manifest to the moment it created the image
// record, as containerd itself recorded them.
func pullSpan(t *testing.T, n cluster.Node, repo, digest string) (from, to time.Time) {
	t.Helper()
	ctd, err := containerd.New(n.ContainerdSocket(), containerd.WithDefaultNamespace("k8s.io"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctd.Close()
	info, err := ctd.ContentStore().Info(ctx, godigest.Digest(digest))
	if err != nil {
		t.Fatalf("%s: manifest %s: %v", n.Name, digest, err)
	}
	img, err := ctd.ImageService().Get(ctx, repo+"@"+digest)
	if err != nil {
		t.Fatalf("%s: image %s@%s: %v", n.Name, repo, digest, err)
	}
	return info.CreatedAt, img.CreatedAt
}

// TestLogsAndExecOnEveryNode reads the agent's log and runs a command in
// it on every node, through the apiserver as kubectl does: the apiserver
// reaches each node's kubelet at the node's own address.
func TestLogsAndExecOnEveryNode(t *testing.T) {
	for _, n := range c.RunningNodes() {
		pods, err := cs.CoreV1().Pods("prepull-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=prepull-agent", FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("%s: the agent's pod: %v (%+v)", n.Name, err, pods)
		}
		pod := pods.Items[0].Name
		logs, err := cs.CoreV1().Pods("prepull-system").GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil || !strings.Contains(string(logs), `"node":"`+n.Name+`"`) {
			t.Errorf("%s: logs of %s: %v\n%.300s", n.Name, pod, err, logs)
		}
		out, err := exec.CommandContext(ctx, filepath.Join(c.Bin, "kubectl"), "--kubeconfig", c.Kubeconfig(),
			"-n", "prepull-system", "exec", pod, "--", "/prepull", "version").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) == "" {
			t.Errorf("%s: kubectl exec %s -- /prepull version: %v: %s", n.Name, pod, err, out)
		}
		t.Logf("%s: %d bytes of the agent's log; exec: prepull %s", n.Name, len(logs), strings.TrimSpace(string(out)))
	}
}

// TestAnAgentWritesOnlyItsOwnNode writes NodeImageSet statuses with the
// agent's own credentials, tokens bound to its pods on two nodes: the
// admission policy in deploy/ lets node A's token write node A's status
// and refuses node B's, and refuses a token bound to no pod.
func TestAnAgentWritesOnlyItsOwnNode(t *testing.T) {
	nodes := c.RunningNodes()
	a, b := nodes[0], nodes[1]
	// A list gives every node its NodeImageSet.
	tag, _ := push(t, "multi/own:1.0", 1<<20, cluster.RegistryHost)
	l := applyList(t, "own", 0, tag)
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l, len(nodes))
	writeAs := func(tok, node string) error {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
		if err != nil {
			t.Fatal(err)
		}
		cfg.BearerToken, cfg.BearerTokenFile = tok, ""
		agent, err := client.New(cfg, client.Options{Scheme: cl.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: node}, set); err != nil {
			t.Fatal(err)
		}
		// A write that changes nothing still passes admission.
		patch := []byte(fmt.Sprintf(`{"status":{"runtime":%q}}`, set.Status.Runtime))
		return agent.Status().Patch(ctx, set, client.RawPatch(types.MergePatchType, patch))
	}
	token := func(pod *corev1.Pod) string {
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}
		if pod != nil {
			req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		got, err := cs.CoreV1().ServiceAccounts("prepull-system").CreateToken(ctx, "prepull-agent", req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got.Status.Token
	}
	agentPod := func(n cluster.Node) *corev1.Pod {
		pods, err := cs.CoreV1().Pods("prepull-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=prepull-agent", FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("%s: the agent's pod: %v", n.Name, err)
		}
		return &pods.Items[0]
	}
	onA := token(agentPod(a))
	if err := writeAs(onA, a.Name); err != nil {
		t.Errorf("the agent's token bound to its pod on %s cannot write %s's status: %v", a.Name, a.Name, err)
	}
	err := writeAs(onA, b.Name)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "the agent of node "+a.Name+" may write only the status of NodeImageSet "+a.Name) {
		t.Errorf("the agent's token from %s writing %s's status: %v, want Forbidden by the admission policy", a.Name, b.Name, err)
	}
	if err := writeAs(token(agentPod(b)), b.Name); err != nil {
		t.Errorf("the agent's token bound to its pod on %s cannot write %s's status: %v", b.Name, b.Name, err)
	}
	if err := writeAs(token(nil), a.Name); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "bound to a pod on a node") {
		t.Errorf("an agent token bound to no pod writing %s's status: %v, want Forbidden", a.Name, err)
	}
}

func TestRolloutPacesNodesOneAtATime(t *testing.T) {
	via := slowRegistry(t)
	tag, digest := push(t, "multi/paced:1.0", 16<<20, via)
	l := applyList(t, "paced", 1, tag)
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l, 3)

	type span struct {
		node     string
		from, to time.Time
	}
	var spans []span
	var ids []string
	for _, n := range c.RunningNodes() {
		from, to := pullSpan(t, n, via+"/multi/paced", digest)
		spans = append(spans, span{n.Name, from, to})
		img, err := images(t, n).ImageStatus(ctx, tag)
		if err != nil {
			t.Fatalf("%s: the tag: %v", n.Name, err)
		}
		if !slices.Contains(img.RepoDigests, via+"/multi/paced@"+digest) {
			t.Errorf("%s: the tag names %v, not %s", n.Name, img.RepoDigests, digest)
		}
		ids = append(ids, img.ID)
	}
	slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
	for i, s := range spans {
		t.Logf("%s pulled from %s to %s (%s)", s.node, s.from.Format("15:04:05.000"), s.to.Format("15:04:05.000"), s.to.Sub(s.from).Round(time.Millisecond))
		if i > 0 && s.from.Before(spans[i-1].to) {
			t.Errorf("%s started pulling at %s, before %s finished at %s: two nodes pulled at once with maxConcurrentNodes 1",
				s.node, s.from.Format("15:04:05.000"), spans[i-1].node, spans[i-1].to.Format("15:04:05.000"))
		}
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Errorf("the nodes hold the tag as different images: %v", ids)
			break
		}
	}
}

// presentOn counts the nodes whose agent reports image Present.
func presentOn(t *testing.T, image string) int {
	t.Helper()
	var sets prepullv1.NodeImageSetList
	if err := cl.List(ctx, &sets); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range sets.Items {
		if err := imageplan.Expand(ctx, cl, &s); err != nil {
			t.Fatal(err)
		}
		for _, st := range s.Status.Images {
			if st.Image == image && st.Phase == prepullv1.PhasePresent {
				n++
			}
		}
	}
	return n
}

func TestATagMovedMidRolloutEndsOnOneDigest(t *testing.T) {
	via := slowRegistry(t)
	tag, first := push(t, "multi/moving:1.0", 16<<20, via)
	l := applyList(t, "moving", 1, tag)
	t.Cleanup(func() { deleteList(t, l) })
	ref := via + "/multi/moving@" + first
	testground.Eventually(t, 3*time.Minute, "the first node Present", func() error {
		if n := presentOn(t, ref); n < 1 {
			return fmt.Errorf("present on %d nodes", n)
		}
		return nil
	})
	if n := presentOn(t, ref); n == 3 {
		t.Fatal("every node was Present before the tag could move: the rollout was not half done")
	}
	// The same tag, other bytes, while the rollout is half done.
	_, second := push(t, "multi/moving:1.0", 16<<20, via)
	if second == first {
		t.Fatal("the second push made the same digest")
	}
	got := waitReady(t, l, 3)
	digest := got.Status.Images[0].Digest
	t.Logf("pushed %s, then %s half way; the list is Ready at %s", first, second, digest)

	for _, n := range c.RunningNodes() {
		imgs := images(t, n)
		img, err := imgs.ImageStatus(ctx, tag)
		if err != nil {
			t.Fatalf("%s: the tag: %v", n.Name, err)
		}
		if !slices.Contains(img.RepoDigests, via+"/multi/moving@"+digest) {
			t.Errorf("%s: the tag names %v, not the list's %s", n.Name, img.RepoDigests, digest)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("moving-%d", n.Index)},
			Spec: corev1.PodSpec{
				NodeName:                      n.Name,
				Containers:                    []corev1.Container{{Name: "app", Image: tag, ImagePullPolicy: corev1.PullIfNotPresent}},
				TerminationGracePeriodSeconds: new(int64),
			},
		}
		if _, err := cluster.WaitPodRunning(ctx, cs, pod, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			cluster.WaitPodGone(ctx, cs, ns, pod.Name)
		})
		if running := runningImage(t, n, pod.Name); running != img.ID {
			t.Errorf("%s: the IfNotPresent pod runs image %s, the tag's image is %s (%s)", n.Name, running, img.ID, digest)
		}
	}
}

// runtimeService is node n's CRI runtime service, until the test ends.
func runtimeService(t *testing.T, n cluster.Node) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.ContainerdSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// runningImage is the image ID of the container of pod as node n's runtime
// runs it.
func runningImage(t *testing.T, n cluster.Node, pod string) string {
	t.Helper()
	rs := runtimeService(t, n)
	list, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": ns},
	}})
	if err != nil || len(list.Containers) == 0 {
		t.Fatalf("%s: containers of pod %s: %v (%d)", n.Name, pod, err, len(list.GetContainers()))
	}
	st, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: list.Containers[0].Id})
	if err != nil {
		t.Fatal(err)
	}
	if id := st.GetStatus().GetImageId(); id != "" {
		return id
	}
	return st.GetStatus().GetImageRef()
}

func TestANodeThatJoinsLaterIsWarmed(t *testing.T) {
	tag, digest := push(t, "multi/warm:1.0", 8<<20, cluster.RegistryHost)
	l := applyList(t, "warm", 0, tag)
	t.Cleanup(func() { deleteList(t, l) })
	before := len(c.RunningNodes())
	waitReady(t, l, before)

	n, err := c.AddNode(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s joined", n.Name)
	// Nobody touches the list.
	waitReady(t, l, before+1)
	img, err := images(t, n).ImageStatus(ctx, tag)
	if err != nil || !img.Pinned || !slices.Contains(img.RepoDigests, cluster.RegistryHost+"/multi/warm@"+digest) {
		t.Fatalf("%s: the tag %s: %+v, %v; want it at %s, pinned", n.Name, tag, img, err, digest)
	}

	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "warm-never"},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			Containers:                    []corev1.Container{{Name: "app", Image: tag, ImagePullPolicy: corev1.PullNever}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	d, err := cluster.WaitPodRunning(ctx, cs, pod, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		cluster.WaitPodGone(ctx, cs, ns, pod.Name)
	})
	t.Logf("with the registry stopped, a Never pod on %s Running in %s", n.Name, d)
}

func TestARemovedNodeHoldsNothingUp(t *testing.T) {
	nodes := c.RunningNodes()
	if len(nodes) < 3 {
		t.Fatalf("%d nodes; the test removes one of at least three", len(nodes))
	}
	via := slowRegistry(t)
	tag, digest := push(t, "multi/orphan:1.0", 16<<20, via)
	ref := via + "/multi/orphan@" + digest
	l := applyList(t, "orphan", 1, tag)
	// The node dies holding the rollout's one slot: handed the image, not
	// yet Present (node 1, the host, cannot be removed).
	var gone cluster.Node
	testground.Eventually(t, 3*time.Minute, "a node past the first handed the image and pulling it", func() error {
		for _, n := range nodes[1:] {
			set := &prepullv1.NodeImageSet{}
			if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err != nil {
				continue
			}
			if err := imageplan.Expand(ctx, cl, set); err != nil {
				continue
			}
			handed := slices.ContainsFunc(set.Spec.Images, func(e prepullv1.NodeImage) bool { return e.Image == ref })
			present := slices.ContainsFunc(set.Status.Images, func(st prepullv1.NodeImageStatus) bool {
				return st.Image == ref && st.Phase == prepullv1.PhasePresent
			})
			if handed && !present {
				gone = n
				return nil
			}
		}
		return errors.New("none yet")
	})
	if err := c.RemoveNode(ctx, cs, gone.Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s removed while it held the rollout's slot", gone.Name)
	waitReady(t, l, len(nodes)-1)
	testground.Eventually(t, time.Minute, "the removed node's NodeImageSet gone", func() error {
		if err := cl.Get(ctx, client.ObjectKey{Name: gone.Name}, &prepullv1.NodeImageSet{}); err == nil {
			return errors.New("still there")
		}
		return nil
	})
	deleteList(t, l)
}

// labelNode sets (value "") or removes a label of node name.
func labelNode(t *testing.T, name, key, value string) {
	t.Helper()
	n := &corev1.Node{}
	if err := cl.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(n.DeepCopy())
	if value == "" {
		delete(n.Labels, key)
	} else {
		n.Labels[key] = value
	}
	if err := cl.Patch(ctx, n, patch); err != nil {
		t.Fatal(err)
	}
}

// TestANamespaceActsOnlyWithinItsGrant: a namespace held to a PrePullPolicy
// that grants pool=a nodes, its own repository, archives under it and node
// gates of at most two minutes. On real nodes, one in pool a and two in
// pool b: a list asking for pool b, an archive list naming another
// namespace's repository and a gate of three minutes are refused at
// admission, naming the policy and the field; a list that names no nodes
// reaches only the pool-a node.
func TestANamespaceActsOnlyWithinItsGrant(t *testing.T) {
	nodes := c.RunningNodes()
	if len(nodes) < 3 {
		t.Fatalf("%d nodes: the test needs 3", len(nodes))
	}
	pools := map[string]string{nodes[0].Name: "a", nodes[1].Name: "b", nodes[2].Name: "b"}
	for name, pool := range pools {
		labelNode(t, name, "pool", pool)
		t.Cleanup(func() { labelNode(t, name, "pool", "") })
	}
	const tenant = "tenant-a"
	mine := cluster.RegistryHost + "/" + tenant
	pol := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: tenant}, Spec: prepullv1.PrePullPolicySpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}},
		Repositories: []string{mine},
		Archives:     &prepullv1.ArchiveGrant{Repositories: []string{mine}},
		NodeGate:     &prepullv1.NodeGateGrant{MaxTimeout: &metav1.Duration{Duration: 2 * time.Minute}},
		Quotas:       prepullv1.PolicyQuotas{BytesPerNode: ptr.To(resource.MustParse("2Mi"))},
	}}
	namespace := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenant, Labels: map[string]string{prepullv1.PolicyLabel: tenant}}}
	for _, o := range []client.Object{pol, namespace} {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Delete(ctx, o) })
	}
	tag, _ := push(t, tenant+"/app:1", 1<<20, cluster.RegistryHost)
	theirs, _ := push(t, "multi/app:1", 1<<20, cluster.RegistryHost)
	newList := func(name string, mutate func(*prepullv1.PrePullListSpec), image string) *prepullv1.PrePullList {
		l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: name}}
		l.Spec.Images = []prepullv1.PrePullImage{{Image: image}}
		if mutate != nil {
			mutate(&l.Spec)
		}
		return l
	}
	// The admission policy reads the new policy once its informer has it.
	testground.Eventually(t, time.Minute, "the policy in force at admission", func() error {
		l := newList("probe", func(s *prepullv1.PrePullListSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "b"}}
		}, tag)
		if err := cl.Create(ctx, l); err == nil {
			_ = cl.Delete(ctx, l)
			return errors.New("a list for pool b admitted")
		}
		return nil
	})

	refusals := []struct {
		list *prepullv1.PrePullList
		want string
	}{
		{newList("pool-b", func(s *prepullv1.PrePullListSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "b"}}
		}, tag), "spec.nodeSelector: PrePullPolicy tenant-a grants this namespace only nodes labelled pool=a"},
		{newList("their-name", func(s *prepullv1.PrePullListSpec) {
			s.Source = &prepullv1.ImageSource{Archive: &prepullv1.ArchiveSource{URL: "https://files.example/site.tar", SHA256: strings.Repeat("c", 64)}}
		}, theirs), "PrePullPolicy tenant-a does not grant repository " + cluster.RegistryHost + "/multi/app"},
		{newList("long-gate", func(s *prepullv1.PrePullListSpec) {
			s.NodeGate = &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: 3 * time.Minute}}
		}, tag), "spec.nodeGate.timeout: PrePullPolicy tenant-a grants node gates of at most"},
	}
	for _, r := range refusals {
		err := cl.Create(ctx, r.list)
		if err == nil {
			_ = cl.Delete(ctx, r.list)
		}
		if err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("list %s: %v; want it refused at admission with %q", r.list.Name, err, r.want)
		}
	}

	l := newList("anywhere", nil, tag)
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l, 1)
	for i, n := range nodes[:3] {
		_, err := images(t, n).ImageStatus(ctx, tag)
		if present := err == nil; present != (i == 0) {
			t.Errorf("%s (pool %s): %s present %t", n.Name, pools[n.Name], tag, present)
		}
	}

	// 1 MiB held; 2 MiB more would take the node past the 2Mi quota.
	big, _ := push(t, tenant+"/big:1", 2<<20, cluster.RegistryHost)
	over := newList("over", nil, big)
	if err := cl.Create(ctx, over); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, over) })
	testground.Eventually(t, time.Minute, "the list past bytesPerNode refused", func() error {
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(over), got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, prepullv1.ConditionDegraded)
		if c == nil || c.Reason != prepullv1.ReasonPolicyRefused || !strings.Contains(c.Message, "spec.quotas.bytesPerNode: PrePullPolicy tenant-a lets namespace tenant-a hold 2Mi on a node") {
			return fmt.Errorf("degraded: %+v", c)
		}
		return nil
	})
	waitReady(t, l, 1)
	if _, err := images(t, nodes[0]).ImageStatus(ctx, big); err == nil {
		t.Errorf("%s: the refused list's %s is present", nodes[0].Name, big)
	}
}

// TestTheControllerWritesOnlyItsTaintAndCondition: with the controller's
// own token, on a real node, removing a prepull.io/ taint and setting the
// prepull.io/ImagesReady condition pass admission; a label, another taint,
// another condition and a deletion are refused by the admission policy
// prepull-controller-node-writes.
func TestTheControllerWritesOnlyItsTaintAndCondition(t *testing.T) {
	node := c.RunningNodes()[1].Name
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}
	tok, err := cs.CoreV1().ServiceAccounts("prepull-system").CreateToken(ctx, "prepull-controller", req, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg.BearerToken, cfg.BearerTokenFile = tok.Status.Token, ""
	cfg.CertFile, cfg.KeyFile, cfg.CertData, cfg.KeyData = "", "", nil, nil
	ctl, err := client.New(cfg, client.Options{Scheme: cl.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	// Two taints of the test's own, one of prepull's domain, set as admin.
	n := &corev1.Node{}
	if err := cl.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		t.Fatal(err)
	}
	before := client.MergeFrom(n.DeepCopy())
	n.Spec.Taints = append(n.Spec.Taints,
		corev1.Taint{Key: "prepull.io/test-gate", Effect: corev1.TaintEffectPreferNoSchedule},
		corev1.Taint{Key: "example.com/other", Effect: corev1.TaintEffectPreferNoSchedule})
	if err := cl.Patch(ctx, n, before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n := &corev1.Node{}
		if err := cl.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
			return
		}
		before := client.MergeFrom(n.DeepCopy())
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "example.com/other" || t.Key == "prepull.io/test-gate" })
		delete(n.Labels, "example.com/by-controller")
		_ = cl.Patch(ctx, n, before)
	})
	patch := func(sub string, p string) error {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}
		if strings.HasPrefix(p, "-") {
			// Without the taint of that key, as a merge patch of the list.
			if err := cl.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
				t.Fatal(err)
			}
			before := client.MergeFrom(n.DeepCopy())
			n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == p[1:] })
			return ctl.Patch(ctx, n, before)
		}
		raw := client.RawPatch(types.StrategicMergePatchType, []byte(p))
		if sub == "status" {
			return ctl.Status().Patch(ctx, n, raw)
		}
		return ctl.Patch(ctx, n, raw)
	}
	cond := func(typ string) string {
		return fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":"True","reason":"Test","message":"test","lastHeartbeatTime":%q,"lastTransitionTime":%q}]}}`,
			typ, time.Now().UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
	}
	for _, w := range []struct {
		what, sub, patch string
		refused          string
	}{
		{"a label", "", `{"metadata":{"labels":{"example.com/by-controller":"yes"}}}`, "not its labels"},
		{"another taint removed", "", "-example.com/other", "only remove taints of the prepull.io/ domain"},
		{"another condition", "status", cond("example.com/Other"), "only the prepull.io/ImagesReady condition"},
		{"its taint removed", "", "-prepull.io/test-gate", ""},
		{"its condition", "status", cond(prepullv1.NodeConditionImagesReady), ""},
	} {
		err := patch(w.sub, w.patch)
		switch {
		case w.refused == "" && err != nil:
			t.Errorf("%s: %v; want it admitted", w.what, err)
		case w.refused != "" && (!apierrors.IsForbidden(err) || !strings.Contains(err.Error(), w.refused)):
			t.Errorf("%s: %v; want it refused with %q", w.what, err, w.refused)
		}
	}
	if err := ctl.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, client.DryRunAll); !apierrors.IsForbidden(err) {
		t.Errorf("the controller deleting a node: %v; want it forbidden", err)
	}
}

// TestAlwaysVerifyChecksCredentialsOfAPrePulledPrivateImage: on a real node
// whose kubelet runs imagePullCredentialsVerificationPolicy AlwaysVerify, a
// private image prepull pre-pulled with a pull secret starts a pod that
// presents that secret (the kubelet checks it with the registry), and does
// not start one without it: the image is not open to every pod of the node.
func TestAlwaysVerifyChecksCredentialsOfAPrePulledPrivateImage(t *testing.T) {
	v := startVerifyingNode(t, 1<<20, "private/app:1", "private/cold:1")
	image := v.front.Host + "/private/app:1"
	v.prePull(t, image)

	served := v.front.Blobs()
	prepulled := v.podStart(t, "verified-with", image, true)
	if blobs := v.front.Blobs(); !maps.Equal(blobs, served) {
		t.Errorf("the registry served blobs for a pod of the pre-pulled image: %v, before %v; want a manifest check only", blobs, served)
	}
	cold := v.podStart(t, "kubelet-pulled", v.front.Host+"/private/cold:1", true)
	t.Logf("under AlwaysVerify, with the secret: Running in %s on the pre-pulled image (a manifest check at the registry), %s on one the kubelet pulled (make bench-verify measures them)", prepulled, cold)

	without := v.pod("verified-without", image, false)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, without, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(without.Name) })
	testground.Eventually(t, 2*time.Minute, "the pod without the secret refused the pre-pulled private image", func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, without.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.State.Running != nil {
				t.Fatalf("a pod without the secret runs the pre-pulled private image")
			}
			if w := s.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
				t.Logf("without the secret: %s: %s", w.Reason, w.Message)
				return nil
			}
		}
		return fmt.Errorf("phase %s, statuses %+v", p.Status.Phase, p.Status.ContainerStatuses)
	})
}

// verifyingNode is a node added with imagePullCredentialsVerificationPolicy
// AlwaysVerify, a registry that lets only alice in (its front on the nodes'
// network), and the Secret of alice's credentials.
type verifyingNode struct {
	node   cluster.Node
	front  *testground.Throttle
	secret *corev1.Secret
}

// startVerifyingNode starts a verifying node, and the registry with a
// workload image of payload random bytes at each of repos; the registry's
// front sends at most 100 Mbit/s. All is undone when the test ends.
func startVerifyingNode(t testing.TB, payload int, repos ...string) *verifyingNode {
	t.Helper()
	reg := testground.StartRegistry(t, testground.WithBasicAuth("alice", "s3cret"))
	front := testground.StartThrottleAt(t, c.Node(1).IP, reg, 100<<20/8, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	for _, repo := range repos {
		img, err := c.Workload(payload)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.PushImage(repo, img); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.AddNodeWith(ctx, cs, cluster.NodeHooks{KubeletConfig: func(cfg string) string {
		return cfg + "imagePullCredentialsVerificationPolicy: AlwaysVerify\n"
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RemoveNode(ctx, cs, n.Name); err != nil {
			t.Errorf("remove %s: %v", n.Name, err)
		}
	})
	auth := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"s3cret"}}}`, front.Host)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "verify-cred"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auth)}}
	if err := cl.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(ctx, secret) })
	return &verifyingNode{node: n, front: front, secret: secret}
}

// prePull pre-pulls images on the node with a list naming the Secret, and
// returns how long the list took to be Ready.
func (v *verifyingNode) prePull(t testing.TB, images ...string) time.Duration {
	t.Helper()
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "verified"}, Spec: prepullv1.PrePullListSpec{
		NodeSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": v.node.Name}},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: v.secret.Name}},
	}}
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	start := time.Now()
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cluster.DeleteList(ctx, cl, l, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	testground.Eventually(t, 5*time.Minute, "list verified Ready", func() error {
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			return err
		}
		if got.Status.ReadyNodes != "1/1" {
			return fmt.Errorf("ready %q", got.Status.ReadyNodes)
		}
		return nil
	})
	return time.Since(start)
}

// pod is an IfNotPresent pod of image on the node, with the Secret or
// without.
func (v *verifyingNode) pod(name, image string, withSecret bool) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{
		NodeName:                      v.node.Name,
		Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent}},
		TerminationGracePeriodSeconds: new(int64),
	}}
	if withSecret {
		p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: v.secret.Name}}
	}
	return p
}

// podStart creates pod name of image on the node and returns the time
// from its creation to Running (watched); the pod is deleted when the
// test ends.
func (v *verifyingNode) podStart(t testing.TB, name, image string, withSecret bool) time.Duration {
	t.Helper()
	t.Cleanup(func() { deletePod(name) })
	took, err := cluster.WaitPodRunning(ctx, cs, v.pod(name, image, withSecret), 5*time.Minute)
	if err != nil {
		t.Fatalf("pod %s of %s: %v", name, image, err)
	}
	return took
}

// deletePod deletes pod name at once and waits until it is gone.
func deletePod(name string) {
	_ = cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	cluster.WaitPodGone(ctx, cs, ns, name)
}

// TestAnAgentGetsOnlyItsOwnNodesCredentials: agents hold no right to any
// Secret; the controller's endpoint serves the agent of a node the pull
// credentials of its own node's images. On real nodes: a private image
// listed for node 1 only is pulled there with the list's Secret, through
// the endpoint; node 2's agent, with its pod's own token, is refused that
// image's credentials.
func TestAnAgentGetsOnlyItsOwnNodesCredentials(t *testing.T) {
	nodes := c.RunningNodes()
	one, two := nodes[0], nodes[1]
	front := privateImage(t, "bob", "t0psecret", "private/one:1")
	image := front.Host + "/private/one:1"
	auth := fmt.Sprintf(`{"auths":{%q:{"username":"bob","password":"t0psecret"}}}`, front.Host)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "one-cred"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auth)}}
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "only-one"}, Spec: prepullv1.PrePullListSpec{
		Images:           []prepullv1.PrePullImage{{Image: image}},
		NodeSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": one.Name}},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: secret.Name}},
	}}
	for _, o := range []client.Object{secret, l} {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { deleteList(t, l); _ = cl.Delete(ctx, secret) })
	waitReady(t, l, 1)

	set := &prepullv1.NodeImageSet{}
	if err := cl.Get(ctx, client.ObjectKey{Name: one.Name}, set); err != nil {
		t.Fatal(err)
	}
	if err := imageplan.Expand(ctx, cl, set); err != nil {
		t.Fatal(err)
	}
	var entry string
	for _, e := range set.Spec.Images {
		if strings.HasPrefix(e.Image, front.Host+"/private/one@") {
			entry = e.Image
		}
	}
	if entry == "" {
		t.Fatalf("no entry of %s on %s", image, one.Name)
	}
	ask := func(n cluster.Node) error {
		creds := &nodeimageset.EndpointCredentials{Client: &nodeauth.Client{Reader: cl, Namespace: "prepull-system", TokenPath: agentToken(t, n)}}
		a, err := creds.Auth(ctx, entry, nil)
		if err == nil && (a == nil || a.Username != "bob") {
			return fmt.Errorf("credentials %v", a)
		}
		return err
	}
	if err := ask(one); err != nil {
		t.Errorf("%s's agent asking for its own image's credentials: %v", one.Name, err)
	}
	if err := cl.Get(ctx, client.ObjectKey{Name: one.Name}, set); err != nil {
		t.Fatal(err)
	}
	for _, st := range set.Status.Images {
		if st.Image == entry && st.Credentials != prepullv1.CredentialsPullSecret {
			t.Errorf("%s's status of %s: credentials %q, want PullSecret", one.Name, entry, st.Credentials)
		}
	}
	if err := ask(two); !nodeauth.IsForbidden(err) {
		t.Errorf("%s's agent asking for %s's image's credentials: %v; want it refused", two.Name, one.Name, err)
	}
}

// privateImage starts a registry that lets only user in, pushes a 1 MiB
// workload image to it as repoTag, and returns the registry's front on the
// nodes' network, which every node trusts.
func privateImage(t *testing.T, user, password, repoTag string) *testground.Throttle {
	t.Helper()
	reg := testground.StartRegistry(t, testground.WithBasicAuth(user, password))
	front := testground.StartThrottleAt(t, c.Node(1).IP, reg, 1<<30, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	img, err := c.Workload(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PushImage(repoTag, img); err != nil {
		t.Fatal(err)
	}
	return front
}

// TestATagIsHandedOnlyToListsWhoseCredentialsReadIt: on real nodes, a
// private tag one namespace's list resolved with its Secret is not handed
// to another namespace's list whose Secret the registry refuses: that list
// gets no digest and says why, its node gets nothing, and the first list
// stays Ready on its node. Once the second namespace fixes its Secret, its
// list is handed the digest and is Ready (the time it took is logged).
func TestATagIsHandedOnlyToListsWhoseCredentialsReadIt(t *testing.T) {
	nodes := c.RunningNodes()
	one, two := nodes[0], nodes[1]
	front := privateImage(t, "carol", "s3same", "private/shared:1")
	image := front.Host + "/private/shared:1"
	auth := func(password string) map[string][]byte {
		return map[string][]byte{corev1.DockerConfigJsonKey: fmt.Appendf(nil, `{"auths":{%q:{"username":"carol","password":%q}}}`, front.Host, password)}
	}
	stranger := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "multi-stranger"}}
	if err := cl.Create(ctx, stranger); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(ctx, stranger) })
	privateList := func(namespace, node string, s *corev1.Secret) *prepullv1.PrePullList {
		l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "shared"}, Spec: prepullv1.PrePullListSpec{
			Images:           []prepullv1.PrePullImage{{Image: image}},
			NodeSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": node}},
			ImagePullSecrets: []corev1.LocalObjectReference{{Name: s.Name}},
		}}
		for _, o := range []client.Object{s, l} {
			if err := cl.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { deleteList(t, l); _ = cl.Delete(ctx, s) })
		return l
	}
	owner := privateList(ns, one.Name, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "shared-cred"},
		Type: corev1.SecretTypeDockerConfigJson, Data: auth("s3same")})
	waitReady(t, owner, 1)
	wrong := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: stranger.Name, Name: "shared-cred"},
		Type: corev1.SecretTypeDockerConfigJson, Data: auth("guess")}
	other := privateList(stranger.Name, two.Name, wrong)
	testground.Eventually(t, time.Minute, "the stranger's list says why it has no digest", func() error {
		got := &prepullv1.PrePullList{}
		if err := cl.Get(ctx, client.ObjectKeyFromObject(other), got); err != nil {
			return err
		}
		if len(got.Status.Images) != 1 || got.Status.Images[0].Digest != "" || !strings.Contains(got.Status.Images[0].Message, "401") {
			return fmt.Errorf("images %+v", got.Status.Images)
		}
		return nil
	})
	// Whether node two is handed the image, read the same way before the
	// Secret is fixed (not) and after (it is).
	handed := func() bool {
		t.Helper()
		set, err := expanded(two)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(set.Spec.Images, func(e prepullv1.NodeImage) bool {
			return strings.HasPrefix(e.Image, front.Host+"/private/shared@")
		})
	}
	if handed() {
		t.Errorf("%s was handed the image for the list whose Secret the registry refuses", two.Name)
	}
	got := waitReady(t, owner, 1)
	if len(got.Status.Images) != 1 || got.Status.Images[0].Digest == "" || got.Status.Images[0].Message != "" {
		t.Errorf("the owner's list disturbed: %+v", got.Status.Images)
	}

	fixed := time.Now()
	wrong.Data = auth("s3same")
	if err := cl.Update(ctx, wrong); err != nil {
		t.Fatal(err)
	}
	waitReady(t, other, 1)
	t.Logf("the stranger's list Ready on %s %.1fs after its Secret was fixed", two.Name, time.Since(fixed).Seconds())
	if !handed() {
		t.Errorf("%s is not handed the image once its list's Secret reads it", two.Name)
	}
}

// TestCredentialProviderPluginsPullPrivateImagesWithoutSecrets: on a real
// node whose kubelet runs the cluster's credential provider plugin (the
// agents run the same plugin from its configuration), against a registry
// with authentication: the kubelet's own pull of a private image works with
// no Secret, and prepull pre-pulls another with no Secret, whose Never pod
// starts with the registry stopped. The agent ran the plugin once for that
// registry (its answer kept an hour), counted by the plugin itself; a
// plugin answering garbage fails its image with CredentialProviderFailed
// while the list's other image is made present.
func TestCredentialProviderPluginsPullPrivateImagesWithoutSecrets(t *testing.T) {
	reg := testground.StartRegistry(t, testground.WithBasicAuth(cluster.PluginUser, cluster.PluginPassword))
	front := testground.StartThrottleOn(t, cluster.PluginRegistry, reg, 1<<30, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"plugged/pre:1", "plugged/kubelet:1"} {
		img, err := c.Workload(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.PushImage(repo, img); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.AddNodeWith(ctx, cs, cluster.NodeHooks{KubeletArgs: c.KubeletCredentialArgs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RemoveNode(ctx, cs, n.Name); err != nil {
			t.Errorf("remove %s: %v", n.Name, err)
		}
	})
	pod := func(name, image string, policy corev1.PullPolicy) *corev1.Pod {
		t.Cleanup(func() {
			_ = cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			cluster.WaitPodGone(ctx, cs, ns, name)
		})
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			Containers:                    []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: policy}},
			TerminationGracePeriodSeconds: new(int64),
		}}
	}
	// The kubelet's own pull, with the plugin's credentials.
	if _, err := cluster.WaitPodRunning(ctx, cs, pod("plugged-kubelet", front.Host+"/plugged/kubelet:1", corev1.PullIfNotPresent), 2*time.Minute); err != nil {
		t.Fatalf("the kubelet's pull of a private image with its plugin: %v", err)
	}

	image := front.Host + "/plugged/pre:1"
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "plugged"}, Spec: prepullv1.PrePullListSpec{
		// The controller cannot read the tag: the node resolves it, with
		// its plugin's credentials.
		Images:       []prepullv1.PrePullImage{{Image: image}, {Image: "garbage.example.com/app@sha256:" + strings.Repeat("e", 64)}},
		Resolution:   prepullv1.ResolveOnNode,
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": n.Name}},
		Rollout:      prepullv1.RolloutSpec{BackoffLimit: new(int32(0))},
	}}
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	testground.Eventually(t, 3*time.Minute, "the private image present without a Secret, the garbage plugin's image failed", func() error {
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err != nil {
			return err
		}
		var present, failed bool
		for _, st := range set.Status.Images {
			switch {
			case strings.HasPrefix(st.Image, front.Host+"/plugged/pre"):
				// Its status says which kind of credentials pulled it.
				present = st.Phase == prepullv1.PhasePresent && st.Credentials == prepullv1.CredentialsCredentialProvider
			case strings.HasPrefix(st.Image, "garbage.example.com/"):
				failed = st.Phase == prepullv1.PhaseFailed && st.Reason == "CredentialProviderFailed" && strings.Contains(st.LastError, "not a CredentialProviderResponse")
			}
		}
		if !present || !failed {
			return fmt.Errorf("statuses %+v", set.Status.Images)
		}
		return nil
	})

	reg.Stop()
	if _, err := cluster.WaitPodRunning(ctx, cs, pod("plugged-never", image, corev1.PullNever), 2*time.Minute); err != nil {
		t.Fatalf("a Never pod of the pre-pulled private image, the registry stopped: %v", err)
	}
	// The node's agent counts its plugin's runs (it made more than one
	// call for the image: its size, then its pull).
	resp, err := http.Get("http://" + net.JoinHostPort(n.IP, "8083") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := `prepull_agent_credential_provider_runs_total{provider="credplugin",result="ok"} 1`
	if !strings.Contains(string(body), want+"\n") {
		t.Errorf("the agent's plugin runs: want %q; its metrics:\n%s", want, grepLines(string(body), "credential_provider"))
	}
	kubelet, err := os.ReadFile(c.PluginRuns())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the kubelet ran the plugin %d times", strings.Count(string(kubelet), "\n"))
}

// grepLines are the lines of s holding sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestTokenModePluginsGetTheWorkloadsToken: the agents' token-mode plugin
// (tokenAttributes, KEP-4412) answers only for a token of the service
// account multi/puller for its audience, as a registry granting per
// workload would. On real nodes: a list naming that account
// (spec.serviceAccountName) pre-pulls its private image, the agent having
// obtained the token through the controller's endpoint; a list naming
// another account cannot obtain it, and its image fails with the plugin's
// refusal.
func TestTokenModePluginsGetTheWorkloadsToken(t *testing.T) {
	reg := testground.StartRegistry(t, testground.WithBasicAuth(cluster.TokenUser, cluster.TokenPassword))
	front := testground.StartThrottleOn(t, cluster.TokenRegistry, reg, 1<<30, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"workload/app:1", "workload/other:1"} {
		img, err := c.Workload(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.PushImage(repo, img); err != nil {
			t.Fatal(err)
		}
	}
	saNS, saName, _ := strings.Cut(cluster.TokenServiceAccount, ":")
	for _, name := range []string{saName, "someone-else"} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: name}}
		if err := cl.Create(ctx, sa); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Delete(ctx, sa) })
	}
	node := c.RunningNodes()[1].Name
	mk := func(name, repo, sa string) *prepullv1.PrePullList {
		l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: name}, Spec: prepullv1.PrePullListSpec{
			Images:             []prepullv1.PrePullImage{{Image: front.Host + "/" + repo}},
			Resolution:         prepullv1.ResolveOnNode,
			ServiceAccountName: sa,
			NodeSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": node}},
			Rollout:            prepullv1.RolloutSpec{BackoffLimit: new(int32(0))},
		}}
		if err := cl.Create(ctx, l); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteList(t, l) })
		return l
	}
	mk("as-puller", "workload/app:1", saName)
	mk("as-someone-else", "workload/other:1", "someone-else")
	testground.Eventually(t, 3*time.Minute, "the puller's image present, the other account's refused", func() error {
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: node}, set); err != nil {
			return err
		}
		var present, refused bool
		for _, st := range set.Status.Images {
			switch {
			case strings.HasPrefix(st.Image, front.Host+"/workload/app"):
				present = st.Phase == prepullv1.PhasePresent && st.Credentials == prepullv1.CredentialsCredentialProvider
			case strings.HasPrefix(st.Image, front.Host+"/workload/other"):
				refused = st.Phase == prepullv1.PhaseFailed && st.Reason == "CredentialProviderFailed" &&
					strings.Contains(st.LastError, "system:serviceaccount:"+saNS+":someone-else")
			}
		}
		if !present || !refused {
			return fmt.Errorf("statuses %+v", set.Status.Images)
		}
		return nil
	})
}

// setControllerArgs makes the controller's Deployment run with args
// (appended to its own) and waits until its new pod is the one running.
func setControllerArgs(t testing.TB, mutate func([]string) []string) {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "prepull-system", Name: "prepull-controller"}, d); err != nil {
		t.Fatal(err)
	}
	c := &d.Spec.Template.Spec.Containers[0]
	c.Args = mutate(c.Args)
	// One replica on the host network of node 1: a second pod could not
	// take its ports, so the old one goes first.
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	if err := cl.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	testground.Eventually(t, 2*time.Minute, "the controller rolled out", func() error {
		if err := cl.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
			return err
		}
		st := d.Status
		if st.ObservedGeneration < d.Generation || st.UpdatedReplicas != 1 || st.AvailableReplicas != 1 || st.Replicas != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestConditionOnlyGateOnAJoiningNode: with the controller run with
// --gate=condition, a real node that joins with another tool's startup
// taint and is selected by a gating list gets prepull.io/ImagesReady False,
// then True once its images are present; no taint of the node is touched.
func TestConditionOnlyGateOnAJoiningNode(t *testing.T) {
	withGate := func(args []string) []string { return append(args, "--gate=condition") }
	setControllerArgs(t, withGate)
	t.Cleanup(func() {
		setControllerArgs(t, func(args []string) []string {
			return slices.DeleteFunc(args, func(a string) bool { return a == "--gate=condition" })
		})
	})
	// Through the throttled registry: the image takes seconds to arrive.
	tag, _ := push(t, "multi/conditioned:1.0", 24<<20, slowRegistry(t))
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "conditioned"}, Spec: prepullv1.PrePullListSpec{
		Images:       []prepullv1.PrePullImage{{Image: tag}},
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"gate": "condition"}},
		NodeGate:     &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: 10 * time.Minute}},
	}}
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	const readiness = "readiness.k8s.io/prepull-images-not-ready"
	n, err := c.AddNodeWith(ctx, cs, cluster.NodeHooks{KubeletArgs: []string{
		"--node-labels=gate=condition", "--register-with-taints=" + readiness + ":NoSchedule"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.RemoveNode(ctx, cs, n.Name); err != nil {
			t.Errorf("remove %s: %v", n.Name, err)
		}
	})
	var sawFalse bool
	testground.Eventually(t, 3*time.Minute, "ImagesReady False, then True", func() error {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(node.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == readiness }) {
			t.Fatalf("the readiness tool's taint was removed from %s: %v", n.Name, node.Spec.Taints)
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type != prepullv1.NodeConditionImagesReady {
				continue
			}
			if cond.Status == corev1.ConditionFalse && cond.Reason == prepullv1.ReasonImagesMissing {
				sawFalse = true
			}
			if cond.Status == corev1.ConditionTrue && cond.Reason == prepullv1.ReasonImagesPresent {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", node.Status.Conditions)
	})
	if !sawFalse {
		t.Errorf("ImagesReady was never seen False (ImagesMissing) while the image was on its way")
	}
}

// agentToken writes, in a file of the test, a token of n's agent's pod for
// the audience agents prove their node with, and returns its path.
func agentToken(t *testing.T, n cluster.Node) string {
	t.Helper()
	p := agentPod(t, n)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{nodeauth.Audience}, ExpirationSeconds: new(int64(600)),
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}}}
	tok, err := cs.CoreV1().ServiceAccounts("prepull-system").CreateToken(ctx, "prepull-agent", req, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(tok.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
