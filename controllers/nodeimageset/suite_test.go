package nodeimageset_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/doctor"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/verify"
)

const ns = "prepull-system"

var ctx = context.Background()

// env is one apiserver, one containerd and two registries the subtests
// share; each subtest plays its own node with its own images.
type env struct {
	cfg     *rest.Config
	api     *envtest.Environment
	c       client.Client
	ctd     *testground.Containerd
	images  *cri.Remote
	store   *containerd.Store
	public  *testground.Registry
	private *testground.Registry
	scheme  *runtime.Scheme
}

func setup(t *testing.T) *env {
	t.Helper()
	ctrl.SetLogger(testground.Logger(t))
	e := &env{}
	e.cfg, e.api = testground.StartAPIServer(t, "../../deploy/crd")
	e.ctd = testground.StartContainerd(t)
	e.public = testground.StartRegistry(t)
	e.private = testground.StartRegistry(t, testground.WithBasicAuth("alice", "s3cret"))
	e.ctd.TrustRegistry(e.public)
	e.ctd.TrustRegistry(e.private)
	e.images, e.store = e.ctd.Clients(t)
	e.scheme = testground.Scheme()
	e.c = testground.APIClient(t, e.cfg, ns)
	return e
}

// agent runs the agent's reconciler for node in this process until the
// subtest ends; tune adjusts it before it starts.
func (e *env) agent(t *testing.T, node string, tune func(*nodeimageset.Reconciler)) {
	t.Helper()
	mgr, err := ctrl.NewManager(e.cfg, ctrl.Options{
		Scheme:  e.scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&prepullv1.NodeImageSet{}: {Field: fields.OneTermEqualSelector("metadata.name", node)},
		}},
		Controller: configNoNameCheck(),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &nodeimageset.Reconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
		NodeName: node, Namespace: ns,
		Images: e.images, Store: e.store, Runtime: "containerd test",
		StatusInterval: 200 * time.Millisecond, ResyncInterval: 2 * time.Second,
		BackoffBase: 200 * time.Millisecond, BackoffMax: time.Second,
		// The subtests' agents share one containerd.
		KeepStrayPins: true,
		Credentials:   &nodeimageset.MirrorCredentials{Reader: mgr.GetAPIReader(), Namespace: ns},
	}
	if tune != nil {
		tune(r)
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent manager: %v", err)
		}
	})
}

// agentBinary starts `prepull agent` (bin) for node on this env's API
// server and containerd, with its metrics and probes on the ports given;
// it is killed when the test ends.
//
// A non-empty apiAddr ("host:port") is where the agent reaches the API
// server instead of its own address (a proxy in front of it).
func (e *env) agentBinary(t *testing.T, bin, node string, metricsPort, probePort int, apiAddr string) *exec.Cmd {
	t.Helper()
	config := e.api.KubeConfig
	if apiAddr != "" {
		if !strings.Contains(string(config), e.apiAddr(t)) {
			t.Fatalf("the kubeconfig does not name the API server at %s", e.apiAddr(t))
		}
		config = []byte(strings.ReplaceAll(string(config), e.apiAddr(t), apiAddr))
	}
	return testground.StartBinary(t, bin, config, filepath.Join(t.TempDir(), "agent.log"), "agent", "--node-name="+node, "--credentials=mirrors",
		"--cri-endpoint="+e.ctd.Socket, "--namespace="+ns, "--status-interval=200ms", "--collect-stray-pins=false",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metricsPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probePort))
}

// apiAddr is the API server's "host:port".
func (e *env) apiAddr(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(e.cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// owner is an active owner entry for list ("namespace/name"). The list's
// settings are the PrePullList's: setSpec creates one with a backoff limit
// of 1 unless setList made it first.
func owner(list string, tags ...string) prepullv1.ImageOwner {
	return prepullv1.ImageOwner{List: list, Tags: tags}
}

// entry is a spec entry for digest, its owners sorted as the controller
// sorts them.
func entry(digest string, owners ...prepullv1.ImageOwner) prepullv1.NodeImage {
	e := prepullv1.NodeImage{Image: digest, Owners: owners}
	e.SortOwners()
	return e
}

// setList creates or updates the PrePullList owner ("namespace/name") that
// the agent reads an owner's settings from: pinned, onDelete Unpin, a
// backoff limit of 1, then what edit changes.
// releaseWithRemove has node's agent make img present for the list
// shop/node, then release it with onDelete: Remove, and waits until the
// image reads Released as check says.
func (e *env) releaseWithRemove(t *testing.T, node string, img testground.Pushed, check func(*prepullv1.NodeImageStatus) error) {
	t.Helper()
	list := "shop/" + node
	e.agent(t, node, nil)
	e.setSpec(t, node, entry(img.Digest, owner(list, img.Tag)))
	e.phase(t, node, img.Digest, prepullv1.PhasePresent, nil)
	gone := owner(list, img.Tag)
	gone.Releasing = true
	e.setList(t, list, func(s *prepullv1.PrePullListSpec) { s.OnDelete = prepullv1.DeleteRemove })
	e.setSpec(t, node, entry(img.Digest, gone))
	e.phase(t, node, img.Digest, prepullv1.PhaseReleased, check)
}

func (e *env) setList(t *testing.T, owner string, edit func(*prepullv1.PrePullListSpec)) {
	t.Helper()
	namespace, name, _ := strings.Cut(owner, "/")
	if err := e.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	l := &prepullv1.PrePullList{}
	err := e.c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, l)
	if apierrors.IsNotFound(err) {
		l = &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
		l.Spec.Images = []prepullv1.PrePullImage{{Image: "placeholder/app:v1"}}
		l.Spec.Rollout.BackoffLimit = ptr(int32(1))
	} else if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&l.Spec)
	}
	if l.ResourceVersion == "" {
		err = e.c.Create(ctx, l)
	} else {
		err = e.c.Update(ctx, l)
	}
	if err != nil {
		t.Fatalf("write list %s: %v", owner, err)
	}
}

// publishKeys writes keys into the list owner's status, as the controller
// publishes spec.verify's keys for the agents.
func (e *env) publishKeys(t *testing.T, owner string, keys ...verify.Key) {
	t.Helper()
	key, _ := prepullv1.OwnerKey(owner)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l := &prepullv1.PrePullList{}
		if err := e.c.Get(ctx, key, l); err != nil {
			return err
		}
		l.Status.VerifyKeys = nil
		for _, k := range keys {
			l.Status.VerifyKeys = append(l.Status.VerifyKeys, prepullv1.VerifyKeyStatus{Source: k.Source, Fingerprint: k.Fingerprint, PEM: k.PEM})
		}
		return e.c.Status().Update(ctx, l)
	})
	if err != nil {
		t.Fatalf("publish the keys of %s: %v", owner, err)
	}
}

