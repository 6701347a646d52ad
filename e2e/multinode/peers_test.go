//go:build e2e

package multinode

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digestpkg "github.com/opencontainers/go-digest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/cluster"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageplan"
	"prepull.io/prepull/peer"
)

// peerArgs are the agents' and the controller's flags that turn peers on.
var (
	agentPeerArg      = "--peer-address=[$(POD_IP)]:8085"
	controllerPeerArg = "--peers"
)

// withPeers turns peers on for the test (the controller also run with
// controllerArgs): the controller routes, every
// agent serves its node's images on its node's address and fetches from
// peers first, each with its archives in a directory of its node's own
// (subPathExpr: the local cluster's nodes share one filesystem). All is
// undone when the test ends.
func withPeers(t testing.TB, controllerArgs ...string) {
	t.Helper()
	added := append([]string{controllerPeerArg}, controllerArgs...)
	setControllerArgs(t, func(args []string) []string { return append(args, added...) })
	setAgents(t, true)
	t.Cleanup(func() {
		setAgents(t, false)
		setControllerArgs(t, func(args []string) []string {
			return slices.DeleteFunc(args, func(a string) bool { return slices.Contains(added, a) })
		})
	})
}

// setAgents turns the agents' peers and per-node archive directories on
// or off, and waits until every agent runs so.
func setAgents(t testing.TB, on bool) {
	t.Helper()
	ds := &appsv1.DaemonSet{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: "prepull-system", Name: "prepull-agent"}, ds); err != nil {
		t.Fatal(err)
	}
	agent := &ds.Spec.Template.Spec.Containers[0]
	agent.Args = slices.DeleteFunc(agent.Args, func(a string) bool { return a == agentPeerArg })
	for i := range agent.VolumeMounts {
		if agent.VolumeMounts[i].Name == "archives" {
			agent.VolumeMounts[i].SubPathExpr = ""
			if on {
				agent.VolumeMounts[i].SubPathExpr = "$(NODE_NAME)"
			}
		}
	}
	if on {
		agent.Args = append(agent.Args, agentPeerArg)
	}
	if err := cl.Update(ctx, ds); err != nil {
		t.Fatal(err)
	}
	testground.Eventually(t, 3*time.Minute, "the agents rolled out", func() error {
		if err := cl.Get(ctx, client.ObjectKeyFromObject(ds), ds); err != nil {
			return err
		}
		st := ds.Status
		if st.ObservedGeneration < ds.Generation || st.UpdatedNumberScheduled != st.DesiredNumberScheduled || st.NumberAvailable != st.DesiredNumberScheduled {
			return fmt.Errorf("status %+v", st)
		}
		for _, n := range c.RunningNodes() {
			set := &prepullv1.NodeImageSet{}
			if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err == nil && (set.Status.Peer != nil) != on {
				return fmt.Errorf("%s: peer %+v", n.Name, set.Status.Peer)
			}
		}
		return nil
	})
}

