package prepulllist_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodegate"
	"prepull.io/prepull/controllers/prepulllist"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageplan"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/pullsecret"
	"prepull.io/prepull/verify"
)

const controllerNS = "prepull-system"

// env is one apiserver, one controller and the registries the subtests
// share; each subtest uses its own namespace and its own nodes.
type env struct {
	cfg            *rest.Config
	top            *testing.T
	stopController func()
	c              client.Client
	clock          *clocktesting.FakeClock
	public         *testground.Registry
	private        *testground.Registry
	resolver       *countingResolver
	signatures     *countingSignatures
	// reconciler is the last controller started.
	reconciler *prepulllist.Reconciler
	// gateConditionOnly starts the node gate keeping only the condition.
	gateConditionOnly bool
	// routing, when set, routes images between nodes (--peers).
	routing *prepulllist.PeerRouting
	// secretPoll is the controller's SecretPoll; zero means a second.
	secretPoll time.Duration
}

// counter counts calls by reference.
type counter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *counter) add(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[ref]++
}

func (c *counter) count(ref string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[ref]
}

// countingSignatures counts the controller's reads of signatures, by image.
type countingSignatures struct {
	counter
	inner prepulllist.SignatureReader
}

func (s *countingSignatures) Signatures(ctx context.Context, ref string, auth authn.Authenticator) ([]verify.Signature, error) {
	s.add(ref)
	return s.inner.Signatures(ctx, ref, auth)
}

// countingResolver counts the registry requests the controller makes:
// resolutions of tags, and (described) reads of what digests name.
type countingResolver struct {
	counter
	described counter
	inner     prepulllist.Resolver
}

func (r *countingResolver) Resolve(ctx context.Context, ref string, creds []pullsecret.Credential) (string, error) {
	r.add(ref)
	return r.inner.Resolve(ctx, ref, creds)
}

// Describe reads digests as the inner resolver does.
func (r *countingResolver) Describe(ctx context.Context, ref string, creds []pullsecret.Credential, size bool) (prepulllist.Description, error) {
	r.described.add(ref)
	return r.inner.(prepulllist.Describer).Describe(ctx, ref, creds, size)
}

func setup(t *testing.T, tune ...func(*env)) *env {
	t.Helper()
	ctrl.SetLogger(testground.Logger(t))
	cfg, _ := testground.StartAPIServer(t, "../../deploy/crd")
	public := testground.StartRegistry(t)
	private := testground.StartRegistry(t, testground.WithBasicAuth("alice", "s3cret"))

	e := &env{
		cfg:     cfg,
		clock:   clocktesting.NewFakeClock(time.Now()),
		public:  public,
		private: private,
		resolver: &countingResolver{inner: &prepulllist.RegistryResolver{
			Insecure: map[string]bool{public.Host: true, private.Host: true},
		}},
		signatures: &countingSignatures{inner: &verify.Registry{
			Insecure: map[string]bool{public.Host: true, private.Host: true},
		}},
	}
	e.top = t
	for _, f := range tune {
		f(e)
	}
	e.stopController = e.startController(t)
	// The test client writes directly; the manager's client reads a cache.
	e.c = testground.APIClient(t, cfg, controllerNS)
	return e
}

// startController starts a controller, as the binary does, and returns what
// stops it.
func (e *env) startController(t *testing.T) func() {
	t.Helper()
	gates := nodegate.NewBook()
	r := &prepulllist.Reconciler{Namespace: controllerNS, Resolver: e.resolver, Signatures: e.signatures, Clock: e.clock, Gates: gates, PlanGrace: 2 * time.Second, SecretPoll: cmp.Or(e.secretPoll, time.Second), Peers: e.routing}
	mgr, err := ctrl.NewManager(e.cfg, ctrl.Options{
		Scheme:  testground.Scheme(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: r.CacheOptions(cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Namespaces: map[string]cache.Config{controllerNS: {}}},
		}}),
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Client, r.APIReader = mgr.GetClient(), mgr.GetAPIReader()
	r.Recorder = mgr.GetEventRecorder("prepull-controller")
	e.reconciler = r
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	gate := &nodegate.Reconciler{Client: mgr.GetClient(), Book: gates, Recorder: r.Recorder, ConditionOnly: e.gateConditionOnly}
	if err := gate.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	// The controller outlives the subtest that starts it.
	e.top.Cleanup(stop)
	return stop
}

var ctx = context.Background()

func (e *env) mustCreate(t *testing.T, o client.Object) {
	t.Helper()
	if err := e.c.Create(ctx, o); err != nil {
		t.Fatalf("create %T %s: %v", o, o.GetName(), err)
	}
}

// namespace creates a namespace for one subtest.
func (e *env) namespace(t *testing.T, name string) string {
	t.Helper()
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	return name
}

func (e *env) node(t *testing.T, name string, labels map[string]string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	e.mustCreate(t, n)
	return n
}

func (e *env) relabel(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	n := &corev1.Node{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		t.Fatal(err)
	}
	n.Labels = labels
	if err := e.c.Update(ctx, n); err != nil {
		t.Fatalf("relabel node %s: %v", name, err)
	}
}

func list(ns, name string, images ...string) *prepullv1.PrePullList {
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	return l
}

func selector(labels map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels}
}

const wait = 20 * time.Second

// eventually polls cond until it returns nil, or fails the test with its last
// error.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	testground.Eventually(t, wait, what, cond)
}

func (e *env) getList(t *testing.T, l *prepullv1.PrePullList) *prepullv1.PrePullList {
	t.Helper()
	got := &prepullv1.PrePullList{}
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(l), got); err != nil {
		t.Fatal(err)
	}
	return got
}

// nodeSet is node name's NodeImageSet, its plan's images in spec.images.
func (e *env) nodeSet(name string) (*prepullv1.NodeImageSet, error) {
	set := &prepullv1.NodeImageSet{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: name}, set); err != nil {
		return set, err
	}
	return set, imageplan.Expand(ctx, e.c, set)
}

// entry returns the entry image of node's NodeImageSet, or nil.
func (e *env) entry(node, image string) *prepullv1.NodeImage {
	set, err := e.nodeSet(node)
	if err != nil {
		return nil
	}
	for i := range set.Spec.Images {
		if set.Spec.Images[i].Image == image {
			return &set.Spec.Images[i]
		}
	}
	return nil
}

// entriesOf are the entries of node's NodeImageSet whose image names repo.
func (e *env) entriesOf(node, repo string) []prepullv1.NodeImage {
	set, err := e.nodeSet(node)
	if err != nil {
		return nil
	}
	var out []prepullv1.NodeImage
	for _, en := range set.Spec.Images {
		if strings.Contains(en.Image, "/"+repo+"@") || strings.HasSuffix(en.Image, "/"+repo) || strings.Contains(en.Image, "/"+repo+":") {
			out = append(out, en)
		}
	}
	return out
}