// setSpec creates or replaces node's NodeImageSet spec, as the controller
// would.
func (e *env) setSpec(t *testing.T, node string, images ...prepullv1.NodeImage) {
	t.Helper()
	for _, img := range images {
		for _, o := range img.Owners {
			key, _ := prepullv1.OwnerKey(o.List)
			if err := e.c.Get(ctx, key, &prepullv1.PrePullList{}); apierrors.IsNotFound(err) {
				e.setList(t, o.List, nil)
			}
		}
	}
	set := &prepullv1.NodeImageSet{}
	err := e.c.Get(ctx, client.ObjectKey{Name: node}, set)
	if apierrors.IsNotFound(err) {
		set = &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: prepullv1.NodeImageSetSpec{Images: images}}
		if err := e.c.Create(ctx, set); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	orig := set.DeepCopy()
	set.Spec.Images = images
	if err := e.c.Patch(ctx, set, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) status(t *testing.T, node, image string) *prepullv1.NodeImageStatus {
	t.Helper()
	set := &prepullv1.NodeImageSet{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: node}, set); err != nil {
		t.Fatal(err)
	}
	for i := range set.Status.Images {
		if set.Status.Images[i].Image == image {
			return &set.Status.Images[i]
		}
	}
	return nil
}

const wait = 60 * time.Second

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	testground.Eventually(t, wait, what, cond)
}

// phase waits until image reaches phase on node, and returns its status.
func (e *env) phase(t *testing.T, node, image string, phase prepullv1.ImagePhase, check func(*prepullv1.NodeImageStatus) error) *prepullv1.NodeImageStatus {
	t.Helper()
	var st *prepullv1.NodeImageStatus
	eventually(t, fmt.Sprintf("%s %s on %s", image, phase, node), func() error {
		st = e.status(t, node, image)
		if st == nil || st.Phase != phase {
			return fmt.Errorf("status %+v", st)
		}
		if check != nil {
			return check(st)
		}
		return nil
	})
	return st
}

