package prepulllist_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// TestControllerBinary runs `prepull controller` as it runs in a cluster,
// on its own apiserver, and reads its readiness and metrics while a list
// rolls out to one node whose agent the test plays.
func TestControllerBinary(t *testing.T) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
	}
	cfg, api := testground.StartAPIServer(t, "../../deploy/crd")
	reg := testground.StartRegistry(t)
	c := testground.APIClient(t, cfg, controllerNS, "shop")
	e := &env{c: c, top: t}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, api.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	proc := startController(t, bin, kubeconfig, reg, "--leader-elect=false")
	metricsPort, probePort := proc.metrics, proc.probe

	// No list yet: once its caches are synced, the leader has nothing to
	// reconcile, and is ready.
	if _, body := testground.HTTPGet(t, probePort, "/readyz?verbose", true); !strings.Contains(body, "[+]reconciled ok") || !strings.Contains(body, "[+]api ok") {
		t.Fatalf("/readyz with no list: %q", body)
	}
	img := reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	e.node(t, "bin-node-1", nil)
	l := list("shop", "web", img.Tag)
	e.mustCreate(t, l)
	e.handed(t, "bin-node-1", 1)
	e.agent(t, "bin-node-1", nil)
	eventually(t, "list Ready", func() error {
		got := &prepullv1.PrePullList{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
			return err
		}
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		return nil
	})
	if code, body := testground.HTTPGet(t, probePort, "/readyz?verbose", false); code != http.StatusOK {
		t.Errorf("/readyz after a rollout: %d %q", code, body)
	}
	eventually(t, "metrics of the rollout", func() error {
		_, body := testground.HTTPGet(t, metricsPort, "/metrics", true)
		for _, want := range []string{
			`prepull_tag_resolutions_total{result="resolved"} 1`,
			`prepull_list_nodes{name="web",namespace="shop",state="ready"} 1`,
			`prepull_list_nodes{name="web",namespace="shop",state="failed"} 0`,
			`prepull_list_rollouts_total{name="web",namespace="shop"} 1`,
			`controller_runtime_reconcile_total{controller="prepulllist",result="success"}`,
			`controller_runtime_reconcile_errors_total{controller="prepulllist"}`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("metrics lack %q", want)
			}
		}
		return nil
	})
}

// controllerProc is a `prepull controller` a test started.
type controllerProc struct {
	metrics, probe int
	// exited is closed once the process has ended, with err.
	exited chan struct{}
	err    error
	// mayExit says the test expects it to end by itself.
	mayExit bool
	once    sync.Once
	cmd     *exec.Cmd
	logPath string
}

// kill ends the process by its PID, and fails the test if it had ended by
// itself unexpectedly.
func (p *controllerProc) kill(t *testing.T) {
	p.once.Do(func() {
		select {
		case <-p.exited:
			if !p.mayExit {
				t.Errorf("controller (metrics :%d) had exited before the test stopped it: %v", p.metrics, p.err)
			}
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// startController starts `prepull controller` with its own metrics and
// probe ports and args; it is killed when the test ends, its log shown if
// the test failed.
func startController(t *testing.T, bin, kubeconfig string, reg *testground.Registry, args ...string) *controllerProc {
	t.Helper()
	p := &controllerProc{metrics: testground.FreePort(t), probe: testground.FreePort(t), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"controller", "--namespace=" + controllerNS,
		"--insecure-registries=" + reg.Host, "--secret-poll=1s",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", p.metrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", p.probe)}, args...)...)
	p.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logPath := filepath.Join(t.TempDir(), "controller.log")
	p.logPath = logPath
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := testground.StartChild(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("controller (metrics :%d) log:\n%s", p.metrics, data)
		}
	})
	return p
}

// binaryGround is what the tests of the controller binary run on: a real
// API server with the CRDs, a registry, and a kubeconfig for the binary.
type binaryGround struct {
	bin, kubeconfig string
	api             *envtest.Environment
	reg             *testground.Registry
	c               client.Client
	e               *env
}