// TestNodesFetchFromPeers: with peers on, on three real nodes, a list on
// every node makes the registry serve each blob once (one seed node), and
// with the registry stopped once the seed holds the image, the other nodes
// still become Present, from their peer; each says where its image came
// from. A holder refuses a request without an agent's token (401), and an
// agent whose node's plan does not name a private image (403).
func TestNodesFetchFromPeers(t *testing.T) {
	nodes := c.RunningNodes()
	if len(nodes) < 3 {
		t.Fatalf("%d nodes: the test needs 3", len(nodes))
	}
	withPeers(t)
	t.Cleanup(func() { explainAgents(t) })
	front := testground.StartThrottleAt(t, c.Node(1).IP, &testground.Registry{Host: cluster.RegistryHost}, 12<<20, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	tag, digest := push(t, "peers/app:1", 4<<20, front.Host)
	gets, writes := routeRequests(t)
	l := applyList(t, "peers", 3, tag)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			deleteList(t, l)
		}
	})
	digestRef := strings.TrimSuffix(tag, ":1") + "@" + digest
	testground.Eventually(t, 3*time.Minute, "a seed holds the image", func() error {
		// Listed, not read by name: the test's reads are not counted with
		// the GETs below.
		var routes prepullv1.ImageRouteList
		if err := cl.List(ctx, &routes); err != nil {
			return err
		}
		i := slices.IndexFunc(routes.Items, func(r prepullv1.ImageRoute) bool { return r.Name == prepullv1.ImageRouteName(digestRef) })
		if i < 0 || len(routes.Items[i].Status.Holders) == 0 {
			return fmt.Errorf("no route with holders of %s", digestRef)
		}
		return nil
	})
	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Error(err)
		}
	})
	waitReady(t, l, 3)
	// The agents waiting for holders read the routes from their watch:
	// the API server answered no GET of an ImageRoute but the controller's,
	// one before each of its writes.
	if g, w := routeRequests(t); g-gets > w-writes {
		t.Errorf("the API server answered %.0f GETs of ImageRoutes for %.0f writes while the nodes waited for holders", g-gets, w-writes)
	} else {
		t.Logf("ImageRoutes: %.0f GETs, %.0f writes", g-gets, w-writes)
	}
	blobs := front.Blobs()
	if len(blobs) == 0 {
		t.Fatalf("the registry served no blob")
	}
	for d, n := range blobs {
		if n != 1 {
			t.Errorf("the registry served blob %s %d times, want once", d, n)
		}
	}
	t.Logf("registry: %d blobs, %d bytes for %d nodes", len(blobs), front.Bytes(), len(nodes[:3]))
	if f := fetched(t, nodes[:3]); f.Peer != 2 || f.Registry != 1 {
		t.Errorf("fetched from peers %d, from the registry %d; want 2 and 1", f.Peer, f.Registry)
	}

	// The holders serve only peer agents whose plans name the image.
	holder := &prepullv1.NodeImageSet{}
	if err := cl.Get(ctx, client.ObjectKey{Name: nodes[0].Name}, holder); err != nil || holder.Status.Peer == nil {
		t.Fatalf("%s serves no peers: %v", nodes[0].Name, err)
	}
	only := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "peers-one-node"}, Spec: prepullv1.PrePullListSpec{
		Images:       []prepullv1.PrePullImage{{Image: tag}},
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": nodes[0].Name}},
	}}
	if err := cl.Create(ctx, only); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, only) })
	ask := func(token string, image string) int {
		u := fmt.Sprintf("https://%s%s%s?image=%s", holder.Status.Peer.Address, peer.BlobPath, digest, image)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if token != "" {
			data, err := os.ReadFile(token)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+string(data))
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("ask %s: %v", holder.Status.Peer.Address, err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if got := ask("", digestRef); got != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", got)
	}
	if got := ask(agentToken(t, nodes[1]), digestRef); got != http.StatusOK {
		t.Errorf("%s, whose plan names the image: %d, want 200", nodes[1].Name, got)
	}
	deleteList(t, l)
	deleted = true
	testground.Eventually(t, time.Minute, "the image is not handed to "+nodes[1].Name+" any more", func() error {
		if got := ask(agentToken(t, nodes[1]), digestRef); got != http.StatusForbidden {
			return fmt.Errorf("%s: %d, want 403", nodes[1].Name, got)
		}
		return nil
	})
}

// TestAnArchiveOnOneNodeSeedsTheFleet: with peers on, a list whose archive
// is on one node only (each agent reads archives from a directory of its
// node's own) is Ready on every node: that node imports it, the others
// fetch the image from it; no registry is involved.
func TestAnArchiveOnOneNodeSeedsTheFleet(t *testing.T) {
	nodes := c.RunningNodes()
	withPeers(t)
	t.Cleanup(func() { explainAgents(t) })
	tag, digest := push(t, "peers/airgapped:1", 2<<20, cluster.RegistryHost)
	// By digest: a tag from an archive would be resolved on one node
	// first, whichever the controller picks.
	digestRef := strings.TrimSuffix(tag, ":1") + "@" + digest
	dir := filepath.Join(c.Dir, "archives", nodes[0].Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "seed.tar")
	if _, err := bundle.Write(ctx, archive, []string{tag}, bundle.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sum, err := bundle.SumFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop("registry"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.StartRegistry(ctx); err != nil {
			t.Error(err)
		}
	})
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "seeded"}, Spec: prepullv1.PrePullListSpec{
		Images: []prepullv1.PrePullImage{{Image: digestRef}},
		Source: &prepullv1.ImageSource{Archive: &prepullv1.ArchiveSource{Path: "seed.tar", SHA256: sum}},
	}}
	l.Spec.Rollout.MaxConcurrentNodes = new(intstr.FromInt32(3))
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l, len(nodes))
	if f := fetched(t, nodes); f.Archive != 1 || f.Peer != int32(len(nodes)-1) {
		t.Errorf("imported %d, fetched from peers %d; want 1 and %d", f.Archive, f.Peer, len(nodes)-1)
	}
}