// activeOwners lists the owners of an entry that are not releasing.
func activeOwners(e *prepullv1.NodeImage) []string {
	var out []string
	if e == nil {
		return nil
	}
	for _, o := range e.Owners {
		if !o.Releasing {
			out = append(out, o.List)
		}
	}
	return out
}

// lookupList reads an owner's list, as the agent does.
func (e *env) lookupList(owner string) *prepullv1.PrePullList {
	key, _ := prepullv1.OwnerKey(owner)
	l := &prepullv1.PrePullList{}
	if err := e.c.Get(ctx, key, l); err != nil {
		return nil
	}
	return l
}

// tagsOf is the union of the active owners' tags of an entry, as the agent
// reads them.
func tagsOf(en *prepullv1.NodeImage) []string {
	if en == nil {
		return nil
	}
	return en.Settings(func(string) *prepullv1.PrePullList { return nil }).Tags
}

// agent does what a node's agent would do in one pass, without a runtime:
// every wanted image Present (or Failed where fail says so) and pinned for
// its active owners; entries with only releasing owners Released.
func (e *env) agent(t *testing.T, node string, fail map[string]string) {
	t.Helper()
	for {
		set, err := e.nodeSet(node)
		if apierrors.IsNotFound(err) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		set.Status.Images = nil
		for _, img := range set.Spec.Images {
			st := prepullv1.NodeImageStatus{Image: img.Image, Phase: prepullv1.PhasePresent}
			if _, d, ok := strings.Cut(img.Image, "@"); ok {
				st.Digest = d
			}
			active := activeOwners(&img)
			settings := img.Settings(e.lookupList)
			switch {
			case len(active) == 0:
				st.Phase = prepullv1.PhaseReleased
			case fail[img.Image] != "":
				st.Phase, st.Reason, st.LastError = prepullv1.PhaseFailed, "Unauthorized", fail[img.Image]
			case len(settings.Pinners) > 0:
				st.Pinned, st.PinOwners = true, settings.Pinners
			}
			set.Status.Images = append(set.Status.Images, st)
		}
		err = e.c.Status().Update(ctx, set)
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			t.Fatalf("write status of node %s: %v", node, err)
		}
		return
	}
}

func condition(l *prepullv1.PrePullList, typ string) *metav1.Condition {
	return meta.FindStatusCondition(l.Status.Conditions, typ)
}

func (e *env) events(t *testing.T, ns, reason string) []eventsv1.Event {
	t.Helper()
	var evs eventsv1.EventList
	if err := e.c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(evs.Items, func(ev eventsv1.Event) bool { return ev.Reason != reason })
}

func digestOf(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}

func intOrString(s string) *intstr.IntOrString {
	v := intstr.Parse(s)
	return &v
}