func newBinaryGround(t *testing.T) *binaryGround {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
	}
	cfg, api := testground.StartAPIServer(t, "../../deploy/crd")
	g := &binaryGround{bin: bin, api: api, reg: testground.StartRegistry(t)}
	g.c = testground.APIClient(t, cfg, controllerNS, "shop")
	g.e = &env{c: g.c, top: t}
	g.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(g.kubeconfig, api.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// pacedRollout follows a rollout of one image to nodes, one node at a
// time, and plays each node's agent once the node is handed the image.
type pacedRollout struct {
	g     *binaryGround
	l     *prepullv1.PrePullList
	image string
	nodes []string
	done  map[string]bool
}

// startPaced creates the nodes and a list of tag that rolls out to one node
// at a time.
func (g *binaryGround) startPaced(t *testing.T, tag, digest string, nodes ...string) *pacedRollout {
	for _, n := range nodes {
		g.e.node(t, n, nil)
	}
	l := list("shop", "web", tag)
	l.Spec.Rollout.MaxConcurrentNodes = intOrString("1")
	g.e.mustCreate(t, l)
	return &pacedRollout{g: g, l: l, image: digest, nodes: nodes, done: map[string]bool{}}
}

// next waits until exactly one node not done yet is handed the image, and
// returns it.
func (r *pacedRollout) next(t *testing.T) string {
	t.Helper()
	return r.nextWithin(t, wait)
}

func (r *pacedRollout) nextWithin(t *testing.T, within time.Duration) string {
	t.Helper()
	var got string
	testground.Eventually(t, within, "the next node handed", func() error {
		var handed []string
		for _, n := range r.nodes {
			if !r.done[n] && r.g.e.entry(n, r.image) != nil {
				handed = append(handed, n)
			}
		}
		if len(handed) != 1 {
			return fmt.Errorf("nodes handed and not done: %v; list status %+v", handed, r.g.e.getList(t, r.l).Status)
		}
		got = handed[0]
		return nil
	})
	return got
}

// finish plays the agent of node n, which holds the image.
func (r *pacedRollout) finish(t *testing.T, n string) {
	t.Helper()
	r.g.e.agent(t, n, nil)
	r.done[n] = true
}

// complete plays every remaining node as it is handed the image, and waits
// for the list to be Ready on all.
func (r *pacedRollout) complete(t *testing.T) {
	t.Helper()
	for len(r.done) < len(r.nodes) {
		r.finish(t, r.next(t))
	}
	eventually(t, "list Ready on every node", func() error {
		got := r.g.e.getList(t, r.l)
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		if got.Status.Nodes.Ready != int32(len(r.nodes)) {
			return fmt.Errorf("nodes %+v", got.Status.Nodes)
		}
		return nil
	})
	for _, n := range r.nodes {
		if en := r.g.e.entry(n, r.image); en == nil || len(activeOwners(en)) != 1 {
			t.Errorf("node %s: entry %+v", n, en)
		}
	}
}

// resolvedAt is when the tag's one TagResolution was last confirmed.
func (g *binaryGround) resolvedAt(t *testing.T, tag string) *metav1.Time {
	t.Helper()
	tr := &prepullv1.TagResolution{}
	if err := g.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(tag)}, tr); err != nil {
		t.Fatal(err)
	}
	return tr.Status.ResolvedAt
}

const leaderMetric = `leader_election_master_status{name="prepull-controller.prepull.io"} 1`

// leads reports whether p holds the lease, by its own metric.
func (p *controllerProc) leads(t *testing.T) bool {
	_, body := testground.HTTPGet(t, p.metrics, "/metrics", true)
	return strings.Contains(body, leaderMetric)
}