// routeRequests are the GETs, and the writes, of ImageRoutes the API
// server has answered since it started, from its metrics.
func routeRequests(t *testing.T) (gets, writes float64) {
	t.Helper()
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="imageroutes"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		switch {
		case strings.Contains(line, `verb="GET"`):
			gets += v
		case strings.Contains(line, `verb="POST"`), strings.Contains(line, `verb="PUT"`), strings.Contains(line, `verb="PATCH"`):
			writes += v
		}
	}
	return gets, writes
}

// fetched adds up what nodes' agents say they fetched, by source.
func fetched(t *testing.T, nodes []cluster.Node) prepullv1.FetchCounts {
	t.Helper()
	var sum prepullv1.FetchCounts
	for _, n := range nodes {
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err != nil {
			t.Fatal(err)
		}
		if f := set.Status.Fetched; f != nil {
			sum.Registry, sum.Peer, sum.Archive = sum.Registry+f.Registry, sum.Peer+f.Peer, sum.Archive+f.Archive
		}
	}
	return sum
}

// explainAgents logs, when the test failed, what each node's agent
// reported and the end of its log.
func explainAgents(t *testing.T) {
	if !t.Failed() {
		return
	}
	for _, n := range c.RunningNodes() {
		set := &prepullv1.NodeImageSet{}
		if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err == nil {
			for _, st := range set.Status.Images {
				t.Logf("%s: %s %s %s: %s", n.Name, st.Image, st.Phase, st.Reason, st.LastError)
			}
			t.Logf("%s: peer %+v fetched %+v", n.Name, set.Status.Peer, set.Status.Fetched)
		}
		pods, err := cs.CoreV1().Pods("prepull-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=prepull-agent", FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil || len(pods.Items) == 0 {
			continue
		}
		tail := int64(25)
		raw, err := cs.CoreV1().Pods("prepull-system").GetLogs(pods.Items[0].Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
		if err == nil {
			t.Logf("%s's agent:\n%s", n.Name, raw)
		}
	}
}

// TestTheRegistryBudgetHoldsARollout: with peers on and a budget of one
// pull an hour for the registry, a list of two images on every node gets
// one image from the registry (its seed) and the others from peers; the
// second image waits on every node, saying WaitingForRegistryBudget, and
// its route says why; a new leader holds it, and a third image, to the
// same hour.
func TestTheRegistryBudgetHoldsARollout(t *testing.T) {
	nodes := c.RunningNodes()
	front := testground.StartThrottleAt(t, c.Node(1).IP, &testground.Registry{Host: cluster.RegistryHost}, 64<<20, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	withPeers(t, "--registry-budget="+front.Host+"=0/1")
	t.Cleanup(func() { explainAgents(t) })
	first, _ := push(t, "budget/first:1", 1<<20, front.Host)
	l := applyList(t, "budget", len(nodes), first)
	t.Cleanup(func() { deleteList(t, l) })
	waitReady(t, l, len(nodes))
	second, secondDigest := push(t, "budget/second:1", 1<<20, front.Host)
	l = waitReady(t, l, len(nodes))
	served := front.Blobs()
	l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: second})
	if err := cl.Update(ctx, l); err != nil {
		t.Fatal(err)
	}
	secondRef := strings.TrimSuffix(second, ":1") + "@" + secondDigest
	testground.Eventually(t, 2*time.Minute, "every node waits for the registry budget", func() error {
		route := &prepullv1.ImageRoute{}
		if err := cl.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(secondRef)}, route); err != nil {
			return err
		}
		if !strings.Contains(route.Status.Waiting, "1 pulls started within the hour (1 allowed)") || len(route.Status.RegistryGrants) > 0 {
			return fmt.Errorf("route %+v", route.Status)
		}
		for _, n := range nodes {
			st, err := nodeImageStatus(n, secondRef)
			if err != nil {
				return err
			}
			if st.Reason != prepullv1.ReasonWaitingForRegistryBudget {
				return fmt.Errorf("%s: %+v", n.Name, st)
			}
		}
		return nil
	})
	if blobs := front.Blobs(); len(blobs) != len(served) {
		t.Errorf("the registry served blobs past its budget: %v, before %v", blobs, served)
	}

	// A new leader goes on with the hour (the ConfigMap
	// prepull-registry-budget): the controller's pod replaced, a third
	// image waits as the second does, and the registry serves nothing more.
	leader := func() string {
		lease, err := cs.CoordinationV1().Leases("prepull-system").Get(ctx, "prepull-controller.prepull.io", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		return *lease.Spec.HolderIdentity
	}
	before := leader()
	const again = "--registry-budget=*=0/0"
	setControllerArgs(t, func(args []string) []string { return append(args, again) })
	t.Cleanup(func() {
		setControllerArgs(t, func(args []string) []string {
			return slices.DeleteFunc(args, func(a string) bool { return a == again })
		})
	})
	testground.Eventually(t, 2*time.Minute, "a new leader", func() error {
		if now := leader(); now == "" || now == before {
			return fmt.Errorf("leader %q, before %q", now, before)
		}
		return nil
	})
	third, thirdDigest := push(t, "budget/third:1", 1<<20, front.Host)
	if err := cl.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil {
		t.Fatal(err)
	}
	l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: third})
	if err := cl.Update(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{strings.TrimSuffix(third, ":1") + "@" + thirdDigest, secondRef} {
		testground.Eventually(t, 2*time.Minute, "the new leader holds "+ref+" to the hour's budget", func() error {
			route := &prepullv1.ImageRoute{}
			if err := cl.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(ref)}, route); err != nil {
				return err
			}
			if !strings.Contains(route.Status.Waiting, "1 pulls started within the hour (1 allowed)") || len(route.Status.RegistryGrants) > 0 {
				return fmt.Errorf("route %+v", route.Status)
			}
			return nil
		})
	}
	if blobs := front.Blobs(); len(blobs) != len(served) {
		t.Errorf("the registry served blobs past its budget under a new leader: %v, before %v", blobs, served)
	}
}