func TestController(t *testing.T) {
	e := setup(t)
	img := e.public.MustPushRandom(t, "shared/app:v1", 1024, 1)

	t.Run("the apiserver refuses bad lists", func(t *testing.T) {
		ns := e.namespace(t, "bad")
		tests := []struct {
			name    string
			list    *prepullv1.PrePullList
			wantErr []string
		}{
			{
				name:    "malformed reference",
				list:    list(ns, "malformed", "ok/image:v1", "Not A Reference"),
				wantErr: []string{"spec.images[1].image", "not a valid image reference: Not A Reference"},
			},
			{
				name:    "upper-case repository",
				list:    list(ns, "upper", "registry.example/Team/app:v1"),
				wantErr: []string{"spec.images[0].image", "not a valid image reference"},
			},
			{
				name:    "short digest",
				list:    list(ns, "digest", "app@sha256:abc"),
				wantErr: []string{"spec.images[0].image"},
			},
			{
				name:    "duplicate",
				list:    list(ns, "dup", "app:v1", "app:v1"),
				wantErr: []string{"spec.images[1]", "Duplicate value"},
			},
			{
				name:    "empty",
				list:    list(ns, "empty"),
				wantErr: []string{"spec.images"},
			},
			{
				name: "refresh too often",
				list: func() *prepullv1.PrePullList {
					l := list(ns, "refresh", "app:v1")
					l.Spec.RefreshInterval = &metav1.Duration{Duration: 10 * time.Second}
					return l
				}(),
				wantErr: []string{"spec.refreshInterval", "must be at least 1m"},
			},
			{
				name: "zero nodes at a time",
				list: func() *prepullv1.PrePullList {
					l := list(ns, "zero", "app:v1")
					l.Spec.Rollout.MaxConcurrentNodes = intOrString("0%")
					return l
				}(),
				wantErr: []string{"spec.rollout.maxConcurrentNodes"},
			},
			{
				name: "unknown retain policy",
				list: func() *prepullv1.PrePullList {
					l := list(ns, "retain", "app:v1")
					l.Spec.Retain = "Forever"
					return l
				}(),
				wantErr: []string{"spec.retain", "Unsupported value"},
			},
			{
				name:    "archive with both path and url",
				list:    withArchive(list(ns, "both", "app:v1"), prepullv1.ArchiveSource{Path: "b.tar", URL: "http://files/b.tar", SHA256: strings.Repeat("a", 64)}),
				wantErr: []string{"spec.source", "give exactly one of path and url"},
			},
			{
				name:    "archive path escaping its directory",
				list:    withArchive(list(ns, "escape", "app:v1"), prepullv1.ArchiveSource{Path: "site/../../etc/b.tar", SHA256: strings.Repeat("a", 64)}),
				wantErr: []string{"spec.source", "must not contain '..'"},
			},
			{
				name:    "absolute archive path",
				list:    withArchive(list(ns, "absolute", "app:v1"), prepullv1.ArchiveSource{Path: "/etc/b.tar", SHA256: strings.Repeat("a", 64)}),
				wantErr: []string{"spec.source.archive.path"},
			},
			{
				name:    "archive url of another scheme",
				list:    withArchive(list(ns, "scheme", "app:v1"), prepullv1.ArchiveSource{URL: "ftp://files/b.tar", SHA256: strings.Repeat("a", 64)}),
				wantErr: []string{"spec.source.archive.url"},
			},
			{
				name:    "archive sha256 malformed",
				list:    withArchive(list(ns, "sha", "app:v1"), prepullv1.ArchiveSource{Path: "b.tar", SHA256: "ABC"}),
				wantErr: []string{"spec.source.archive.sha256"},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := e.c.Create(ctx, tt.list)
				if err == nil {
					t.Fatal("the apiserver accepted the list")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
			})
		}
		// Admission takes exactly the references the controller parses.
		for i, ref := range testground.Lines(t, "../../imageref/testdata/references.txt") {
			l := list(ns, fmt.Sprintf("ref-%d", i), ref)
			err := e.c.Create(ctx, l, client.DryRunAll)
			if apierrors.IsInvalid(err) {
				if !strings.Contains(err.Error(), "spec.images[0].image") {
					t.Errorf("%q refused without naming the field: %v", ref, err)
				}
			} else if err != nil {
				t.Fatalf("dry-run create of %q: %v", ref, err)
			}
			if _, perr := imageref.Parse(ref); (err == nil) != (perr == nil) {
				t.Errorf("%q: admission says %v, the controller's parser %v", ref, err, perr)
			}
		}
		good := list(ns, "good", "nginx", "nginx:1.27", "registry.example:5000/team/app:v1@sha256:"+strings.Repeat("a", 64), "localhost/app")
		if err := e.c.Create(ctx, good); err != nil {
			t.Errorf("valid references refused: %v", err)
		}
		got := e.getList(t, good)
		if got.Spec.Retain != prepullv1.RetainPinned || got.Spec.OnDelete != prepullv1.DeleteUnpin || got.Spec.RefreshInterval.Duration != time.Hour ||
			got.Spec.Rollout.MaxConcurrentNodes.String() != "25%" || *got.Spec.Rollout.BackoffLimit != 6 {
			t.Errorf("defaults not applied: %+v", got.Spec)
		}
	})

	t.Run("an empty selector selects every node", func(t *testing.T) {
		ns := e.namespace(t, "empty-selector")
		e.node(t, "all-1", nil)
		e.node(t, "all-2", map[string]string{"pool": "other"})
		l := list(ns, "everywhere", img.Digest)
		l.Spec.NodeSelector = &metav1.LabelSelector{}
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		eventually(t, "every node selected", func() error {
			var nodes corev1.NodeList
			if err := e.c.List(ctx, &nodes); err != nil {
				return err
			}
			got := e.getList(t, l)
			if int(got.Status.Nodes.Selected) != len(nodes.Items) {
				return fmt.Errorf("selected %d of %d nodes", got.Status.Nodes.Selected, len(nodes.Items))
			}
			for _, n := range nodes.Items {
				if !slices.Contains(activeOwners(e.entry(n.Name, img.Digest)), ns+"/everywhere") {
					return fmt.Errorf("node %s lacks the image", n.Name)
				}
			}
			return nil
		})
		e.deleteList(t, l, "all-1", "all-2")
	})

	t.Run("selection follows labels, nodes added later and relabelled", func(t *testing.T) {
		ns := e.namespace(t, "selection")
		in := map[string]string{"pool": "gpu"}
		e.node(t, "sel-a", in)
		e.node(t, "sel-b", in)
		e.node(t, "sel-c", map[string]string{"pool": "cpu"})
		l := list(ns, "gpu", img.Tag)
		l.Spec.NodeSelector = selector(in)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		owner := ns + "/gpu"
		has := func(node string) bool { return slices.Contains(activeOwners(e.entry(node, img.Digest)), owner) }
		eventually(t, "selected nodes get the image", func() error {
			if !has("sel-a") || !has("sel-b") {
				return fmt.Errorf("sel-a %t, sel-b %t", has("sel-a"), has("sel-b"))
			}
			return nil
		})
		if e.entry("sel-c", img.Digest) != nil {
			t.Errorf("unselected node sel-c got the image")
		}
		if got := e.entry("sel-a", img.Digest); !slices.Equal(tagsOf(got), []string{img.Tag}) || got.Owners[0].List != owner {
			t.Errorf("entry %+v: want tag %s, owner %s", got, img.Tag, owner)
		}

		e.node(t, "sel-d", in)
		eventually(t, "a node added later gets the image", func() error {
			if !has("sel-d") {
				return fmt.Errorf("sel-d lacks it")
			}
			return nil
		})

		e.agent(t, "sel-a", nil)
		e.relabel(t, "sel-a", map[string]string{"pool": "cpu"})
		eventually(t, "a node relabelled out is released", func() error {
			en := e.entry("sel-a", img.Digest)
			if en != nil && slices.ContainsFunc(en.Owners, func(o prepullv1.ImageOwner) bool { return o.List == owner && !o.Releasing }) {
				return fmt.Errorf("still an active owner: %+v", en.Owners)
			}
			return nil
		})
		eventually(t, "the release is collected once the agent applied it", func() error {
			e.agent(t, "sel-a", nil)
			if en := e.entry("sel-a", img.Digest); en != nil {
				return fmt.Errorf("entry still there: %+v", en.Owners)
			}
			return nil
		})
		e.relabel(t, "sel-a", in)
		eventually(t, "a node relabelled back gets the image again", func() error {
			if !has("sel-a") {
				return fmt.Errorf("sel-a lacks it")
			}
			return nil
		})
		eventually(t, "status counts three selected nodes", func() error {
			if got := e.getList(t, l).Status.Nodes.Selected; got != 3 {
				return fmt.Errorf("selected = %d", got)
			}
			return nil
		})
	})

	t.Run("two lists share an image and one goes", func(t *testing.T) {
		ns := e.namespace(t, "sharing")
		pool := map[string]string{"pool": "sharing"}
		e.node(t, "share-1", pool)
		first, second := list(ns, "first", img.Digest), list(ns, "second", img.Tag)
		first.Spec.NodeSelector, second.Spec.NodeSelector = selector(pool), selector(pool)
		first.Spec.OnDelete = prepullv1.DeleteRemove
		e.mustCreate(t, first)
		e.mustCreate(t, second)
		eventually(t, "both lists own the one entry", func() error {
			got := activeOwners(e.entry("share-1", img.Digest))
			if !slices.Equal(got, []string{ns + "/first", ns + "/second"}) {
				return fmt.Errorf("owners %v", got)
			}
			return nil
		})
		e.agent(t, "share-1", nil)
		if err := e.c.Delete(ctx, first); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the deleted list is released and gone", func() error {
			e.agent(t, "share-1", nil)
			err := e.c.Get(ctx, client.ObjectKeyFromObject(first), &prepullv1.PrePullList{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("list still there: %v", err)
			}
			return nil
		})
		en := e.entry("share-1", img.Digest)
		if got := activeOwners(en); !slices.Equal(got, []string{ns + "/second"}) || len(en.Owners) != 1 {
			t.Errorf("after the first list went, owners = %+v, want only %s/second", en, ns)
		}
		if !slices.Equal(tagsOf(en), []string{img.Tag}) {
			t.Errorf("the remaining list's tag was lost: %+v", en)
		}
	})

	t.Run("nodes handed the same images share one ImagePlan, which goes when no node names it", func(t *testing.T) {
		ns := e.namespace(t, "plans")
		pool := map[string]string{"pool": "plans"}
		e.node(t, "plan-1", pool)
		e.node(t, "plan-2", pool)
		l := list(ns, "shared", img.Digest)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		// Lists of other subtests may select these nodes too (an empty
		// selector selects every node): the agents report until both
		// nodes are handed the same images, which must then be one plan.
		var name string
		eventually(t, "both nodes handed the same images, as one plan holding the list's image", func() error {
			var raw, expanded []*prepullv1.NodeImageSet
			for _, n := range []string{"plan-1", "plan-2"} {
				e.agent(t, n, nil)
				set := &prepullv1.NodeImageSet{}
				if err := e.c.Get(ctx, client.ObjectKey{Name: n}, set); err != nil {
					return err
				}
				if len(set.Spec.Images) != 0 {
					return fmt.Errorf("%s has images of its own: %+v", n, set.Spec.Images)
				}
				x, err := e.nodeSet(n)
				if err != nil {
					return err
				}
				if !slices.Contains(activeOwners(e.entry(n, img.Digest)), ns+"/shared") {
					return fmt.Errorf("%s is not handed %s yet", n, img.Digest)
				}
				raw, expanded = append(raw, set), append(expanded, x)
			}
			if !equality.Semantic.DeepEqual(expanded[0].Spec.Images, expanded[1].Spec.Images) {
				return fmt.Errorf("the nodes are handed different images: %d and %d entries", len(expanded[0].Spec.Images), len(expanded[1].Spec.Images))
			}
			if raw[0].Spec.Plan == "" || raw[0].Spec.Plan != raw[1].Spec.Plan {
				t.Fatalf("the same images, and the plans %q and %q", raw[0].Spec.Plan, raw[1].Spec.Plan)
			}
			name = raw[0].Spec.Plan
			return nil
		})
		plan := &prepullv1.ImagePlan{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: name}, plan); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(plan.Spec.Images, func(en prepullv1.NodeImage) bool { return en.Image == img.Digest })
		if i < 0 || int(plan.Spec.Count) != len(plan.Spec.Images) || !slices.Contains(activeOwners(&plan.Spec.Images[i]), ns+"/shared") {
			t.Fatalf("plan %s: %+v", name, plan.Spec)
		}
		if err := e.c.Delete(ctx, l); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the list released, no node names a plan, and the plan is deleted", func() error {
			e.agent(t, "plan-1", nil)
			e.agent(t, "plan-2", nil)
			for _, n := range []string{"plan-1", "plan-2"} {
				set := &prepullv1.NodeImageSet{}
				if err := e.c.Get(ctx, client.ObjectKey{Name: n}, set); err != nil {
					return err
				}
				if set.Spec.Plan == name {
					return fmt.Errorf("%s still names %s", n, name)
				}
			}
			if err := e.c.Get(ctx, client.ObjectKey{Name: name}, &prepullv1.ImagePlan{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("plan %s: %v", name, err)
			}
			return nil
		})
	})

	t.Run("a deleted list waits for the agents, not for deleted nodes", func(t *testing.T) {
		ns := e.namespace(t, "deletion")
		pool := map[string]string{"pool": "deletion"}
		e.node(t, "del-live", pool)
		e.node(t, "del-gone", pool)
		l := list(ns, "doomed", img.Digest)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("2")
		e.mustCreate(t, l)
		eventually(t, "both nodes get the image", func() error {
			for _, n := range []string{"del-live", "del-gone"} {
				if e.entry(n, img.Digest) == nil {
					return fmt.Errorf("%s lacks it", n)
				}
			}
			return nil
		})
		e.agent(t, "del-live", nil)
		e.agent(t, "del-gone", nil)
		if err := e.c.Delete(ctx, l); err != nil {
			t.Fatal(err)
		}
		eventually(t, "owners marked releasing", func() error {
			if got := activeOwners(e.entry("del-live", img.Digest)); len(got) != 0 {
				return fmt.Errorf("still active: %v", got)
			}
			return nil
		})
		time.Sleep(time.Second)
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(l), &prepullv1.PrePullList{}); err != nil {
			t.Fatalf("the list went before any agent released it: %v", err)
		}
		e.agent(t, "del-live", nil)
		if err := e.c.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "del-gone"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the list goes once the live agent released and the other node is gone", func() error {
			err := e.c.Get(ctx, client.ObjectKeyFromObject(l), &prepullv1.PrePullList{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("list still there: %v", err)
			}
			return nil
		})
		if _, err := e.nodeSet("del-gone"); !apierrors.IsNotFound(err) {
			t.Errorf("the deleted node's NodeImageSet is still there: %v", err)
		}
	})

	t.Run("a moved tag is resolved once per refresh and rolled out paced", func(t *testing.T) {
		ns := e.namespace(t, "refresh")
		pool := map[string]string{"pool": "refresh"}
		nodes := []string{"ref-1", "ref-2", "ref-3", "ref-4"}
		for _, n := range nodes {
			e.node(t, n, pool)
		}
		v1 := e.public.MustPushRandom(t, "moving/app:stable", 1024, 1)
		l := list(ns, "moving", v1.Tag)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("1")
		l.Spec.RefreshInterval = &metav1.Duration{Duration: 10 * time.Minute}
		e.mustCreate(t, l)

		rollOut := func(ref string) {
			t.Helper()
			for step := 1; step <= len(nodes); step++ {
				var handed []string
				eventually(t, fmt.Sprintf("%d nodes handed %s", step, ref), func() error {
					handed = nil
					for _, n := range nodes {
						if len(activeOwners(e.entry(n, ref))) > 0 {
							handed = append(handed, n)
						}
					}
					if len(handed) != step {
						return fmt.Errorf("handed to %v", handed)
					}
					return nil
				})
				// Pacing: no more than one node is handed the digest before
				// the one before it settled.
				time.Sleep(300 * time.Millisecond)
				for _, n := range nodes {
					if !slices.Contains(handed, n) && len(activeOwners(e.entry(n, ref))) > 0 {
						t.Fatalf("node %s handed %s before its turn (handed: %v)", n, ref, handed)
					}
				}
				e.agent(t, handed[len(handed)-1], nil)
			}
			eventually(t, "Ready", func() error {
				got := e.getList(t, l)
				if c := condition(got, prepullv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue || got.Status.ReadyNodes != "4/4" {
					return fmt.Errorf("ready %s, condition %+v", got.Status.ReadyNodes, c)
				}
				return nil
			})
		}
		rollOut(v1.Digest)
		if n := e.resolver.count(v1.Tag); n != 1 {
			t.Errorf("the tag was resolved %d times for one rollout to 4 nodes, want 1", n)
		}

		v2 := e.public.MustPushRandom(t, "moving/app:stable", 1024, 1)
		e.clock.Step(11 * time.Minute)
		touch(t, e, l)
		rollOut(v2.Digest)
		if got := e.getList(t, l).Status.Images[0].Digest; got != digestOf(v2.Digest) {
			t.Errorf("status digest %s, want %s", got, digestOf(v2.Digest))
		}
		if n := e.resolver.count(v1.Tag); n != 2 {
			t.Errorf("the tag was resolved %d times over two refreshes, want 2", n)
		}
		eventually(t, "the old digest is released everywhere", func() error {
			for _, n := range nodes {
				e.agent(t, n, nil)
				if en := e.entry(n, v1.Digest); en != nil {
					return fmt.Errorf("node %s still has the old digest: %+v", n, en.Owners)
				}
			}
			return nil
		})
		if evs := e.events(t, ns, "TagMoved"); len(evs) != 1 || !strings.Contains(evs[0].Note, digestOf(v2.Digest)) {
			t.Errorf("TagMoved events: %+v, want one naming the new digest", evs)
		}
	})

	t.Run("one digest per tag for the cluster: lists share it, across a restart and a refresh", func(t *testing.T) {
		ns := e.namespace(t, "onedigest")
		pool := map[string]string{"pool": "onedigest"}
		e.node(t, "one-1", pool)
		a := e.public.MustPushRandom(t, "onedigest/app:1.0", 1024, 1)
		ready := func(l *prepullv1.PrePullList, digest string) {
			t.Helper()
			eventually(t, l.Name+" Ready at "+digest, func() error {
				e.agent(t, "one-1", nil)
				got := e.getList(t, l)
				if got.Status.ReadyNodes != "1/1" || len(got.Status.Images) != 1 || got.Status.Images[0].Digest != digestOf(digest) {
					return fmt.Errorf("ready %s, images %+v", got.Status.ReadyNodes, got.Status.Images)
				}
				return nil
			})
		}
		first := list(ns, "first", a.Tag)
		first.Spec.NodeSelector = selector(pool)
		e.mustCreate(t, first)
		ready(first, a.Digest)
		if n := e.resolver.count(a.Tag); n != 1 {
			t.Fatalf("resolved %d times, want 1", n)
		}
		rec := &prepullv1.TagResolution{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(a.Tag)}, rec); err != nil {
			t.Fatalf("the tag's resolution record: %v", err)
		}
		if rec.Spec.Image != a.Tag || rec.Status.Digest != digestOf(a.Digest) || rec.Status.Source != prepullv1.SourceRegistry {
			t.Errorf("record %+v", rec)
		}

		// The tag moves at the registry; a new controller starts; a second
		// list names the tag. It gets the digest the cluster has, and the
		// registry is not asked again before the refresh is due.
		b := e.public.MustPushRandom(t, "onedigest/app:1.0", 1024, 1)
		e.stopController()
		e.stopController = e.startController(t)
		second := list(ns, "second", a.Tag)
		second.Spec.NodeSelector = selector(pool)
		e.mustCreate(t, second)
		ready(second, a.Digest)
		ready(first, a.Digest)
		if n := e.resolver.count(a.Tag); n != 1 {
			t.Errorf("after a restart and a second list the tag was resolved %d times, want 1", n)
		}
		if got := e.entriesOf("one-1", "onedigest/app"); len(got) != 1 {
			t.Errorf("node entries %+v: want one entry for the one tag", got)
		}

		// The refresh moves both lists together, resolving once.
		e.clock.Step(61 * time.Minute)
		touch(t, e, first)
		ready(first, b.Digest)
		ready(second, b.Digest)
		if n := e.resolver.count(a.Tag); n != 2 {
			t.Errorf("the refresh resolved the tag %d times for two lists, want 1 (total %d)", n-1, n)
		}
		eventually(t, "each list says TagMoved", func() error {
			var names []string
			for _, ev := range e.events(t, ns, "TagMoved") {
				names = append(names, ev.Regarding.Name)
			}
			slices.Sort(names)
			if !slices.Equal(slices.Compact(names), []string{"first", "second"}) {
				return fmt.Errorf("TagMoved for %v", names)
			}
			return nil
		})
		eventually(t, "the node's spec holds one entry claiming the tag", func() error {
			e.agent(t, "one-1", nil)
			got := e.entriesOf("one-1", "onedigest/app")
			var claims []string
			for _, en := range got {
				if slices.Contains(tagsOf(&en), a.Tag) {
					claims = append(claims, en.Image)
				}
			}
			if len(claims) != 1 || digestOf(claims[0]) != digestOf(b.Digest) || len(got) != 1 {
				return fmt.Errorf("entries %+v", got)
			}
			return nil
		})

		// The last list naming the tag goes: so does its record.
		for _, l := range []*prepullv1.PrePullList{first, second} {
			if err := e.c.Delete(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "the record goes with the last list", func() error {
			e.agent(t, "one-1", nil)
			err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(a.Tag)}, &prepullv1.TagResolution{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("record still there: %v", err)
			}
			return nil
		})
	})

	t.Run("a tag named with resolution Registry and Node: the registry wins for both", func(t *testing.T) {
		ns := e.namespace(t, "mixedres")
		pool := map[string]string{"pool": "mixedres"}
		e.node(t, "mixres-1", pool)
		e.node(t, "mixres-2", pool)
		img := e.public.MustPushRandom(t, "mixedres/app:v1", 1024, 1)
		byNode := list(ns, "by-node", img.Tag)
		byNode.Spec.NodeSelector, byNode.Spec.Resolution = selector(pool), prepullv1.ResolveOnNode
		byRegistry := list(ns, "by-registry", img.Tag)
		byRegistry.Spec.NodeSelector = selector(pool)
		e.mustCreate(t, byNode)
		e.mustCreate(t, byRegistry)
		eventually(t, "both lists Ready at the registry's digest", func() error {
			for _, n := range []string{"mixres-1", "mixres-2"} {
				e.agent(t, n, nil)
			}
			for _, l := range []*prepullv1.PrePullList{byNode, byRegistry} {
				got := e.getList(t, l)
				if got.Status.ReadyNodes != "2/2" || got.Status.Images[0].Digest != digestOf(img.Digest) {
					return fmt.Errorf("%s: ready %s, images %+v", l.Name, got.Status.ReadyNodes, got.Status.Images)
				}
			}
			return nil
		})
		if en := e.entry("mixres-1", img.Tag); en != nil {
			t.Errorf("the first node was handed the tag to resolve although the registry resolves it: %+v", en)
		}
		if n := e.resolver.count(img.Tag); n != 1 {
			t.Errorf("resolved %d times, want 1", n)
		}
		rec := &prepullv1.TagResolution{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(img.Tag)}, rec); err != nil || rec.Status.Source != prepullv1.SourceRegistry {
			t.Errorf("record %+v (%v): want source Registry", rec.Status, err)
		}
	})

	t.Run("a multi-platform tag resolves to its index digest", func(t *testing.T) {
		ns := e.namespace(t, "multiarch")
		idx, err := testground.RandomIndex(1024, 1, testground.Linux("amd64"), testground.Linux("arm64"))
		if err != nil {
			t.Fatal(err)
		}
		pushed, err := e.public.PushIndex("multi/app:v1", idx, "amd64")
		if err != nil {
			t.Fatal(err)
		}
		l := list(ns, "multi", pushed.Tag)
		l.Spec.NodeSelector = selector(map[string]string{"pool": "none"})
		e.mustCreate(t, l)
		eventually(t, "the index digest in status", func() error {
			got := e.getList(t, l)
			if len(got.Status.Images) != 1 || got.Status.Images[0].Digest != digestOf(pushed.Digest) {
				return fmt.Errorf("images %+v, want digest %s", got.Status.Images, digestOf(pushed.Digest))
			}
			return nil
		})
	})

	t.Run("an unresolvable image degrades the list and the others roll out", func(t *testing.T) {
		ns := e.namespace(t, "unresolvable")
		pool := map[string]string{"pool": "unresolvable"}
		e.node(t, "unres-1", pool)
		missing := e.public.Repo("does/not-exist:v9")
		l := list(ns, "partly", missing, img.Digest)
		l.Spec.NodeSelector = selector(pool)
		e.mustCreate(t, l)
		eventually(t, "Degraded with the registry's answer", func() error {
			got := e.getList(t, l)
			c := condition(got, prepullv1.ConditionDegraded)
			if c == nil || c.Status != metav1.ConditionTrue || c.Reason != prepullv1.ReasonResolutionFailed {
				return fmt.Errorf("degraded %+v", c)
			}
			if !strings.Contains(c.Message, missing) || !strings.Contains(c.Message, "404") {
				return fmt.Errorf("message %q does not name the image and the registry's answer", c.Message)
			}
			return nil
		})
		eventually(t, "the resolvable image still reaches the node", func() error {
			if e.entry("unres-1", img.Digest) == nil {
				return fmt.Errorf("not handed")
			}
			return nil
		})
		e.agent(t, "unres-1", nil)
		got := e.getList(t, l)
		if c := condition(got, prepullv1.ConditionReady); c.Status != metav1.ConditionFalse {
			t.Errorf("Ready %+v with an unresolved image, want False", c)
		}
		if evs := e.events(t, ns, prepullv1.ReasonResolutionFailed); len(evs) == 0 {
			t.Errorf("no ResolutionFailed event")
		}
	})

	t.Run("pull secrets are mirrored for the agents and cleaned up", func(t *testing.T) {
		ns := e.namespace(t, "secrets")
		pool := map[string]string{"pool": "secrets"}
		e.node(t, "sec-1", pool)
		private := e.private.MustPushRandom(t, "private/app:v1", 1024, 1)
		cfg := e.regcred(t, ns)
		l := list(ns, "private", private.Tag)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		e.mustCreate(t, l)
		// The agent reads the mirror by the name the list's secret gives it.
		mirror := prepullv1.MirrorSecretName(ns, "private", "regcred")
		eventually(t, "resolved with the secret and handed, its secret mirrored", func() error {
			if en := e.entry("sec-1", private.Digest); en == nil {
				return fmt.Errorf("no entry for %s", private.Digest)
			}
			return e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: mirror}, &corev1.Secret{})
		})
		s := &corev1.Secret{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: mirror}, s); err != nil {
			t.Fatalf("mirror %s/%s: %v", controllerNS, mirror, err)
		}
		if string(s.Data[corev1.DockerConfigJsonKey]) != cfg || s.Type != corev1.SecretTypeDockerConfigJson {
			t.Errorf("mirror does not carry the source's credentials and type")
		}
		got := e.getList(t, l)
		raw := fmt.Sprintf("%+v", got) + fmt.Sprintf("%+v", e.entry("sec-1", private.Digest))
		if strings.Contains(raw, "s3cret") {
			t.Errorf("a credential leaked into a custom resource")
		}
		version := got.Status.PullSecretsVersion
		if version == "" {
			t.Errorf("no pullSecretsVersion in the status of a list with a pull secret")
		}

		// The source secret rotated: the mirror follows, and the list's
		// status says so to the agents, the list untouched.
		rotated := strings.Replace(cfg, "s3cret", "n3w-s3cret", 1)
		src := &corev1.Secret{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "regcred"}, src); err != nil {
			t.Fatal(err)
		}
		src.Data[corev1.DockerConfigJsonKey] = []byte(rotated)
		if err := e.c.Update(ctx, src); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the rotated secret mirrored and its new version in status", func() error {
			if err := e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: mirror}, s); err != nil {
				return err
			}
			if string(s.Data[corev1.DockerConfigJsonKey]) != rotated {
				return fmt.Errorf("the mirror holds the old credentials")
			}
			if v := e.getList(t, l).Status.PullSecretsVersion; v == version || v == "" {
				return fmt.Errorf("pullSecretsVersion %q, was %q", v, version)
			}
			return nil
		})
		if g := e.getList(t, l).Generation; g != got.Generation {
			t.Errorf("the list's generation moved from %d to %d", got.Generation, g)
		}
		if v := e.getList(t, l).Status.PullSecretsVersion; strings.Contains(v, "s3cret") {
			t.Errorf("pullSecretsVersion carries the credential: %q", v)
		}

		broken := list(ns, "broken", private.Tag)
		broken.Spec.NodeSelector = selector(pool)
		broken.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "absent"}}
		e.mustCreate(t, broken)
		eventually(t, "a missing secret degrades the list, naming the field", func() error {
			c := condition(e.getList(t, broken), prepullv1.ConditionDegraded)
			if c == nil || c.Reason != prepullv1.ReasonPullSecretUnavailable || !strings.Contains(c.Message, "spec.imagePullSecrets[0]: secret secrets/absent not found") {
				return fmt.Errorf("degraded %+v", c)
			}
			return nil
		})
		// The missing secret created: mirrored at once, the list untouched.
		e.mustCreate(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "absent"},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
		})
		eventually(t, "a secret created later is mirrored", func() error {
			if c := condition(e.getList(t, broken), prepullv1.ConditionDegraded); c == nil || c.Reason == prepullv1.ReasonPullSecretUnavailable {
				return fmt.Errorf("degraded %+v", c)
			}
			return e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: prepullv1.MirrorSecretName(ns, "broken", "absent")}, &corev1.Secret{})
		})

		if err := e.c.Delete(ctx, l); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the mirror goes with the list", func() error {
			e.agent(t, "sec-1", nil)
			err := e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: mirror}, &corev1.Secret{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("mirror still there: %v", err)
			}
			return nil
		})
	})

	t.Run("status aggregates what agents report", func(t *testing.T) {
		ns := e.namespace(t, "aggregation")
		pool := map[string]string{"pool": "aggregation"}
		e.node(t, "agg-ok", pool)
		e.node(t, "agg-bad", pool)
		l := list(ns, "mixed", img.Digest)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		eventually(t, "both nodes handed", func() error {
			if e.entry("agg-ok", img.Digest) == nil || e.entry("agg-bad", img.Digest) == nil {
				return fmt.Errorf("not handed")
			}
			return nil
		})
		e.agent(t, "agg-ok", nil)
		e.agent(t, "agg-bad", map[string]string{img.Digest: "pull: 401 Unauthorized"})
		eventually(t, "one ready, one failed", func() error {
			got := e.getList(t, l)
			n := got.Status.Nodes
			if n.Selected != 2 || n.Ready != 1 || n.Failed != 1 || got.Status.ReadyNodes != "1/2" {
				return fmt.Errorf("nodes %+v", n)
			}
			if len(got.Status.Failures) != 1 || got.Status.Failures[0].Node != "agg-bad" || got.Status.Failures[0].Reason != "Unauthorized" {
				return fmt.Errorf("failures %+v", got.Status.Failures)
			}
			if c := condition(got, prepullv1.ConditionDegraded); c.Reason != prepullv1.ReasonNodesFailed || !strings.Contains(c.Message, "401 Unauthorized") {
				return fmt.Errorf("degraded %+v", c)
			}
			if got.Status.Images[0].NodesReady != 1 || got.Status.Images[0].NodesFailed != 1 {
				return fmt.Errorf("image counts %+v", got.Status.Images[0])
			}
			return nil
		})
		e.agent(t, "agg-bad", nil)
		eventually(t, "Ready once both report Present", func() error {
			got := e.getList(t, l)
			if c := condition(got, prepullv1.ConditionReady); c.Status != metav1.ConditionTrue || c.Reason != prepullv1.ReasonAllNodesReady {
				return fmt.Errorf("ready %+v", c)
			}
			if c := condition(got, prepullv1.ConditionDegraded); c.Status != metav1.ConditionFalse {
				return fmt.Errorf("still degraded %+v", c)
			}
			if c := condition(got, prepullv1.ConditionProgressing); c.Status != metav1.ConditionFalse {
				return fmt.Errorf("still progressing %+v", c)
			}
			return nil
		})
		eventually(t, "a Ready event and a NodesFailed event", func() error {
			if len(e.events(t, ns, "Ready")) != 1 || len(e.events(t, ns, prepullv1.ReasonNodesFailed)) != 1 {
				return fmt.Errorf("events Ready %d, NodesFailed %d", len(e.events(t, ns, "Ready")), len(e.events(t, ns, prepullv1.ReasonNodesFailed)))
			}
			return nil
		})
	})

	t.Run("a selector admission cannot check is reported, changes nothing, and the list can be deleted", func(t *testing.T) {
		ns := e.namespace(t, "bogus")
		e.node(t, "bogus-1", map[string]string{"pool": "bogus"})
		l := list(ns, "bogus", img.Digest)
		l.Spec.NodeSelector = selector(map[string]string{"pool": "bogus"})
		e.mustCreate(t, l)
		eventually(t, "the node handed the image", func() error {
			if !slices.Contains(activeOwners(e.entry("bogus-1", img.Digest)), ns+"/bogus") {
				return errors.New("not yet")
			}
			return nil
		})
		// An operator the apiserver's schema does not know.
		got := e.getList(t, l)
		got.Spec.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: "Bogus", Values: []string{"x"}}}}
		if err := e.c.Update(ctx, got); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the list says why", func() error {
			got := e.getList(t, l)
			for _, typ := range []string{prepullv1.ConditionReady, prepullv1.ConditionDegraded} {
				c := condition(got, typ)
				if c == nil || c.Reason != prepullv1.ReasonInvalidSpec || !strings.Contains(c.Message, "spec.nodeSelector") || !strings.Contains(c.Message, "Bogus") ||
					c.ObservedGeneration != got.Generation {
					return fmt.Errorf("%s: %+v", typ, c)
				}
			}
			return nil
		})
		if evs := e.events(t, ns, prepullv1.ReasonInvalidSpec); len(evs) != 1 || !strings.Contains(evs[0].Note, "Bogus") {
			t.Errorf("InvalidSpec events: %+v, want one naming the operator", evs)
		}
		// Nothing is lost meanwhile: the node keeps the list's image.
		if !slices.Contains(activeOwners(e.entry("bogus-1", img.Digest)), ns+"/bogus") {
			t.Error("the node lost the image when the selector became invalid")
		}
		e.deleteList(t, l, "bogus-1")

		// Created invalid, it has a status from the start.
		fresh := list(ns, "bogus-fresh", img.Digest)
		fresh.Spec.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: "Bogus"}}}
		e.mustCreate(t, fresh)
		eventually(t, "a status for a list created invalid", func() error {
			got := e.getList(t, fresh)
			if c := condition(got, prepullv1.ConditionDegraded); c == nil || c.Reason != prepullv1.ReasonInvalidSpec || len(got.Status.Images) != 1 {
				return fmt.Errorf("status %+v", got.Status)
			}
			return nil
		})
		e.deleteList(t, fresh)
	})

	t.Run("latest and untagged images are accepted with advice", func(t *testing.T) {
		ns := e.namespace(t, "latest")
		e.public.MustPushRandom(t, "shared/app:latest", 1024, 1)
		l := list(ns, "mutable", e.public.Repo("shared/app"), img.Tag)
		l.Spec.NodeSelector = selector(map[string]string{"pool": "none"})
		e.mustCreate(t, l)
		eventually(t, "advice in status", func() error {
			got := e.getList(t, l)
			if len(got.Status.Images) != 2 || !strings.Contains(got.Status.Images[0].Warning, "imagePullPolicy: Always") || got.Status.Images[1].Warning != "" {
				return fmt.Errorf("images %+v", got.Status.Images)
			}
			if c := condition(got, prepullv1.ConditionReady); c == nil || c.Reason != prepullv1.ReasonNoNodesSelected {
				return fmt.Errorf("ready %+v, want reason NoNodesSelected", c)
			}
			return nil
		})
		if evs := e.events(t, ns, "MutableTag"); len(evs) != 1 {
			t.Errorf("MutableTag events: %d, want 1", len(evs))
		}
	})

	t.Run("a tag resolved on a node reaches the others as its digest", func(t *testing.T) {
		ns := e.namespace(t, "node-resolution")
		pool := map[string]string{"pool": "noderes"}
		e.node(t, "nr-a", pool)
		e.node(t, "nr-b", pool)
		tagOnly := e.public.MustPushRandom(t, "airgap/app:v1", 1024, 1)
		l := list(ns, "via-node", tagOnly.Tag)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Resolution = prepullv1.ResolveOnNode
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		eventually(t, "the first node is handed the tag", func() error {
			if e.entry("nr-a", tagOnly.Tag) == nil {
				return fmt.Errorf("nr-a lacks the tag entry")
			}
			return nil
		})
		if e.entry("nr-b", tagOnly.Tag) != nil {
			t.Errorf("the second node was handed the tag, not a digest")
		}
		eventually(t, "the list says it waits for the node to resolve the tag, and nothing failed", func() error {
			got := e.getList(t, l)
			p, d := condition(got, prepullv1.ConditionProgressing), condition(got, prepullv1.ConditionDegraded)
			if p == nil || p.Reason != prepullv1.ReasonResolving || !strings.Contains(p.Message, "waiting for node nr-a to pull it") {
				return fmt.Errorf("Progressing %+v", p)
			}
			if d == nil || d.Status != metav1.ConditionFalse {
				return fmt.Errorf("Degraded %+v", d)
			}
			return nil
		})
		before := e.resolver.count(tagOnly.Tag)
		// The agent of nr-a pulls the tag and reports its digest.
		report := func(digest string) {
			t.Helper()
			set, err := e.nodeSet("nr-a")
			if err != nil {
				t.Fatal(err)
			}
			set.Status.Images = []prepullv1.NodeImageStatus{{
				Image: tagOnly.Tag, Phase: prepullv1.PhasePresent, Digest: digestOf(digest),
				PulledAt: &metav1.Time{Time: e.clock.Now()},
			}}
			if err := e.c.Status().Update(ctx, set); err != nil {
				t.Fatal(err)
			}
		}
		report(tagOnly.Digest)
		handedEverywhere := func(digest string) {
			t.Helper()
			eventually(t, "every node is handed the digest the node reported", func() error {
				for _, n := range []string{"nr-a", "nr-b"} {
					if len(activeOwners(e.entry(n, digest))) == 0 {
						return fmt.Errorf("%s lacks %s", n, digest)
					}
				}
				return nil
			})
		}
		handedEverywhere(tagOnly.Digest)

		// The tag moves; at the next refresh the probe node is asked to pull
		// it again, and what it reports rolls out.
		moved := e.public.MustPushRandom(t, "airgap/app:v1", 1024, 1)
		e.clock.Step(61 * time.Minute)
		touch(t, e, l)
		eventually(t, "the probe node is asked to pull the tag again", func() error {
			en := e.entry("nr-a", tagOnly.Tag)
			if en == nil || en.ResolveAfter == nil || e.clock.Now().Before(en.ResolveAfter.Time) {
				return fmt.Errorf("probe entry %+v", en)
			}
			return nil
		})
		e.clock.Step(time.Second)
		report(moved.Digest)
		handedEverywhere(moved.Digest)
		if got := e.getList(t, l).Status.Images[0].Digest; got != digestOf(moved.Digest) {
			t.Errorf("status digest %s, want the moved tag's %s", got, digestOf(moved.Digest))
		}
		if after := e.resolver.count(tagOnly.Tag); after != before {
			t.Errorf("the controller asked the registry %d times for a tag resolved on a node", after-before)
		}
	})

	t.Run("an archive list: its tags are resolved from the archive on a node, never at a registry", func(t *testing.T) {
		ns := e.namespace(t, "archive")
		pool := map[string]string{"pool": "archive"}
		e.node(t, "ar-a", pool)
		e.node(t, "ar-b", pool)
		img := e.public.MustPushRandom(t, "archived/app:v1", 1024, 1)
		pinned := e.public.MustPushRandom(t, "archived/pinned:v1", 1024, 1)
		src := prepullv1.ArchiveSource{Path: "site/bundle.tar", SHA256: strings.Repeat("b", 64)}
		l := withArchive(list(ns, "archived", img.Tag, pinned.Digest), src)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
		e.mustCreate(t, l)
		eventually(t, "the probe node is handed the tag with the archive, and every node the digest", func() error {
			probe := e.entry("ar-a", img.Tag)
			if probe == nil || probe.Archive == nil || *probe.Archive != src || probe.ResolveAfter != nil {
				return fmt.Errorf("probe entry %+v", probe)
			}
			for _, n := range []string{"ar-a", "ar-b"} {
				if en := e.entry(n, pinned.Digest); en == nil || en.Archive == nil || *en.Archive != src {
					return fmt.Errorf("%s: entry %+v", n, en)
				}
			}
			return nil
		})
		if msg := e.getList(t, l).Status.Images[0].Message; !strings.Contains(msg, "import it from site/bundle.tar") {
			t.Errorf("status message while unresolved: %q, want it to say the tag is imported from the archive", msg)
		}
		set, err := e.nodeSet("ar-a")
		if err != nil {
			t.Fatal(err)
		}
		set.Status.Images = []prepullv1.NodeImageStatus{{
			Image: img.Tag, Phase: prepullv1.PhasePresent, Digest: digestOf(img.Digest),
			PulledAt: &metav1.Time{Time: e.clock.Now()}, ImportedFrom: src.SHA256,
		}}
		if err := e.c.Status().Update(ctx, set); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the digest the probe imported reaches every node with the archive", func() error {
			for _, n := range []string{"ar-a", "ar-b"} {
				if en := e.entry(n, img.Digest); en == nil || en.Archive == nil || len(activeOwners(en)) == 0 {
					return fmt.Errorf("%s: entry %+v", n, en)
				}
			}
			return nil
		})
		if n := e.resolver.count(img.Tag); n != 0 {
			t.Errorf("the controller asked the registry %d times for a tag of an archive list", n)
		}
	})
}