// TestControllerFailover runs two `prepull controller` replicas with leader
// election on one apiserver, kills the leader with SIGKILL while a paced
// rollout is half-way, and shows that the other takes the lease, completes
// the rollout without resolving the tag again, and leaves every node's
// NodeImageSet whole.
func TestControllerFailover(t *testing.T) {
	g := newBinaryGround(t)
	img := g.reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	replicas := []*controllerProc{
		startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true"),
		startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true"),
	}
	first := -1
	eventually(t, "one leader", func() error {
		var leading []int
		for i, r := range replicas {
			if r.leads(t) {
				leading = append(leading, i)
			}
		}
		if len(leading) != 1 {
			return fmt.Errorf("replicas leading: %v", leading)
		}
		first = leading[0]
		return nil
	})
	r := g.startPaced(t, img.Tag, img.Digest, "fo-node-1", "fo-node-2", "fo-node-3", "fo-node-4")
	// Two nodes done under the first leader, one at a time.
	r.finish(t, r.next(t))
	r.finish(t, r.next(t))
	resolvedAt := g.resolvedAt(t, img.Tag)

	replicas[first].kill(t)
	second := replicas[1-first]
	testground.Eventually(t, 60*time.Second, "the other replica leads", func() error {
		if !second.leads(t) {
			return fmt.Errorf("the other replica does not lead")
		}
		return nil
	})
	r.complete(t)
	if again := g.resolvedAt(t, img.Tag); !again.Equal(resolvedAt) {
		t.Errorf("the tag was resolved again after the failover: %v, then %v", resolvedAt, again)
	}
	_, body := testground.HTTPGet(t, second.metrics, "/metrics", true)
	if strings.Contains(body, `prepull_tag_resolutions_total{result="resolved"}`) {
		t.Errorf("the new leader resolved the tag:\n%s", grepLines(body, "prepull_tag_resolutions_total"))
	}
}