// TestAKilledOrCorruptPeerIsDropped: on three real nodes with peers on, a
// node fetching an image from a holder whose agent is killed mid-blob goes
// on from the other holder, and a node whose only holder serves corrupted
// bytes (a blob flipped in that node's content store) refuses them by
// digest, keeps none of them, and fetches the image from the registry.
func TestAKilledOrCorruptPeerIsDropped(t *testing.T) {
	nodes := c.RunningNodes()
	if len(nodes) < 3 {
		t.Fatalf("%d nodes: the test needs 3", len(nodes))
	}
	front := testground.StartThrottleAt(t, c.Node(1).IP, &testground.Registry{Host: cluster.RegistryHost}, 64<<20, 0)
	if err := c.TrustHost(front.Host); err != nil {
		t.Fatal(err)
	}
	withPeers(t)
	t.Cleanup(func() { explainAgents(t) })
	fetcher := nodes[2]

	t.Run("a holder killed mid-blob", func(t *testing.T) {
		tag, digest := push(t, "peers/killed:1", 24<<20, front.Host)
		ref := strings.TrimSuffix(tag, ":1") + "@" + digest
		waitReady(t, listOn(t, "killed-held", tag, nodes[0], nodes[1]), 2)
		// The fetching node's own link is slow, so that a transfer to it
		// takes seconds whichever holder serves it.
		if err := cluster.ShapeLink(fetcher, "20mbit"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := cluster.UnshapeLink(fetcher); err != nil {
				t.Error(err)
			}
		})
		l := listOn(t, "killed-fetch", tag, fetcher)
		var killed, other cluster.Node
		testground.Eventually(t, 2*time.Minute, fetcher.Name+" receives a blob from a holder", func() error {
			ip, err := receivingFrom(fetcher, 4<<20)
			if err != nil {
				return err
			}
			for i, n := range nodes[:2] {
				if n.IP == ip {
					killed, other = n, nodes[1-i]
					return nil
				}
			}
			return fmt.Errorf("receiving from %s, no holder", ip)
		})
		killAgent(t, killed)
		t.Logf("killed %s's agent mid-transfer", killed.Name)
		waitReady(t, l, 1)
		// From a peer, and, the killed one being dropped, from the other
		// (the status of an image present as its plan asks does not name
		// the peer).
		if st := nodeImage(t, fetcher, ref); st.Source != prepullv1.FetchedFromPeer {
			t.Errorf("%s got the image from %q, want from a peer", fetcher.Name, st.Source)
		}
		dropped := grepLines(grepLines(agentLog(t, fetcher), "Peer failed"), ref)
		if !strings.Contains(dropped, killed.Name) || strings.Contains(dropped, other.Name) {
			t.Errorf("%s's agent should have dropped %s and no other:\n%s", fetcher.Name, killed.Name, dropped)
		}
		// The seed fetched each blob from the registry, at most once (the
		// workload's first layer may be on it already); nobody else did.
		blobs := blobsOf(t, ref)
		for _, d := range blobs {
			if n := front.Blobs()[d.Digest.String()]; n > 1 {
				t.Errorf("the registry served blob %s %d times, want once (the seed)", d.Digest, n)
			}
		}
		payload := slices.MaxFunc(blobs, func(a, b v1.Descriptor) int { return int(a.Size - b.Size) })
		if n := front.Blobs()[payload.Digest.String()]; n != 1 {
			t.Errorf("the registry served the 24 MiB layer %d times, want once (the seed)", n)
		}
	})

	t.Run("a holder serving corrupted bytes", func(t *testing.T) {
		holder := nodes[1]
		tag, digest := push(t, "peers/corrupt:1", 4<<20, front.Host)
		ref := strings.TrimSuffix(tag, ":1") + "@" + digest
		waitReady(t, listOn(t, "corrupt-held", tag, holder), 1)
		blobs := blobsOf(t, ref)
		layer := slices.MaxFunc(blobs, func(a, b v1.Descriptor) int { return int(a.Size - b.Size) })
		flipByte(t, contentBlob(holder, layer.Digest.Hex), layer.Size/2)
		before := front.Blobs()[layer.Digest.String()]
		waitReady(t, listOn(t, "corrupt-fetch", tag, fetcher), 1)
		if st := nodeImage(t, fetcher, ref); st.Source != prepullv1.FetchedFromRegistry {
			t.Errorf("%s got the image from %q, want from the registry", fetcher.Name, st.Source)
		}
		dropped := grepLines(grepLines(agentLog(t, fetcher), "Peer failed"), ref)
		if !strings.Contains(dropped, holder.Name) || !strings.Contains(dropped, cri.ErrCorrupt.Error()) {
			t.Errorf("%s's agent did not refuse %s's bytes by digest:\n%s", fetcher.Name, holder.Name, dropped)
		}
		if n := front.Blobs()[layer.Digest.String()]; n != before+1 {
			t.Errorf("the registry served the layer %d times after the seed, want once", n-before)
		}
		data, err := os.ReadFile(contentBlob(fetcher, layer.Digest.Hex))
		if err != nil {
			t.Fatal(err)
		}
		if got := digestpkg.FromBytes(data); got.String() != layer.Digest.String() {
			t.Errorf("%s holds %s under the layer's digest %s", fetcher.Name, got, layer.Digest)
		}
	})
}