// withArchive gives l the archive source a.
func withArchive(l *prepullv1.PrePullList, a prepullv1.ArchiveSource) *prepullv1.PrePullList {
	l.Spec.Source = &prepullv1.ImageSource{Archive: &a}
	return l
}

// deleteList deletes l and plays the agents of nodes until it is gone.
func (e *env) deleteList(t *testing.T, l *prepullv1.PrePullList, nodes ...string) {
	t.Helper()
	if err := e.c.Delete(ctx, l); err != nil {
		t.Fatal(err)
	}
	eventually(t, "list "+l.Name+" released and gone", func() error {
		for _, n := range nodes {
			e.agent(t, n, nil)
		}
		err := e.c.Get(ctx, client.ObjectKeyFromObject(l), &prepullv1.PrePullList{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
}

// regcred makes the Secret regcred in ns, of the private registry's
// credentials, and returns its docker config.
func (e *env) regcred(t *testing.T, ns string) string {
	t.Helper()
	cfg := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"s3cret"}}}`, e.private.Host)
	e.mustCreate(t, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
	})
	return cfg
}

// touch changes an annotation of l to trigger a reconcile.
func touch(t *testing.T, e *env, l *prepullv1.PrePullList) {
	t.Helper()
	// The controller writes the list's status meanwhile: read again on a
	// conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		got := e.getList(t, l)
		if got.Annotations == nil {
			got.Annotations = map[string]string{}
		}
		got.Annotations["test/touched"] = time.Now().String()
		return e.c.Update(ctx, got)
	})
	if err != nil {
		t.Fatal(err)
	}
}