// TestControllerRidesOutAnAPIServerOutage stops the API server for a
// minute while a paced rollout is half-way. The leader loses its lease and
// exits, as a leader must when it cannot renew it; the replica started in
// its place while the API server is still away (as the kubelet restarts
// it) waits for it instead of exiting, live and not ready, and completes
// the rollout once it is back, without resolving the tag again.
func TestControllerRidesOutAnAPIServerOutage(t *testing.T) {
	g := newBinaryGround(t)
	img := g.reg.MustPushRandom(t, "shop/web:1.0", 64<<10, 1)
	leader := startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true")
	r := g.startPaced(t, img.Tag, img.Digest, "out-node-1", "out-node-2", "out-node-3")
	r.finish(t, r.next(t))
	handed := r.next(t)
	resolvedAt := g.resolvedAt(t, img.Tag)

	const outage = 60 * time.Second
	apiServer := g.api.ControlPlane.APIServer
	if err := apiServer.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	leader.mayExit = true
	select {
	case <-leader.exited:
		t.Logf("the leader exited %s into the outage: %v", time.Since(stopped).Round(time.Second), leader.err)
	case <-time.After(outage / 2):
		t.Logf("the leader still runs %s into the outage; the test stops it", outage/2)
		leader.kill(t)
	}
	replacement := startController(t, g.bin, g.kubeconfig, g.reg, "--leader-elect=true")
	if code, body := testground.HTTPGet(t, replacement.probe, "/healthz", true); code != http.StatusOK {
		t.Errorf("/healthz of the waiting replica: %d %q", code, body)
	}
	if code, body := testground.HTTPGet(t, replacement.probe, "/readyz", false); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the API server") {
		t.Errorf("/readyz of the waiting replica: %d %q", code, body)
	}
	time.Sleep(time.Until(stopped.Add(outage)))
	select {
	case <-replacement.exited:
		t.Fatalf("the replica started during the outage exited: %v", replacement.err)
	default:
	}
	if err := apiServer.Start(); err != nil {
		t.Fatalf("start the API server again: %v", err)
	}
	back := time.Now()
	r.finish(t, handed)
	// The replica takes the lease once the one its predecessor held has
	// not been renewed for the lease's duration (15 s), as it observes it:
	// the API server's return plus that, and a retry period.
	r.finish(t, r.nextWithin(t, 45*time.Second))
	r.complete(t)
	t.Logf("list Ready %s after the API server returned", time.Since(back).Round(100*time.Millisecond))
	if again := g.resolvedAt(t, img.Tag); !again.Equal(resolvedAt) {
		t.Errorf("the tag was resolved again after the outage: %v, then %v", resolvedAt, again)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestNoSecretLeaks runs both binaries at their highest verbosity against a
// registry that requires basic auth: a list whose secret holds the wrong
// password (the image fails Unauthorized), then the secret rotated to the
// right one (the image is pulled, the tag resolved with it). Nothing the
// binaries logged or served as metrics, and no object in the API server
// other than the Secrets themselves, holds the password or a base64 form
// of it.
func TestNoSecretLeaks(t *testing.T) {
	g := newBinaryGround(t)
	const user, password = "alice", "Pa55-w0rd-never-shown"
	auth := testground.StartRegistry(t, testground.WithBasicAuth(user, password))
	ctd := testground.StartContainerd(t)
	ctd.TrustRegistry(auth)
	pinned := auth.MustPushRandom(t, "shop/private:1.0", 64<<10, 1)
	tagged := auth.MustPushRandom(t, "shop/tagged:1.0", 64<<10, 1)

	ctrlProc := startController(t, g.bin, g.kubeconfig, auth, "--leader-elect=false", "--zap-log-level=10")
	agentLog := filepath.Join(t.TempDir(), "agent.log")
	agentMetrics := testground.FreePort(t)
	testground.StartBinary(t, g.bin, g.api.KubeConfig, agentLog, "agent", "--node-name=leak-node", "--credentials=mirrors", "--cri-endpoint="+ctd.Socket,
		"--namespace="+controllerNS, "--status-interval=200ms", "--zap-log-level=10",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", agentMetrics),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", testground.FreePort(t)))

	dockerConfig := func(pw string) []byte {
		return []byte(fmt.Sprintf(`{"auths":{%q:{"username":%q,"password":%q}}}`, auth.Host, user, pw))
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "regcred"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: dockerConfig("wrong-" + password)},
	}
	g.e.mustCreate(t, secret)
	g.e.node(t, "leak-node", nil)
	l := list("shop", "private", pinned.Digest)
	l.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	l.Spec.Rollout.BackoffLimit = ptr.To(int32(0))
	g.e.mustCreate(t, l)
	eventually(t, "the wrong password fails the pull", func() error {
		got := g.e.getList(t, l)
		if len(got.Status.Failures) != 1 || got.Status.Failures[0].Reason != "Unauthorized" {
			return fmt.Errorf("failures %+v", got.Status.Failures)
		}
		return nil
	})

	secret.Data[corev1.DockerConfigJsonKey] = dockerConfig(password)
	if err := g.c.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rotated secret pulls the image", func() error {
		got := g.e.getList(t, l)
		if cond := condition(got, prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		return nil
	})
	withTag := list("shop", "tagged", tagged.Tag)
	withTag.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	g.e.mustCreate(t, withTag)
	testground.Eventually(t, 60*time.Second, "the tag resolved and pulled with the secret", func() error {
		if cond := condition(g.e.getList(t, withTag), prepullv1.ConditionReady); cond == nil || cond.Status != "True" {
			return fmt.Errorf("Ready %+v", cond)
		}
		return nil
	})

	// A registry that sends its blobs to object storage, whose pre-signed
	// URL answers 403 with an error document that repeats the signature:
	// the image fails, and no status or event shows the URL's query or the
	// document.
	const signature = "Sig-never-shown-0123456789"
	plain := testground.StartRegistry(t)
	presigned := plain.MustPushRandom(t, "shop/presigned:1.0", 64<<10, 1)
	front := presigningFront(t, plain, signature)
	ctd.TrustHost(front)
	withURL := list("shop", "presigned", front+strings.TrimPrefix(presigned.Digest, plain.Host))
	withURL.Spec.Rollout.BackoffLimit = ptr.To(int32(0))
	g.e.mustCreate(t, withURL)
	eventually(t, "the blob's pre-signed URL fails the pull", func() error {
		got := g.e.getList(t, withURL)
		if len(got.Status.Failures) != 1 || !strings.Contains(got.Status.Failures[0].Message, "?…") {
			return fmt.Errorf("failures %+v: want one whose message shows the URL without its query", got.Status.Failures)
		}
		return nil
	})

	forms := map[string]string{
		"the password":                    password,
		"its base64":                      base64.StdEncoding.EncodeToString([]byte(password)),
		"the base64 of user:password":     base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
		"the base64 of the docker config": base64.StdEncoding.EncodeToString(dockerConfig(password)),
	}
	captured := map[string]string{}
	for name, path := range map[string]string{"the controller's log": ctrlProc.logPath, "the agent's log": agentLog} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 {
			t.Fatalf("%s is empty: the scan would prove nothing", name)
		}
		captured[name] = string(data)
	}
	_, captured["the controller's metrics"] = testground.HTTPGet(t, ctrlProc.metrics, "/metrics", true)
	_, captured["the agent's metrics"] = testground.HTTPGet(t, agentMetrics, "/metrics", true)
	for name, obj := range map[string]client.ObjectList{
		"PrePullLists": &prepullv1.PrePullListList{}, "NodeImageSets": &prepullv1.NodeImageSetList{},
		"TagResolutions": &prepullv1.TagResolutionList{}, "ImagePlans": &prepullv1.ImagePlanList{}, "Events": &corev1.EventList{}, "events.k8s.io Events": &eventsv1.EventList{},
		"Nodes": &corev1.NodeList{}, "ConfigMaps": &corev1.ConfigMapList{},
	} {
		if err := g.c.List(ctx, obj); err != nil {
			t.Fatalf("list %s: %v", name, err)
		}
		data, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		captured[name] = string(data)
	}
	for where, text := range captured {
		for form, secret := range forms {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds %s", where, form)
			}
		}
	}
	for _, where := range []string{"PrePullLists", "NodeImageSets", "Events", "events.k8s.io Events"} {
		for _, s := range []string{signature, "X-Amz-Signature", "X-Amz-Credential", "<Error>"} {
			if strings.Contains(captured[where], s) {
				t.Errorf("%s hold %q, of the blob's pre-signed URL or the object store's answer", where, s)
			}
		}
	}
	// From verbosity 8 client-go logs API bodies, Secrets' too, and as a
	// hex dump where they are binary, which no substring scan would find:
	// the binaries log no body at all, whatever --zap-log-level asks.
	for _, name := range []string{"the controller's log", "the agent's log"} {
		for _, body := range []string{"Request Body", "Response Body"} {
			if strings.Contains(captured[name], body) {
				t.Errorf("%s holds API bodies (%q)", name, body)
			}
		}
	}
	if !strings.Contains(captured["the agent's log"], "Unauthorized") && !strings.Contains(captured["the agent's log"], "401") {
		t.Errorf("the agent's log does not show the failed pull: the scan read the wrong log")
	}
}

// presigningFront serves reg's API on a loopback address of its own, but
// redirects each blob to a pre-signed URL on itself, as registries backed by
// object storage do; that URL answers 403 with an error document holding
// the signature, as an expired one would. It returns the front's host.
func presigningFront(t *testing.T, reg *testground.Registry, signature string) string {
	t.Helper()
	target, err := url.Parse("http://" + reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/objects/"):
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message><X-Amz-Signature>%s</X-Amz-Signature></Error>`, signature)
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:"):
			blob := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			http.Redirect(w, r, "/objects/"+blob+"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261207&X-Amz-Expires=60&X-Amz-Signature="+signature, http.StatusTemporaryRedirect)
		default:
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