// listOn applies a list of tag on the named nodes only, all at once.
func listOn(t *testing.T, name, tag string, on ...cluster.Node) *prepullv1.PrePullList {
	t.Helper()
	var names []string
	for _, n := range on {
		names = append(names, n.Name)
	}
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: prepullv1.PrePullListSpec{
		Images: []prepullv1.PrePullImage{{Image: tag}},
		NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "kubernetes.io/hostname", Operator: metav1.LabelSelectorOpIn, Values: names}}},
	}}
	l.Spec.Rollout.MaxConcurrentNodes = new(intstr.FromInt32(int32(len(on))))
	if err := cl.Create(ctx, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteList(t, l) })
	return l
}

// nodeImage is node n's agent's status of the image ref.
func nodeImage(t *testing.T, n cluster.Node, ref string) prepullv1.NodeImageStatus {
	t.Helper()
	st, err := nodeImageStatus(n, ref)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// nodeImageStatus is node n's agent's status of the image ref, or an
// error saying why there is none.
func nodeImageStatus(n cluster.Node, ref string) (prepullv1.NodeImageStatus, error) {
	set, err := expanded(n)
	if err != nil {
		return prepullv1.NodeImageStatus{}, err
	}
	i := slices.IndexFunc(set.Status.Images, func(st prepullv1.NodeImageStatus) bool { return st.Image == ref })
	if i < 0 {
		return prepullv1.NodeImageStatus{}, fmt.Errorf("%s reports no %s: %+v", n.Name, ref, set.Status.Images)
	}
	return set.Status.Images[i], nil
}

// expanded is node n's NodeImageSet with its plan's images in its spec
// and its status (empty when the node has none yet).
func expanded(n cluster.Node) (*prepullv1.NodeImageSet, error) {
	set := &prepullv1.NodeImageSet{}
	if err := cl.Get(ctx, client.ObjectKey{Name: n.Name}, set); err != nil {
		return set, client.IgnoreNotFound(err)
	}
	return set, imageplan.Expand(ctx, cl, set)
}

// blobsOf are the config and layers of the image ref, as the registry
// has them.
func blobsOf(t *testing.T, ref string) []v1.Descriptor {
	t.Helper()
	_, rest, _ := strings.Cut(ref, "/")
	d, err := name.NewDigest(cluster.RegistryHost+"/"+rest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(d)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return append([]v1.Descriptor{m.Config}, m.Layers...)
}

// contentBlob is the file of blob hex in node n's content store.
func contentBlob(n cluster.Node, hex string) string {
	return filepath.Join(n.Dir, "containerd", "root", "io.containerd.content.v1.content", "blobs", "sha256", hex)
}

// flipByte inverts the byte at off of file, and again when the test ends.
func flipByte(t *testing.T, file string, off int64) {
	t.Helper()
	flip := func() error {
		f, err := os.OpenFile(file, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			return err
		}
		b[0] ^= 0xff
		_, err = f.WriteAt(b, off)
		return err
	}
	if err := flip(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := flip(); err != nil {
			t.Error(err)
		}
	})
}

// receivingFrom is the address of the peer that node n's agent is
// receiving a blob from now: a connection to a peer port that has brought
// at least min bytes and is still bringing more.
func receivingFrom(n cluster.Node, min int64) (string, error) {
	seen := map[string]int64{}
	for range 2 {
		out, err := exec.Command("ip", "netns", "exec", n.Name, "ss", "-tniH", "state", "established", "( dport = :8085 )").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("ss: %v: %s", err, out)
		}
		var peerIP string
		for _, f := range strings.Fields(string(out)) {
			if host, port, err := net.SplitHostPort(f); err == nil && port == "8085" {
				peerIP = strings.Trim(host, "[]")
			}
			if v, ok := strings.CutPrefix(f, "bytes_received:"); ok && peerIP != "" {
				got, _ := strconv.ParseInt(v, 10, 64)
				if last, ok := seen[peerIP]; ok && got >= min && got > last {
					return peerIP, nil
				}
				seen[peerIP] = got
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", fmt.Errorf("no blob arriving from a peer: %v", seen)
}

// killAgent kills node n's agent container with SIGKILL, through its
// runtime (a CRI stop without a grace period); the kubelet restarts it.
func killAgent(t *testing.T, n cluster.Node) {
	t.Helper()
	rs := runtimeService(t, n)
	list, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": "prepull-system", "io.kubernetes.container.name": "agent"},
	}})
	if err != nil || len(list.GetContainers()) != 1 {
		t.Fatalf("%s: the agent's container: %v (%d running)", n.Name, err, len(list.GetContainers()))
	}
	if _, err := rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: list.Containers[0].Id, Timeout: 0}); err != nil {
		t.Fatalf("%s: kill the agent: %v", n.Name, err)
	}
}

// agentPod is node n's agent's pod.
func agentPod(t *testing.T, n cluster.Node) *corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods("prepull-system").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=prepull-agent", FieldSelector: "spec.nodeName=" + n.Name})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("%s: the agent's pod: %v", n.Name, err)
	}
	return &pods.Items[0]
}

// agentLog is the log of node n's agent's running container.
func agentLog(t *testing.T, n cluster.Node) string {
	t.Helper()
	raw, err := cs.CoreV1().Pods("prepull-system").GetLogs(agentPod(t, n).Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}