// runtimeID is the image ID the runtime reports for ref, or "" when absent.
func (e *env) runtimeID(t *testing.T, ref string) string {
	t.Helper()
	img, err := e.images.ImageStatus(ctx, ref)
	if errors.Is(err, cri.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return img.ID
}

func (e *env) pinned(t *testing.T, ref string) bool {
	t.Helper()
	img, err := e.images.ImageStatus(ctx, ref)
	return err == nil && img.Pinned
}

func TestAgent(t *testing.T) {
	e := setup(t)

	t.Run("two entries claiming one tag: one keeps it, the other is a TagConflict, the tag never flaps", func(t *testing.T) {
		v1 := e.public.MustPushRandom(t, "conflict/app:v1", 1024, 1)
		v2 := e.public.MustPushRandom(t, "conflict/app:v1", 1024, 1)
		win, lose := v1, v2
		if v2.Digest < v1.Digest {
			win, lose = v2, v1
		}
		e.agent(t, "conflict", nil)
		e.setSpec(t, "conflict",
			entry(v1.Digest, owner("shop/conflict-a", v1.Tag)),
			entry(v2.Digest, owner("shop/conflict-b", v2.Tag)))
		e.phase(t, "conflict", win.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned yet")
			}
			return nil
		})
		st := e.phase(t, "conflict", lose.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonTagConflict || !strings.Contains(st.LastError, digestOf(win.Digest)) || !strings.Contains(st.LastError, digestOf(lose.Digest)) {
			t.Errorf("status %+v: want TagConflict naming both digests", st)
		}
		if e.runtimeID(t, win.Tag) != win.ID {
			t.Fatalf("the tag does not name the chosen entry's image")
		}
		if e.runtimeID(t, lose.Digest) != "" {
			t.Errorf("the losing entry was pulled")
		}

		// Over 30 s — fifteen of the agent's resyncs — containerd records
		// no change of the tag.
		var w cri.ImageWatcher = e.store
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		events, err := w.WatchImages(wctx)
		if err != nil {
			t.Fatal(err)
		}
		moves := 0
		for name := range events {
			if name == win.Tag {
				moves++
			}
		}
		if moves != 0 {
			t.Errorf("the tag's record changed %d times in 30 s, want 0", moves)
		}
		if e.runtimeID(t, win.Tag) != win.ID {
			t.Errorf("the tag moved away from the chosen entry")
		}
	})

	t.Run("pulls by digest, makes the tag name it, verifies and pins", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "basic/app:v1", 64<<10, 2)
		e.agent(t, "basic", nil)
		e.setSpec(t, "basic", entry(img.Digest, owner("shop/web", img.Tag)))
		st := e.phase(t, "basic", img.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned yet")
			}
			return nil
		})
		if _, d, _ := strings.Cut(img.Digest, "@"); st.Digest != d {
			t.Errorf("status digest %s, want %s", st.Digest, d)
		}
		if !slices.Equal(st.PinOwners, []string{"shop/web"}) || st.Attempts != 1 || st.BytesTotal == 0 {
			t.Errorf("status %+v: want pin owner shop/web, 1 attempt, a size", st)
		}
		if got := e.runtimeID(t, img.Tag); got != img.ID {
			t.Errorf("CRI status of the tag %s: image %q, want %s", img.Tag, got, img.ID)
		}
		if !e.pinned(t, img.Tag) || !e.pinned(t, img.Digest) {
			t.Errorf("CRI does not report the image pinned")
		}
		set := &prepullv1.NodeImageSet{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: "basic"}, set); err != nil {
			t.Fatal(err)
		}
		if set.Status.Runtime != "containerd test" || set.Status.ImageFilesystem == nil || set.Status.ImageFilesystem.CapacityBytes == 0 {
			t.Errorf("node status %+v: want runtime and image filesystem", set.Status)
		}
	})

	t.Run("a multi-platform index is pulled by its index digest", func(t *testing.T) {
		idx, err := testground.RandomIndex(1024, 1, testground.Linux("amd64"), testground.Linux("arm64"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := e.public.PushIndex("multi/app:v1", idx, goruntime.GOARCH)
		if err != nil {
			t.Fatal(err)
		}
		e.agent(t, "multi", nil)
		e.setSpec(t, "multi", entry(img.Digest, owner("shop/multi", img.Tag)))
		st := e.phase(t, "multi", img.Digest, prepullv1.PhasePresent, nil)
		if _, d, _ := strings.Cut(img.Digest, "@"); st.Digest != d {
			t.Errorf("status digest %s, want the index digest %s", st.Digest, d)
		}
		if got := e.runtimeID(t, img.Tag); got != img.ID {
			t.Errorf("the tag names %s, want this platform's image %s", got, img.ID)
		}
	})

	t.Run("a failed image never stops the others", func(t *testing.T) {
		good := e.public.MustPushRandom(t, "mixed/good:v1", 1024, 1)
		private := e.private.MustPushRandom(t, "mixed/private:v1", 1024, 1)
		missing := e.public.Repo("mixed/missing@sha256:" + strings.Repeat("1", 64))
		cfg := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"wrong"}}}`, e.private.Host)
		// The controller's mirror of the list's secret, by the name the
		// agent reads it by.
		mirror := prepullv1.MirrorSecretName("shop", "private", "wrong-creds")
		if err := e.c.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: mirror},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
		}); err != nil {
			t.Fatal(err)
		}
		withSecret := owner("shop/private", private.Tag)
		e.setList(t, "shop/private", func(s *prepullv1.PrePullListSpec) {
			s.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "wrong-creds"}}
		})
		e.agent(t, "mixed", nil)
		e.setSpec(t, "mixed",
			entry(private.Digest, withSecret),
			entry(missing, owner("shop/missing")),
			entry(good.Digest, owner("shop/good", good.Tag)))
		e.phase(t, "mixed", good.Digest, prepullv1.PhasePresent, nil)
		st := e.phase(t, "mixed", private.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonUnauthorized || !strings.Contains(st.LastError, "401") || st.Attempts != 2 {
			t.Errorf("wrong credentials: %+v, want Unauthorized with the registry's 401 after 2 attempts (backoff limit 1)", st)
		}
		if strings.Contains(st.LastError, "wrong") {
			t.Errorf("the status reveals the password: %q", st.LastError)
		}
		st = e.phase(t, "mixed", missing, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonNotFound || !strings.Contains(st.LastError, "mixed/missing") {
			t.Errorf("missing image: %+v, want NotFound naming the image", st)
		}

		// Right credentials in the secret: a changed spec is tried again.
		s := &corev1.Secret{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: mirror}, s); err != nil {
			t.Fatal(err)
		}
		s.Data[corev1.DockerConfigJsonKey] = []byte(strings.Replace(cfg, "wrong", "s3cret", 1))
		if err := e.c.Update(ctx, s); err != nil {
			t.Fatal(err)
		}
		e.setList(t, "shop/private", func(s *prepullv1.PrePullListSpec) { s.Rollout.BackoffLimit = ptr(int32(2)) })
		e.setSpec(t, "mixed",
			entry(private.Digest, withSecret),
			entry(missing, owner("shop/missing")),
			entry(good.Digest, owner("shop/good", good.Tag)))
		e.phase(t, "mixed", private.Digest, prepullv1.PhasePresent, nil)
	})

	t.Run("a fixed pull secret is tried again at once, the spec unchanged", func(t *testing.T) {
		private := e.private.MustPushRandom(t, "rotated/private:v1", 1024, 1)
		cfg := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"wrong"}}}`, e.private.Host)
		mirror := prepullv1.MirrorSecretName("rotated", "private", "creds")
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: mirror},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
		}
		if err := e.c.Create(ctx, secret); err != nil {
			t.Fatal(err)
		}
		e.setList(t, "rotated/private", func(s *prepullv1.PrePullListSpec) {
			s.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "creds"}}
			s.Rollout.BackoffLimit = ptr(int32(0))
		})
		e.agent(t, "rotated", nil)
		e.setSpec(t, "rotated", entry(private.Digest, owner("rotated/private", private.Tag)))
		st := e.phase(t, "rotated", private.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonUnauthorized {
			t.Fatalf("wrong credentials: %+v, want Unauthorized", st)
		}
		// The secret is fixed, and the controller says so in the list's
		// status; neither the list's spec nor the node's changes.
		secret.Data[corev1.DockerConfigJsonKey] = []byte(strings.Replace(cfg, "wrong", "s3cret", 1))
		if err := e.c.Update(ctx, secret); err != nil {
			t.Fatal(err)
		}
		l := &prepullv1.PrePullList{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: "rotated", Name: "private"}, l); err != nil {
			t.Fatal(err)
		}
		gen := l.Generation
		l.Status.PullSecretsVersion = "after-rotation"
		if err := e.c.Status().Update(ctx, l); err != nil {
			t.Fatal(err)
		}
		e.phase(t, "rotated", private.Digest, prepullv1.PhasePresent, nil)
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil || l.Generation != gen {
			t.Errorf("the list's spec changed: generation %d, then %d (%v)", gen, l.Generation, err)
		}
	})

	t.Run("the registry down, then back", func(t *testing.T) {
		reg := testground.StartRegistry(t)
		e.ctd.TrustRegistry(reg)
		img := reg.MustPushRandom(t, "flaky/app:v1", 1024, 1)
		reg.Stop()
		e.agent(t, "flaky", nil)
		lim := owner("shop/flaky", img.Tag)
		e.setList(t, "shop/flaky", func(s *prepullv1.PrePullListSpec) { s.Rollout.BackoffLimit = ptr(int32(100)) })
		e.setSpec(t, "flaky", entry(img.Digest, lim))
		e.phase(t, "flaky", img.Digest, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
			if st.Attempts < 2 || st.Reason != nodeimageset.ReasonUnavailable {
				return fmt.Errorf("attempts %d, reason %s", st.Attempts, st.Reason)
			}
			return nil
		})
		reg.Start()
		e.phase(t, "flaky", img.Digest, prepullv1.PhasePresent, nil)
		if e.runtimeID(t, img.Tag) != img.ID {
			t.Errorf("tag not made present after the registry came back")
		}
	})

	t.Run("a registry that fails says how, backs off and recovers", func(t *testing.T) {
		proxy := testground.StartFaultProxy(t, e.public)
		e.ctd.TrustHost(proxy.Host)
		for i, tc := range []struct {
			fault  testground.Fault
			reason string
			says   string
		}{
			{testground.Fault500, nodeimageset.ReasonUnavailable, "500 Internal Server Error"},
			{testground.FaultHang, nodeimageset.ReasonTimeout, "deadline exceeded"},
			{testground.FaultCutBody, nodeimageset.ReasonUnavailable, "EOF"},
		} {
			t.Run(tc.fault.String(), func(t *testing.T) {
				node := fmt.Sprintf("fault-%d", i)
				list := "faults/" + node
				img := e.public.MustPushRandom(t, fmt.Sprintf("faults/app%d:v1", i), 256<<10, 1)
				ref := proxy.Ref(e.public, img.Digest)
				proxy.Set(tc.fault)
				e.setList(t, list, func(s *prepullv1.PrePullListSpec) {
					s.Rollout.Timeout, s.Rollout.BackoffLimit = &metav1.Duration{Duration: 2 * time.Second}, ptr(int32(100))
				})
				e.agent(t, node, nil)
				e.setSpec(t, node, entry(ref, owner(list)))
				e.phase(t, node, ref, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
					if st.Attempts < 2 || st.Reason != tc.reason || !strings.Contains(st.LastError, tc.says) {
						return fmt.Errorf("attempts %d, reason %s, error %q", st.Attempts, st.Reason, st.LastError)
					}
					return nil
				})
				proxy.Set(testground.NoFault)
				e.phase(t, node, ref, prepullv1.PhasePresent, nil)
				if e.runtimeID(t, ref) != img.ID {
					t.Errorf("the image is not present after the fault ended")
				}
			})
		}
	})

	t.Run("a tag whose digest changed is re-pointed and the old digest released", func(t *testing.T) {
		v1 := e.public.MustPushRandom(t, "moved/app:stable", 1024, 1)
		v2 := e.public.MustPushRandom(t, "moved/app:stable", 1024, 1)
		e.agent(t, "moved", nil)
		e.setSpec(t, "moved", entry(v1.Digest, owner("shop/moved", v1.Tag)))
		e.phase(t, "moved", v1.Digest, prepullv1.PhasePresent, nil)
		if e.runtimeID(t, v1.Tag) != v1.ID {
			t.Fatalf("tag does not name v1")
		}
		old := owner("shop/moved", v1.Tag)
		old.Releasing = true
		e.setSpec(t, "moved", entry(v1.Digest, old), entry(v2.Digest, owner("shop/moved", v2.Tag)))
		e.phase(t, "moved", v2.Digest, prepullv1.PhasePresent, func(*prepullv1.NodeImageStatus) error {
			if e.runtimeID(t, v2.Tag) != v2.ID {
				return fmt.Errorf("tag still names %s", e.runtimeID(t, v2.Tag))
			}
			return nil
		})
		e.phase(t, "moved", v1.Digest, prepullv1.PhaseReleased, nil)
		eventually(t, "the old digest unpinned", func() error {
			if e.pinned(t, v1.Digest) {
				return fmt.Errorf("still pinned")
			}
			return nil
		})
		if owners, _ := e.store.Owners(ctx, v1.Digest); len(owners) != 0 {
			t.Errorf("old digest still owned by %v", owners)
		}
		if e.runtimeID(t, v1.Digest) == "" {
			t.Errorf("onDelete Unpin removed the old image")
		}
	})

	t.Run("out-of-band removal and unpin are restored", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "healed/app:v1", 1024, 1)
		e.agent(t, "healed", nil)
		e.setSpec(t, "healed", entry(img.Digest, owner("shop/healed", img.Tag)))
		e.phase(t, "healed", img.Digest, prepullv1.PhasePresent, nil)
		eventually(t, "pinned", func() error {
			if !e.pinned(t, img.Tag) {
				return fmt.Errorf("not pinned")
			}
			return nil
		})

		// Someone takes the pin off both references by hand.
		for _, ref := range []string{img.Digest, img.Tag} {
			if err := e.store.Unpin(ctx, ref, "shop/healed"); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "the pin restored", func() error {
			owners, err := e.store.Owners(ctx, img.Digest)
			if err != nil || !slices.Equal(owners, []string{"shop/healed"}) || !e.pinned(t, img.Digest) {
				return fmt.Errorf("owners %v, %v", owners, err)
			}
			return nil
		})

		// Someone removes the image.
		if err := e.images.RemoveImage(ctx, img.Digest); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the image pulled again, tagged and pinned", func() error {
			if e.runtimeID(t, img.Tag) != img.ID || !e.pinned(t, img.Tag) {
				return fmt.Errorf("tag %q pinned %t", e.runtimeID(t, img.Tag), e.pinned(t, img.Tag))
			}
			return nil
		})

		// The kubelet pulls the same image again by its tag, which rewrites
		// the tag's record.
		if _, err := e.images.PullImage(ctx, img.Tag, nil); err != nil {
			t.Fatal(err)
		}
		eventually(t, "pinned after a re-pull by the kubelet", func() error {
			for _, ref := range []string{img.Digest, img.Tag} {
				if owners, err := e.store.Owners(ctx, ref); err != nil || !slices.Equal(owners, []string{"shop/healed"}) {
					return fmt.Errorf("owners of %s: %v, %v", ref, owners, err)
				}
			}
			if !e.pinned(t, img.Tag) {
				return fmt.Errorf("CRI does not report it pinned")
			}
			return nil
		})

		// containerd restarts; pins live in its metadata and the agent
		// reconnects.
		e.ctd.Stop()
		e.ctd.Start()
		if err := e.store.Unpin(ctx, img.Digest, "shop/healed"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the pin restored after a containerd restart", func() error {
			if owners, err := e.store.Owners(ctx, img.Digest); err != nil || !slices.Equal(owners, []string{"shop/healed"}) {
				return fmt.Errorf("owners %v, %v", owners, err)
			}
			return nil
		})

		// Someone points the tag at a foreign image.
		foreign := e.public.MustPushRandom(t, "healed/other:v1", 1024, 1)
		if _, err := e.images.PullImage(ctx, foreign.Digest, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Tag(ctx, img.Tag, foreign.Digest); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the tag corrected", func() error {
			if got := e.runtimeID(t, img.Tag); got != img.ID {
				return fmt.Errorf("tag names %s", got)
			}
			return nil
		})
	})

	t.Run("release with onDelete Remove removes the image", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "removed/app:v1", 1024, 1)
		e.releaseWithRemove(t, "removed", img, nil)
		for _, ref := range []string{img.Digest, img.Tag} {
			if id := e.runtimeID(t, ref); id != "" {
				t.Errorf("%s still present after release with Remove", ref)
			}
		}
	})

	t.Run("release with onDelete Remove keeps an image prepull did not bring, and says why", func(t *testing.T) {
		// The image was on the node before any list named it (the kubelet
		// pulled it for a pod, or an operator imported it).
		img := e.public.MustPushRandom(t, "theirs/app:v1", 1024, 1)
		if _, err := e.images.PullImage(ctx, img.Tag, nil); err != nil {
			t.Fatal(err)
		}
		e.releaseWithRemove(t, "theirs", img, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonKept || !strings.Contains(st.LastError, "prepull did not bring it onto the node") {
				return fmt.Errorf("reason %s, message %q", st.Reason, st.LastError)
			}
			return nil
		})
		for _, ref := range []string{img.Digest, img.Tag} {
			if id := e.runtimeID(t, ref); id != img.ID {
				t.Errorf("%s removed, though prepull did not bring it", ref)
			}
			if e.pinned(t, ref) {
				t.Errorf("%s still pinned after the release", ref)
			}
		}
	})

	t.Run("a tag resolved on the node is pulled again when asked", func(t *testing.T) {
		v1 := e.public.MustPushRandom(t, "probe/app:v1", 1024, 1)
		e.agent(t, "probe", nil)
		probe := entry(v1.Tag, owner("shop/probe"))
		e.setSpec(t, "probe", probe)
		st := e.phase(t, "probe", v1.Tag, prepullv1.PhasePresent, nil)
		if _, d, _ := strings.Cut(v1.Digest, "@"); st.Digest != d || st.PulledAt == nil {
			t.Fatalf("status %+v: want digest %s and a pull time", st, d)
		}
		v2 := e.public.MustPushRandom(t, "probe/app:v1", 1024, 1)
		probe.ResolveAfter = &metav1.Time{Time: time.Now().Add(time.Second)}
		e.setSpec(t, "probe", probe)
		_, d2, _ := strings.Cut(v2.Digest, "@")
		e.phase(t, "probe", v1.Tag, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if st.Digest != d2 {
				return fmt.Errorf("digest %s, want the moved tag's %s", st.Digest, d2)
			}
			return nil
		})
	})

	t.Run("a pin whose owner no entry names is taken off", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "stray/app:v1", 1024, 1)
		kept := e.public.MustPushRandom(t, "stray/kept:v1", 1024, 1)
		for _, p := range []testground.Pushed{img, kept} {
			if _, err := e.images.PullImage(ctx, p.Digest, nil); err != nil {
				t.Fatal(err)
			}
		}
		// A list that went while the agent was away left its pin.
		if err := e.store.Pin(ctx, img.Digest, "shop/gone"); err != nil {
			t.Fatal(err)
		}
		e.agent(t, "stray", func(r *nodeimageset.Reconciler) { r.KeepStrayPins = false })
		e.setSpec(t, "stray", entry(kept.Digest, owner("shop/kept", kept.Tag)))
		e.phase(t, "stray", kept.Digest, prepullv1.PhasePresent, nil)
		eventually(t, "the stray pin taken off, the wanted one kept", func() error {
			stray, _ := e.store.Owners(ctx, img.Digest)
			wanted, _ := e.store.Owners(ctx, kept.Digest)
			if len(stray) != 0 || !slices.Equal(wanted, []string{"shop/kept"}) {
				return fmt.Errorf("stray owners %v, wanted owners %v", stray, wanted)
			}
			return nil
		})
	})

	t.Run("a pull that would pass the disk budget does not start", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "budget/app:v1", 1024, 1)
		e.agent(t, "budget", func(r *nodeimageset.Reconciler) {
			r.DiskBudget = 0.8
			r.FsUsage = func(string) (uint64, uint64, error) { return 95, 100, nil }
		})
		e.setSpec(t, "budget", entry(img.Digest, owner("shop/budget", img.Tag)))
		st := e.phase(t, "budget", img.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonDiskBudget {
				return fmt.Errorf("reason %q", st.Reason)
			}
			return nil
		})
		if !strings.Contains(st.LastError, "95.0% full") || !strings.Contains(st.LastError, "80.0%") {
			t.Errorf("message %q: want the usage and the budget", st.LastError)
		}
		if e.runtimeID(t, img.Digest) != "" {
			t.Errorf("the image was pulled past the budget")
		}
	})

	t.Run("a runtime without containerd's API: tags made by pulling them, and what it cannot do is not Present", func(t *testing.T) {
		pinned := e.public.MustPushRandom(t, "crionly/pinned:v1", 1024, 1)
		unpinned := e.public.MustPushRandom(t, "crionly/unpinned:v1", 1024, 1)
		before := e.public.MustPushRandom(t, "crionly/moved:v1", 1024, 1)
		after := e.public.MustPushRandom(t, "crionly/moved:v1", 1024, 1)
		e.setList(t, "shop/crinone", func(s *prepullv1.PrePullListSpec) { s.Retain = prepullv1.RetainUnpinned })
		e.agent(t, "crionly", func(r *nodeimageset.Reconciler) {
			r.Store = cri.Unsupported{Runtime: "cri-o 1.36"}
			r.Runtime = "cri-o 1.36"
		})
		e.setSpec(t, "crionly",
			entry(pinned.Digest, owner("shop/crionly", pinned.Tag)),
			entry(unpinned.Digest, owner("shop/crinone", unpinned.Tag)),
			entry(before.Digest, owner("shop/crinone", before.Tag)))

		// retain: Pinned cannot be kept: Failed, saying so, though the
		// image and its tag are there.
		st := e.phase(t, "crionly", pinned.Digest, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonUnsupported {
				return fmt.Errorf("reason %q", st.Reason)
			}
			return nil
		})
		for _, want := range []string{"on the node, but not as its lists ask", "pin", "shop/crionly", "cri-o 1.36"} {
			if !strings.Contains(st.LastError, want) {
				t.Errorf("message %q: want %q", st.LastError, want)
			}
		}
		if st.Pinned {
			t.Errorf("reported pinned on a runtime that cannot pin")
		}
		if e.runtimeID(t, pinned.Digest) != pinned.ID || e.runtimeID(t, pinned.Tag) != pinned.ID {
			t.Errorf("the digest or the tag was not made through CRI")
		}

		// retain: Unpinned: the tag made by pulling it, checked to name
		// the digest: Present.
		e.phase(t, "crionly", unpinned.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != "" || st.LastError != "" {
				return fmt.Errorf("reason %q, error %q", st.Reason, st.LastError)
			}
			return nil
		})
		if e.runtimeID(t, unpinned.Tag) != unpinned.ID {
			t.Errorf("tag %s names %q, want %s", unpinned.Tag, e.runtimeID(t, unpinned.Tag), unpinned.ID)
		}

		// The registry moved the tag: pulled, it names other bytes, and
		// the entry says so instead of counting as Present.
		st = e.phase(t, "crionly", before.Digest, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonTagMismatch {
				return fmt.Errorf("reason %q", st.Reason)
			}
			return nil
		})
		if !strings.Contains(st.LastError, after.ID) || !strings.Contains(st.LastError, before.ID) {
			t.Errorf("message %q: want both images named", st.LastError)
		}
	})

	t.Run("the doctor's checks of the node reach status", func(t *testing.T) {
		checks := doctor.Node{Images: e.images, Pins: e.store, Runtime: "containerd v2.4.2", ContainerdConfig: e.ctd.ConfigPath()}
		e.agent(t, "doctor", func(r *nodeimageset.Reconciler) { r.Doctor = checks.Run })
		w := e.handWatched(t, "doctor")
		deadline := time.After(wait)
		for {
			select {
			case ev := <-w.ResultChan():
				set, ok := ev.Object.(*prepullv1.NodeImageSet)
				if !ok || len(set.Status.Checks) == 0 {
					continue
				}
				names := map[string]prepullv1.CheckResult{}
				for _, c := range set.Status.Checks {
					names[c.Name] = c.Result
				}
				// The test ground's containerd passes what its configuration
				// decides; no kubelet configuration was given.
				if names[doctor.CheckRegistryHosts] != prepullv1.CheckPass || names[doctor.CheckCredentials] != prepullv1.CheckWarn {
					t.Errorf("checks in status: %+v", set.Status.Checks)
				}
				return
			case <-deadline:
				t.Fatalf("no checks in the NodeImageSet's status after %s", wait)
			}
		}
	})

	t.Run("the write that says the node settled is not held back", func(t *testing.T) {
		img := e.public.MustPushRandom(t, "settle/app:v1", 1<<20, 1)
		// Ten minutes between writes: only the exception lets Present out
		// within the test's wait.
		e.agent(t, "settle", func(r *nodeimageset.Reconciler) { r.StatusInterval = 10 * time.Minute })
		w := e.handWatched(t, "settle", entry(img.Digest, owner("shop/settle", img.Tag)))
		statusUntilPresent(t, w, 1, func(prepullv1.NodeImageStatus) {}, nil)
	})

	t.Run("progress is reported at a bounded rate", func(t *testing.T) {
		const size = 24 << 20
		th := testground.StartThrottle(t, e.public, 6<<20, 0)
		e.ctd.TrustHost(th.Host)
		img := e.public.MustPushRandom(t, "slow/app:v1", size, 1)
		digest, tag := th.Ref(e.public, img.Digest), th.Ref(e.public, img.Tag)
		e.agent(t, "slow", func(r *nodeimageset.Reconciler) { r.StatusInterval = time.Second })

		w := e.handWatched(t, "slow", entry(digest, owner("shop/slow", tag)))
		var midway bool
		var writes []time.Time
		deadline := time.After(wait)
		for done := false; !done; {
			select {
			case ev := <-w.ResultChan():
				set, ok := ev.Object.(*prepullv1.NodeImageSet)
				if !ok || len(set.Status.Images) == 0 {
					continue
				}
				writes = append(writes, time.Now())
				st := set.Status.Images[0]
				// Part way into the layer, not only its config done.
				if st.Phase == prepullv1.PhasePulling && st.BytesDone >= 1<<20 && st.BytesDone < st.BytesTotal {
					midway = true
				}
				done = st.Phase == prepullv1.PhasePresent
			case <-deadline:
				t.Fatalf("not Present after %s", wait)
			}
		}
		if !midway {
			t.Errorf("no status showed bytes done between 1 MiB and the total during a %d MiB pull of one layer", size>>20)
		}
		// The agent writes at most once a second, but for the write that
		// says the node settled (Present), which goes at once; the watch
		// may deliver two writes closer together, never much closer.
		for i := 1; i < len(writes)-1; i++ {
			if gap := writes[i].Sub(writes[i-1]); gap < 500*time.Millisecond {
				t.Errorf("status writes %d and %d came %s apart, want about 1s at least", i-1, i, gap)
			}
		}
	})

	t.Run("pulls at once each report their own bytes", func(t *testing.T) {
		th := testground.StartThrottle(t, e.public, 6<<20, 0)
		e.ctd.TrustHost(th.Host)
		var entries []prepullv1.NodeImage
		sizes := map[string]int64{}
		for i := range 3 {
			img := e.public.MustPushRandom(t, fmt.Sprintf("many/app%d:v1", i), 6<<20, 1)
			ref := th.Ref(e.public, img.Digest)
			entries = append(entries, entry(ref, owner("shop/many", th.Ref(e.public, img.Tag))))
			sizes[ref] = img.Size
		}
		// A pull of someone else's, the kubelet's say, beside the agent's.
		beside := e.public.MustPushRandom(t, "many/kubelet:v1", 6<<20, 1)
		e.agent(t, "many", func(r *nodeimageset.Reconciler) { r.MaxConcurrentPulls = 3 })
		w := e.handWatched(t, "many", entries...)
		besideDone := make(chan error, 1)
		go func() {
			_, err := e.images.PullImage(ctx, th.Ref(e.public, beside.Digest), nil)
			besideDone <- err
		}()
		midway := map[string]bool{}
		statusUntilPresent(t, w, len(entries), func(st prepullv1.NodeImageStatus) {
			if st.Phase != prepullv1.PhasePulling || st.BytesTotal == 0 {
				return
			}
			// Its own layer and config, nothing of the others.
			if own := sizes[st.Image]; st.BytesTotal < own || st.BytesTotal > own+64<<10 || st.BytesDone > st.BytesTotal {
				t.Errorf("%s reads %d of %d bytes; its layers are %d bytes", st.Image, st.BytesDone, st.BytesTotal, own)
			}
			// Part way into its one layer, not only its config done.
			if st.BytesDone >= 1<<20 && st.BytesDone < st.BytesTotal {
				midway[st.Image] = true
			}
		}, nil)
		if err := <-besideDone; err != nil {
			t.Errorf("the pull beside the agent's: %v", err)
		}
		if len(midway) != len(entries) {
			t.Errorf("%d of %d images showed bytes between 0 and their total while pulling at once", len(midway), len(entries))
		}
	})

	t.Run("a pull past its timeout fails with the reason", func(t *testing.T) {
		th := testground.StartThrottle(t, e.public, 1<<20, 0)
		e.ctd.TrustHost(th.Host)
		img := e.public.MustPushRandom(t, "timeout/app:v1", 8<<20, 1)
		o := owner("shop/timeout", th.Ref(e.public, img.Tag))
		e.setList(t, "shop/timeout", func(s *prepullv1.PrePullListSpec) {
			s.Rollout.Timeout, s.Rollout.BackoffLimit = &metav1.Duration{Duration: 500 * time.Millisecond}, ptr(int32(0))
		})
		en := entry(th.Ref(e.public, img.Digest), o)
		e.agent(t, "timeout", nil)
		e.setSpec(t, "timeout", en)
		st := e.phase(t, "timeout", en.Image, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonTimeout || st.Attempts != 1 {
			t.Errorf("status %+v: want reason Timeout after 1 attempt", st)
		}
	})

	t.Run("no more pulls at once than the limit", func(t *testing.T) {
		th := testground.StartThrottle(t, e.public, 8<<20, 0)
		e.ctd.TrustHost(th.Host)
		var entries []prepullv1.NodeImage
		for i := range 5 {
			img := e.public.MustPushRandom(t, fmt.Sprintf("bounded/app%d:v1", i), 4<<20, 1)
			entries = append(entries, entry(th.Ref(e.public, img.Digest), owner("shop/bounded", th.Ref(e.public, img.Tag))))
		}
		e.agent(t, "bounded", func(r *nodeimageset.Reconciler) { r.MaxConcurrentPulls = 2 })
		w := e.handWatched(t, "bounded", entries...)
		most, pulling := 0, 0
		statusUntilPresent(t, w, len(entries), func(st prepullv1.NodeImageStatus) {
			if st.Phase == prepullv1.PhasePulling {
				pulling++
			}
		}, func() { most, pulling = max(most, pulling), 0 })
		if most != 2 {
			t.Errorf("at most %d images were Pulling at once, want exactly the limit of 2", most)
		}
	})

	t.Run("containerd restarted mid-pull: the image ends present, pinned, tagged once", func(t *testing.T) {
		th := testground.StartThrottle(t, e.public, 2<<20, 0)
		e.ctd.TrustHost(th.Host)
		img := e.public.MustPushRandom(t, "ctdrestart/app:v1", 8<<20, 1)
		digest, tag := th.Ref(e.public, img.Digest), th.Ref(e.public, img.Tag)
		e.setList(t, "shop/ctdrestart", func(s *prepullv1.PrePullListSpec) { s.Rollout.BackoffLimit = ptr(int32(100)) })
		e.agent(t, "ctdrestart", nil)
		e.setSpec(t, "ctdrestart", entry(digest, owner("shop/ctdrestart", tag)))
		e.phase(t, "ctdrestart", digest, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
			if st.BytesDone == 0 {
				return fmt.Errorf("no bytes yet")
			}
			return nil
		})
		e.ctd.Stop()
		e.ctd.Start()
		e.phase(t, "ctdrestart", digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned")
			}
			return nil
		})
		if e.runtimeID(t, tag) != img.ID || !e.pinned(t, digest) {
			t.Errorf("after the restart: tag names %q (want %s), pinned %v", e.runtimeID(t, tag), img.ID, e.pinned(t, digest))
		}
		images, err := e.images.ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var named []string
		for _, i := range images {
			for _, ref := range append(i.RepoTags, i.RepoDigests...) {
				if strings.Contains(ref, "/ctdrestart/") {
					named = append(named, ref)
				}
			}
		}
		want := []string{digest, tag}
		slices.Sort(named)
		slices.Sort(want)
		if !slices.Equal(named, want) {
			t.Errorf("names of the image in the runtime: %v, want exactly %v", named, want)
		}
	})

	t.Run("a full disk: NoSpace, nothing half-made, the rest kept, then present once space is freed", func(t *testing.T) {
		// containerd's root on a real, small filesystem that the pull fills.
		root, images, store := e.containerdOnTmpfs(t, 24<<20)
		small := e.public.MustPushRandom(t, "full/small:v1", 1<<20, 1)
		big := e.public.MustPushRandom(t, "full/big:v1", 40<<20, 1)
		e.setList(t, "shop/full", func(s *prepullv1.PrePullListSpec) { s.Rollout.BackoffLimit = ptr(int32(100)) })
		e.agent(t, "full", func(r *nodeimageset.Reconciler) { r.Images, r.Store, r.KeepStrayPins = images, store, false })
		e.setSpec(t, "full", entry(small.Digest, owner("shop/full", small.Tag)))
		e.phase(t, "full", small.Digest, prepullv1.PhasePresent, nil)
		e.setSpec(t, "full", entry(small.Digest, owner("shop/full", small.Tag)), entry(big.Digest, owner("shop/full", big.Tag)))
		e.phase(t, "full", big.Digest, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonNoSpace || !strings.Contains(st.LastError, "no space left on device") {
				return fmt.Errorf("reason %s, error %q", st.Reason, st.LastError)
			}
			return nil
		})
		if _, err := images.ImageStatus(ctx, big.Tag); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("the image that did not fit is tagged: %v", err)
		}
		if owners, _ := store.Owners(ctx, big.Digest); len(owners) != 0 {
			t.Errorf("the image that did not fit is pinned for %v", owners)
		}
		if st, err := images.ImageStatus(ctx, small.Tag); err != nil || st.ID != small.ID {
			t.Errorf("the image that was there is gone: %+v, %v", st, err)
		}
		if owners, _ := store.Owners(ctx, small.Digest); !slices.Equal(owners, []string{"shop/full"}) {
			t.Errorf("the image that was there lost its pin: %v", owners)
		}
		// Space freed: the same filesystem grown.
		if err := syscall.Mount("tmpfs", root, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
			t.Fatalf("grow the tmpfs: %v", err)
		}
		e.phase(t, "full", big.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned")
			}
			return nil
		})
		if st, err := images.ImageStatus(ctx, big.Tag); err != nil || st.ID != big.ID {
			t.Errorf("after space was freed the tag names %+v, %v", st, err)
		}
	})

	t.Run("the disk budget counts the image about to be pulled, on a real filesystem", func(t *testing.T) {
		// containerd's root on a real 32 MiB filesystem; the budget is
		// 80%. A 14 MiB image writes at least 28 MiB (its blob, then
		// unpacked): it would fit the usage, not the budget.
		root, images, store := e.containerdOnTmpfs(t, 32<<20)
		little := e.public.MustPushRandom(t, "sized/little:v1", 1<<20, 1)
		big := e.public.MustPushRandom(t, "sized/big:v1", 14<<20, 1)
		e.agent(t, "sized", func(r *nodeimageset.Reconciler) {
			r.Images, r.Store, r.KeepStrayPins, r.DiskBudget = images, store, false, 0.8
		})
		e.setSpec(t, "sized", entry(little.Digest, owner("shop/sized", little.Tag)), entry(big.Digest, owner("shop/sized", big.Tag)))
		e.phase(t, "sized", little.Digest, prepullv1.PhasePresent, nil)
		st := e.phase(t, "sized", big.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonDiskBudget {
				return fmt.Errorf("reason %s, error %q", st.Reason, st.LastError)
			}
			return nil
		})
		for _, want := range []string{"at least 28 MiB", "14 MiB of blobs", "past the agent's disk budget of 80.0%"} {
			if !strings.Contains(st.LastError, want) {
				t.Errorf("message %q: want %q", st.LastError, want)
			}
		}
		if st.Attempts != 0 {
			t.Errorf("%d pulls tried past the budget", st.Attempts)
		}
		if done, _, _ := store.PullProgress(ctx, big.Digest); done != 0 {
			t.Errorf("%d bytes of the image past the budget were fetched", done)
		}
		// Room made: the same filesystem grown, and the image comes.
		if err := syscall.Mount("tmpfs", root, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
			t.Fatalf("grow the tmpfs: %v", err)
		}
		e.phase(t, "sized", big.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned")
			}
			return nil
		})
	})

	t.Run("an archive's import counts against the disk budget, on a real filesystem", func(t *testing.T) {
		// As the pull above, from a bundle of the 14 MiB image: the import
		// would write at least 28 MiB, past 80% of 32 MiB. Nothing of it
		// is written until there is room.
		root, images, store := e.containerdOnTmpfs(t, 32<<20)
		img := e.public.MustPushRandom(t, "sized/archived:v1", 14<<20, 1)
		dir := t.TempDir()
		sum := writeBundle(t, filepath.Join(dir, "b.tar"), bundle.Options{}, img.Tag)
		e.agent(t, "archived", func(r *nodeimageset.Reconciler) {
			r.Images, r.Store, r.KeepStrayPins, r.DiskBudget, r.ArchiveDir = images, store, false, 0.8, dir
		})
		en := entry(img.Digest, owner("shop/archived", img.Tag))
		en.Archive = &prepullv1.ArchiveSource{Path: "b.tar", SHA256: sum}
		e.setSpec(t, "archived", en)
		st := e.phase(t, "archived", img.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonDiskBudget {
				return fmt.Errorf("reason %s, error %q", st.Reason, st.LastError)
			}
			return nil
		})
		for _, want := range []string{"the import writes at least 28 MiB", "past the agent's disk budget of 80.0%"} {
			if !strings.Contains(st.LastError, want) {
				t.Errorf("message %q: want %q", st.LastError, want)
			}
		}
		if st.Attempts != 0 {
			t.Errorf("%d imports counted past the budget", st.Attempts)
		}
		if _, err := images.ImageStatus(ctx, img.Digest); err == nil {
			t.Errorf("the image past the budget was imported")
		}
		if err := syscall.Mount("tmpfs", root, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
			t.Fatalf("grow the tmpfs: %v", err)
		}
		e.phase(t, "archived", img.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned || st.ImportedFrom != sum {
				return fmt.Errorf("pinned %v, imported from %q", st.Pinned, st.ImportedFrom)
			}
			return nil
		})
	})

	t.Run("the default disk budget stops short of a default kubelet's eviction threshold, on a real filesystem", func(t *testing.T) {
		// A kubelet configuration of the kubelet's defaults (image GC from
		// 85%, hard eviction at imagefs.available<15%): the agent's default
		// budget is 80%. containerd's root on a real 64 MiB filesystem,
		// filled with other files so that an 8 MiB image (16 MiB written,
		// stored then unpacked) would take it to 87.5%: past the eviction
		// threshold, under the 90% the budget used to be. It does not
		// start.
		kubelet := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(kubelet, []byte("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		lim, err := doctor.KubeletDiskLimit(kubelet)
		if err != nil {
			t.Fatal(err)
		}
		budget := lim.Budget()
		if lim.Fraction != 0.85 || budget >= lim.Fraction || !strings.Contains(lim.Threshold, "imagefs.available<15%") {
			t.Fatalf("limit %+v, budget %.2f: want 85%% from the hard eviction threshold, the budget below it", lim, budget)
		}
		root, images, store := e.containerdOnTmpfs(t, 64<<20)
		const size = 8 << 20
		img := e.public.MustPushRandom(t, "budgeted/app:v1", size, 1)
		used, total, err := cri.Statfs(root)
		if err != nil {
			t.Fatal(err)
		}
		projected := uint64(0.875 * float64(total))
		if err := os.WriteFile(filepath.Join(root, "other-files"), testground.RandomBytes(int(projected-used-2*size)), 0o644); err != nil {
			t.Fatal(err)
		}
		e.agent(t, "budgeted", func(r *nodeimageset.Reconciler) {
			r.Images, r.Store, r.KeepStrayPins, r.DiskBudget = images, store, false, budget
		})
		e.setSpec(t, "budgeted", entry(img.Digest, owner("shop/budgeted", img.Tag)))
		e.phase(t, "budgeted", img.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonDiskBudget {
				return fmt.Errorf("reason %s, error %q", st.Reason, st.LastError)
			}
			return nil
		})
		if used, total, err := cri.Statfs(root); err != nil || float64(used) >= lim.Fraction*float64(total) {
			t.Errorf("the filesystem is %d of %d bytes full (%v): past the kubelet's eviction threshold", used, total, err)
		}
		// The doctor passes the default budget on this kubelet.
		for _, c := range (doctor.Node{Images: images, KubeletConfig: kubelet, DiskBudget: budget}).Run(ctx) {
			if c.Name == doctor.CheckGCThresholds && c.Result != prepullv1.CheckPass {
				t.Errorf("the doctor's %s check: %s: %s", c.Name, c.Result, c.Message)
			}
		}
	})

	t.Run("the disk budget counts only the blobs containerd lacks: a layer it holds is not counted again", func(t *testing.T) {
		// containerd's root on a real 64 MiB filesystem; the budget is 80%
		// (51 MiB). The base image (one 14 MiB layer) takes about 28 MiB,
		// stored and unpacked. An image on the same layer plus 1 MiB of its
		// own would take the filesystem past the budget if all its blobs
		// counted (30 MiB more); it writes about 2.
		_, images, store := e.containerdOnTmpfs(t, 64<<20)
		platform := testground.Linux(goruntime.GOARCH)
		shared := []testground.File{{Path: "shared.bin", Mode: 0o644, Data: testground.RandomBytes(14 << 20)}}
		own := []testground.File{{Path: "app.bin", Mode: 0o644, Data: testground.RandomBytes(1 << 20)}}
		push := func(repoTag string, layers ...[]testground.File) testground.Pushed {
			img, err := testground.Image(platform, nil, layers...)
			if err != nil {
				t.Fatal(err)
			}
			p, err := e.public.PushImage(repoTag, img)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		base, app := push("layered/base:v1", shared), push("layered/app:v1", shared, own)
		e.agent(t, "layered", func(r *nodeimageset.Reconciler) {
			r.Images, r.Store, r.KeepStrayPins, r.DiskBudget = images, store, false, 0.8
		})
		e.setSpec(t, "layered", entry(base.Digest, owner("shop/layered", base.Tag)))
		e.phase(t, "layered", base.Digest, prepullv1.PhasePresent, nil)
		e.setSpec(t, "layered", entry(base.Digest, owner("shop/layered", base.Tag)), entry(app.Digest, owner("shop/layered", app.Tag)))
		// Held back, it would stay Pending with reason DiskBudgetExceeded,
		// which the failure prints.
		e.phase(t, "layered", app.Digest, prepullv1.PhasePresent, nil)
	})

	t.Run("the agent killed mid-pull resumes after a restart", func(t *testing.T) {
		bin := os.Getenv("PREPULL_BINARY")
		if bin == "" {
			testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
		}
		const size = 32 << 20
		th := testground.StartThrottle(t, e.public, 8<<20, 0)
		e.ctd.TrustHost(th.Host)
		img := e.public.MustPushRandom(t, "killed/app:v1", size, 1)
		digest, tag := th.Ref(e.public, img.Digest), th.Ref(e.public, img.Tag)
		e.setSpec(t, "killed", entry(digest, owner("shop/killed", tag)))

		metricsPort, probePort := testground.FreePort(t), testground.FreePort(t)
		start := func() *exec.Cmd { return e.agentBinary(t, bin, "killed", metricsPort, probePort, "") }
		first := start()
		e.phase(t, "killed", digest, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
			if st.BytesDone == 0 {
				return fmt.Errorf("no bytes yet")
			}
			return nil
		})
		if err := first.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = first.Wait()
		if e.runtimeID(t, digest) != "" {
			t.Fatal("the pull finished before the agent was killed; the test proves nothing")
		}
		start()
		e.phase(t, "killed", digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned {
				return fmt.Errorf("not pinned yet")
			}
			return nil
		})
		img2, err := e.images.ImageStatus(ctx, digest)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(img2.RepoTags, []string{tag}) || len(img2.RepoDigests) != 1 {
			t.Errorf("after the restart the image has tags %v and digests %v, want exactly one of each", img2.RepoTags, img2.RepoDigests)
		}
		for _, ref := range []string{digest, tag} {
			if owners, err := e.store.Owners(ctx, ref); err != nil || !slices.Equal(owners, []string{"shop/killed"}) {
				t.Errorf("pin owners of %s: %v, %v; want exactly shop/killed", ref, owners, err)
			}
		}
		if _, body := testground.HTTPGet(t, probePort, "/readyz", true); !strings.Contains(body, "ok") {
			t.Errorf("/readyz: %q", body)
		}
		_, metrics := testground.HTTPGet(t, metricsPort, "/metrics", true)
		for _, want := range []string{
			`prepull_agent_pulls_total{result="success"} 1`,
			`prepull_agent_images{state="pinned"} 1`,
			"prepull_agent_pull_duration_seconds_count 1",
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

func ptr[T any](v T) *T { return &v }

func digestOf(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}

// TestAgentRidesOutAnAPIServerOutage cuts the agent binary off the API
// server (a proxy in front of it goes down, closing every connection) while
// it pulls a large image: the pull goes on, the image is present in the
// runtime during the outage, and once the API server is reachable again the
// status says Present and pinned, after one pull.
func TestAgentRidesOutAnAPIServerOutage(t *testing.T) {
	bin := os.Getenv("PREPULL_BINARY")
	if bin == "" {
		testground.Unavailable(t, "PREPULL_BINARY is not set: `make test` builds bin/prepull and sets it")
	}
	e := setup(t)
	// 32 MiB at 2 MiB/s: the pull lasts long enough that the cut comes
	// well before its end, however late the status shows the first bytes.
	th := testground.StartThrottle(t, e.public, 2<<20, 0)
	e.ctd.TrustHost(th.Host)
	img := e.public.MustPushRandom(t, "outage/app:v1", 32<<20, 1)
	digest, tag := th.Ref(e.public, img.Digest), th.Ref(e.public, img.Tag)
	e.setSpec(t, "outage", entry(digest, owner("shop/outage", tag)))
	metricsPort := testground.FreePort(t)
	api := testground.StartTCPProxy(t, e.apiAddr(t))
	e.agentBinary(t, bin, "outage", metricsPort, testground.FreePort(t), api.Addr)
	e.phase(t, "outage", digest, prepullv1.PhasePulling, func(st *prepullv1.NodeImageStatus) error {
		if st.BytesDone == 0 {
			return fmt.Errorf("no bytes yet")
		}
		return nil
	})
	api.Down()
	if e.runtimeID(t, digest) != "" {
		t.Fatal("the pull finished before the cut: the test proves nothing")
	}
	cut := time.Now()
	testground.Eventually(t, 2*time.Minute, "the image pulled while the API server is out of reach", func() error {
		if e.runtimeID(t, digest) != img.ID || e.runtimeID(t, tag) != img.ID {
			return fmt.Errorf("not in the runtime yet")
		}
		return nil
	})
	if st := e.status(t, "outage", digest); st == nil || st.Phase == prepullv1.PhasePresent {
		t.Fatalf("the status says Present though the agent could not write it: the test proves nothing (%+v)", st)
	}
	time.Sleep(time.Until(cut.Add(20 * time.Second)))
	api.Up()
	back := time.Now()
	e.phase(t, "outage", digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if !st.Pinned || st.Attempts > 1 {
			return fmt.Errorf("pinned %v, attempts %d", st.Pinned, st.Attempts)
		}
		return nil
	})
	t.Logf("status Present %s after the API server was reachable again", time.Since(back).Round(100*time.Millisecond))
	_, metrics := testground.HTTPGet(t, metricsPort, "/metrics", true)
	if !strings.Contains(metrics, `prepull_agent_pulls_total{result="success"} 1`) {
		t.Errorf("the pull was repeated:\n%s", metrics)
	}
}
