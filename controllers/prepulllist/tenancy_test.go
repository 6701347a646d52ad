package prepulllist_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// refusedFor waits until l says PolicyRefused with a message holding want.
func (e *env) refusedFor(t *testing.T, l *prepullv1.PrePullList, want string) {
	t.Helper()
	eventually(t, fmt.Sprintf("list %s refused for %q", l.Name, want), func() error {
		c := condition(e.getList(t, l), prepullv1.ConditionDegraded)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != prepullv1.ReasonPolicyRefused || !strings.Contains(c.Message, want) {
			return fmt.Errorf("degraded: %+v", c)
		}
		return nil
	})
}

// TestControllerHoldsListsToTheirPolicy: with PrePullPolicies, a list
// reaches only the nodes its namespace's policy grants (its selector
// intersected), a list past a quota does nothing and says so while the
// older lists go on, a namespace whose policy does not exist gets nothing,
// and a policy narrowed later takes its lists off the nodes it no longer
// grants; all without admission (the controller's own enforcement).
func TestControllerHoldsListsToTheirPolicy(t *testing.T) {
	e := setup(t)
	e.node(t, "pool-a", map[string]string{"pool": "a"})
	e.node(t, "pool-b", map[string]string{"pool": "b"})
	app := e.public.MustPushRandom(t, "team/app:1", 1<<10, 1)
	db := e.public.MustPushRandom(t, "team/db:1", 1<<10, 1)
	cache := e.public.MustPushRandom(t, "team/cache:1", 1<<10, 1)
	other := e.public.MustPushRandom(t, "other/tool:1", 1<<10, 1)
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team", Labels: map[string]string{prepullv1.PolicyLabel: "team"}}})
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "lost", Labels: map[string]string{prepullv1.PolicyLabel: "nowhere"}}})
	pol := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "team"}, Spec: prepullv1.PrePullPolicySpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}},
		Repositories: []string{e.public.Host + "/team"},
		Quotas:       prepullv1.PolicyQuotas{ImagesPerNode: ptr.To[int32](2)},
	}}
	e.mustCreate(t, pol)

	wide := list("team", "wide", app.Tag)
	e.mustCreate(t, wide)
	eventually(t, "the list's image on the granted node", func() error {
		if en := e.entry("pool-a", app.Digest); en == nil || len(activeOwners(en)) == 0 {
			return fmt.Errorf("pool-a: %+v", en)
		}
		return nil
	})
	if en := e.entry("pool-b", app.Digest); en != nil {
		t.Errorf("a list of a namespace granted pool=a reached pool-b: %+v", en)
	}

	// Two more images than the quota has room for: refused, the older list
	// unaffected. Lists are served by creation time, to the second, then by
	// name: big is created a second later than wide, which its name would
	// put first.
	time.Sleep(time.Until(e.getList(t, wide).CreationTimestamp.Add(1100 * time.Millisecond)))
	big := list("team", "big", db.Tag, cache.Tag)
	e.mustCreate(t, big)
	e.refusedFor(t, big, "spec.quotas.imagesPerNode: PrePullPolicy team")
	for _, d := range []string{db.Digest, cache.Digest} {
		if en := e.entry("pool-a", d); en != nil {
			t.Errorf("the list past the quota placed %s: %+v", d, en)
		}
	}
	if c := condition(e.getList(t, wide), prepullv1.ConditionDegraded); c != nil && c.Reason == prepullv1.ReasonPolicyRefused {
		t.Errorf("the older list is refused: %+v", c)
	}

	// A namespace whose policy does not exist.
	lost := list("lost", "orphan", other.Tag)
	e.mustCreate(t, lost)
	e.refusedFor(t, lost, "PrePullPolicy nowhere")

	// The policy narrowed: wide's repository no longer granted; it leaves
	// the node, and big now fits the quota but names the same repository.
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
		t.Fatal(err)
	}
	pol.Spec.Repositories = []string{e.public.Host + "/elsewhere"}
	if err := e.c.Update(ctx, pol); err != nil {
		t.Fatal(err)
	}
	e.refusedFor(t, wide, "spec.images: PrePullPolicy team does not grant repository "+e.public.Host+"/team/app")
	eventually(t, "the narrowed list's entry released on pool-a", func() error {
		if en := e.entry("pool-a", app.Digest); en != nil && len(activeOwners(en)) > 0 {
			return fmt.Errorf("pool-a still holds it for %v", activeOwners(en))
		}
		return nil
	})
}

// TestATagIsHandedOnlyToListsThatReadIt: a private tag resolved with one
// namespace's credentials is not handed to another namespace's list that
// has none (it says why, and the first list is undisturbed), and once that
// list has credentials that read it, it is handed the digest at its next
// reconcile: its reader is new, so no earlier failure delays it (the
// controller's clock does not move in this test).
func TestATagIsHandedOnlyToListsThatReadIt(t *testing.T) {
	e := setup(t)
	pool := map[string]string{"pool": "readers"}
	e.node(t, "reader-1", pool)
	img := e.private.MustPushRandom(t, "private/shared:v1", 1024, 1)
	secret := func(ns string) {
		cfg := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"s3cret"}}}`, e.private.Host)
		e.mustCreate(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)},
		})
	}
	owner, stranger := e.namespace(t, "owner"), e.namespace(t, "stranger")
	secret(owner)
	a := list(owner, "a", img.Tag)
	a.Spec.NodeSelector = selector(pool)
	a.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	e.mustCreate(t, a)
	eventually(t, "the owner's list handed the digest", func() error {
		if en := e.entry("reader-1", img.Digest); en == nil {
			return fmt.Errorf("no entry")
		}
		return nil
	})

	b := list(stranger, "b", img.Tag)
	b.Spec.NodeSelector = selector(pool)
	e.mustCreate(t, b)
	eventually(t, "the stranger's list told why it has no digest", func() error {
		got := e.getList(t, b)
		if len(got.Status.Images) != 1 || got.Status.Images[0].Digest != "" || !strings.Contains(strings.ToLower(got.Status.Images[0].Message), "unauthorized") {
			return fmt.Errorf("images %+v", got.Status.Images)
		}
		return nil
	})
	if owners := activeOwners(e.entry("reader-1", img.Digest)); len(owners) != 1 || !strings.HasPrefix(owners[0], owner+"/") {
		t.Errorf("the entry's owners %v: want the owner's list alone", owners)
	}
	if got := e.getList(t, a); !strings.HasSuffix(img.Digest, "@"+got.Status.Images[0].Digest) || got.Status.Images[0].Message != "" {
		t.Errorf("the owner's list disturbed: %+v", got.Status.Images)
	}

	// Its own credentials: handed at once.
	secret(stranger)
	got := e.getList(t, b)
	got.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	if err := e.c.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stranger's list handed the digest once its credentials read it", func() error {
		if owners := activeOwners(e.entry("reader-1", img.Digest)); len(owners) != 2 {
			return fmt.Errorf("owners %v", owners)
		}
		if got := e.getList(t, b); !strings.HasSuffix(img.Digest, "@"+got.Status.Images[0].Digest) || got.Status.Images[0].Message != "" {
			return fmt.Errorf("images %+v", got.Status.Images)
		}
		return nil
	})
	rec := &prepullv1.TagResolution{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(img.Tag)}, rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Status.Readers) != 2 || slices.Contains(rec.Status.Readers, "") {
		t.Errorf("readers %q: want the two namespaces' credentials, not anonymous access", rec.Status.Readers)
	}
}

// TestAFixedSecretTakesEffectWithinSeconds: a list whose Secret cannot
// read its private tag is Degraded, and its Secret is then read again every
// few seconds, not at the controller's SecretPoll (an hour here): once the
// Secret is fixed, the list is handed the digest without any other change.
func TestAFixedSecretTakesEffectWithinSeconds(t *testing.T) {
	e := setup(t, func(e *env) { e.secretPoll = time.Hour })
	e.node(t, "fixed-1", nil)
	img := e.private.MustPushRandom(t, "private/fixed:v1", 1024, 1)
	ns := e.namespace(t, "fixer")
	config := func(password string) map[string][]byte {
		return map[string][]byte{corev1.DockerConfigJsonKey: fmt.Appendf(nil, `{"auths":{%q:{"username":"alice","password":%q}}}`, e.private.Host, password)}
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"}, Type: corev1.SecretTypeDockerConfigJson, Data: config("wrong")}
	e.mustCreate(t, secret)
	l := list(ns, "fixed", img.Tag)
	l.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	e.mustCreate(t, l)
	eventually(t, "the list Degraded, its Secret refused", func() error {
		got := e.getList(t, l)
		c := meta.FindStatusCondition(got.Status.Conditions, prepullv1.ConditionDegraded)
		if c == nil || c.Reason != prepullv1.ReasonResolutionFailed || !strings.Contains(strings.ToLower(c.Message), "unauthorized") {
			return fmt.Errorf("degraded %+v", c)
		}
		return nil
	})
	secret.Data = config("s3cret")
	if err := e.c.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the list handed the digest once its Secret is fixed", func() error {
		if got := e.getList(t, l); len(got.Status.Images) != 1 || !strings.HasSuffix(img.Digest, "@"+got.Status.Images[0].Digest) {
			return fmt.Errorf("images %+v", got.Status.Images)
		}
		if en := e.entry("fixed-1", img.Digest); en == nil {
			return fmt.Errorf("no entry on fixed-1")
		}
		return nil
	})
}

// TestBytesPerNodeQuota: under spec.quotas.bytesPerNode the controller
// sizes each digest at the registry before any node gets it, serves a
// namespace's lists oldest first within the quota, and refuses, naming the
// policy and the field, the list that would take a node past it or that
// it cannot size (an archive's images); the older lists are unaffected.
// Every list's status says which of its images are OCI artifacts.
func TestBytesPerNodeQuota(t *testing.T) {
	e := setup(t)
	e.node(t, "n1", nil)
	one := e.public.MustPushRandom(t, "quota/one:1", 1<<20, 1)
	two := e.public.MustPushRandom(t, "quota/two:1", 3<<19, 1)
	three := e.public.MustPushRandom(t, "quota/three:1", 1<<20, 1)
	art, err := testground.Artifact("application/vnd.example.model.v1", []testground.File{{Path: "w.bin", Mode: 0o644, Data: testground.RandomBytes(64 << 10)}})
	if err != nil {
		t.Fatal(err)
	}
	model, err := e.public.PushImage("quota/model:1", art)
	if err != nil {
		t.Fatal(err)
	}
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "quota", Labels: map[string]string{prepullv1.PolicyLabel: "quota"}}})
	e.mustCreate(t, &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "quota"}, Spec: prepullv1.PrePullPolicySpec{
		Archives: &prepullv1.ArchiveGrant{},
		Quotas:   prepullv1.PolicyQuotas{BytesPerNode: ptr.To(resource.MustParse("3Mi"))},
	}})

	first := list("quota", "first", one.Tag, model.Tag)
	e.mustCreate(t, first)
	sized := func(l *prepullv1.PrePullList, n int) {
		t.Helper()
		eventually(t, "list "+l.Name+" sized", func() error {
			got := e.getList(t, l)
			for _, img := range got.Status.Images {
				if img.Bytes == 0 {
					return fmt.Errorf("%s: no bytes: %+v %+v", img.Image, got.Status.Images, condition(got, prepullv1.ConditionDegraded))
				}
			}
			if len(got.Status.Images) != n {
				return fmt.Errorf("%d images", len(got.Status.Images))
			}
			return nil
		})
	}
	sized(first, 2)
	for _, img := range e.getList(t, first).Status.Images {
		want := ""
		if img.Image == model.Tag {
			want = "application/vnd.example.model.v1"
		}
		if img.ArtifactType != want {
			t.Errorf("%s: artifactType %q, want %q", img.Image, img.ArtifactType, want)
		}
		if mounts := !strings.Contains(img.Warning, "does not mount it as an image volume"); mounts != (want == "") {
			t.Errorf("%s: warning %q", img.Image, img.Warning)
		}
		if img.Image == one.Tag && (img.Bytes < 1<<20 || img.Bytes > 5<<19) {
			t.Errorf("%s: %d bytes for about 1 MiB of layers", img.Image, img.Bytes)
		}
	}
	time.Sleep(time.Until(e.getList(t, first).CreationTimestamp.Add(1100 * time.Millisecond)))
	second := list("quota", "second", two.Tag, one.Tag)
	e.mustCreate(t, second)
	sized(second, 2)
	time.Sleep(time.Until(e.getList(t, second).CreationTimestamp.Add(1100 * time.Millisecond)))

	// first and second hold about 2.6 MiB (one counted once); three
	// would take the node past 3 MiB.
	third := list("quota", "third", three.Tag)
	e.mustCreate(t, third)
	e.refusedFor(t, third, "spec.quotas.bytesPerNode: PrePullPolicy quota lets namespace quota hold 3Mi on a node: its older lists hold 2.")
	if en := e.entry("n1", three.Digest); en != nil {
		t.Errorf("the list past the quota placed its image: %+v", en)
	}
	for _, l := range []*prepullv1.PrePullList{first, second} {
		if c := condition(e.getList(t, l), prepullv1.ConditionDegraded); c != nil && c.Reason == prepullv1.ReasonPolicyRefused {
			t.Errorf("older list %s refused: %+v", l.Name, c)
		}
	}
	for _, d := range []string{one.Digest, two.Digest, model.Digest} {
		if en := e.entry("n1", d); en == nil {
			t.Errorf("%s not on the node", d)
		}
	}

	// An archive's images are not read by the controller: not sized.
	packed := withArchive(list("quota", "packed", e.public.Host+"/quota/packed:1"), prepullv1.ArchiveSource{URL: "http://files.example/p.tar", SHA256: strings.Repeat("b", 64)})
	e.mustCreate(t, packed)
	e.refusedFor(t, packed, "the controller cannot size "+e.public.Host+"/quota/packed:1: resolved on nodes")

	// Deleting second makes room: third is served.
	if err := e.c.Delete(ctx, second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "third served once second is deleted", func() error {
		if en := e.entry("n1", three.Digest); en == nil {
			return fmt.Errorf("not on the node; status %+v", condition(e.getList(t, third), prepullv1.ConditionDegraded))
		}
		return nil
	})
}

// TestListSaysWhereItsPrivateImagesAreOpen: a list with pull secrets says,
// from what each selected node's agent read of its kubelet, whether pods
// there may run its private images without credentials, naming the nodes.
func TestListSaysWhereItsPrivateImagesAreOpen(t *testing.T) {
	e := setup(t)
	ns := e.namespace(t, "exposed")
	pool := map[string]string{"pool": "exposed"}
	e.node(t, "open-1", pool)
	e.node(t, "strict-1", pool)
	private := e.private.MustPushRandom(t, "exposed/app:v1", 1024, 1)
	public := e.public.MustPushRandom(t, "exposed/tool:v1", 1024, 1)
	e.regcred(t, ns)
	withSecret := list(ns, "private", private.Tag)
	withSecret.Spec.NodeSelector = selector(pool)
	withSecret.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	plain := list(ns, "public", public.Tag)
	plain.Spec.NodeSelector = selector(pool)
	for _, l := range []*prepullv1.PrePullList{withSecret, plain} {
		l.Spec.Rollout.MaxConcurrentNodes = ptr.To(intstr.FromString("100%"))
		e.mustCreate(t, l)
	}
	e.handed(t, "open-1", 2)
	e.handed(t, "strict-1", 2)

	open := func(l *prepullv1.PrePullList, status metav1.ConditionStatus, reason, says string) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s %s %s", l.Name, prepullv1.ConditionPrivateImagesOpen, status), func() error {
			c := condition(e.getList(t, l), prepullv1.ConditionPrivateImagesOpen)
			if c == nil || c.Status != status || c.Reason != reason || !strings.Contains(c.Message, says) {
				return fmt.Errorf("%+v", c)
			}
			return nil
		})
	}
	open(withSecret, metav1.ConditionUnknown, prepullv1.ReasonKubeletPolicyUnknown, "no selected node's agent")
	say := func(node, policy string) {
		eventually(t, node+" says "+policy, func() error {
			set, err := e.nodeSet(node)
			if err != nil {
				return err
			}
			set.Status.CredentialVerification = policy
			return e.c.Status().Update(ctx, set)
		})
	}
	say("open-1", "NeverVerifyPreloadedImages")
	say("strict-1", "AlwaysVerify")
	open(withSecret, metav1.ConditionTrue, prepullv1.ReasonKubeletDoesNotVerify, "on 1 of the selected nodes the kubelet lets any pod run the images present, this list's private ones included, without credentials: open-1 (NeverVerifyPreloadedImages)")
	say("open-1", "AlwaysVerify")
	open(withSecret, metav1.ConditionFalse, prepullv1.ReasonKubeletVerifies, "each of 2 selected nodes")
	if c := condition(e.getList(t, plain), prepullv1.ConditionPrivateImagesOpen); c != nil {
		t.Errorf("a list without pull secrets says %+v", c)
	}
}

// TestARefusedListsSecretsAreNotPolledFast: the Secrets of a list refused
// by its namespace's policy are read at --secret-poll (here an hour), not
// every 2 s as those of a list whose tag its Secret could not read: a
// fixed Secret cannot end a refusal, and a shared cluster's API server is
// not asked twice a second for each refused list.
func TestARefusedListsSecretsAreNotPolledFast(t *testing.T) {
	polls := &secretPolls{}
	e := setup(t, func(e *env) {
		e.secretPoll = time.Hour
		e.cfg = rest.CopyConfig(e.cfg)
		e.cfg.Wrap(polls.wrap)
	})
	e.node(t, "polled-1", nil)
	img := e.private.MustPushRandom(t, "private/polled:v1", 1024, 1)
	wrong := map[string][]byte{corev1.DockerConfigJsonKey: fmt.Appendf(nil, `{"auths":{%q:{"username":"alice","password":"wrong"}}}`, e.private.Host)}
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "polled-refused", Labels: map[string]string{prepullv1.PolicyLabel: "no-lists"}}})
	e.mustCreate(t, &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-lists"}, Spec: prepullv1.PrePullPolicySpec{
		Quotas: prepullv1.PolicyQuotas{Lists: ptr.To(int32(0))},
	}})
	e.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "polled-failing", Labels: map[string]string{prepullv1.PolicyLabel: "open"}}})
	e.mustCreate(t, &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "open"}})
	lists := map[string]*prepullv1.PrePullList{}
	for _, ns := range []string{"polled-refused", "polled-failing"} {
		e.mustCreate(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"}, Type: corev1.SecretTypeDockerConfigJson, Data: wrong})
		l := list(ns, "polled", img.Tag)
		l.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		e.mustCreate(t, l)
		lists[ns] = l
	}
	e.refusedFor(t, lists["polled-refused"], "quotas.lists")
	eventually(t, "the other list Degraded, its Secret refused", func() error {
		c := condition(e.getList(t, lists["polled-failing"]), prepullv1.ConditionDegraded)
		if c == nil || c.Reason != prepullv1.ReasonResolutionFailed {
			return fmt.Errorf("degraded %+v", c)
		}
		return nil
	})
	eventually(t, "the refused list's Secret read once", func() error {
		if n := polls.count("polled-refused"); n == 0 {
			return fmt.Errorf("not read")
		}
		return nil
	})
	before := map[string]int{"polled-refused": polls.count("polled-refused"), "polled-failing": polls.count("polled-failing")}
	time.Sleep(7 * time.Second)
	if n := polls.count("polled-refused") - before["polled-refused"]; n != 0 {
		t.Errorf("the refused list's Secret was read %d times in 7 s, want none before the hour's poll", n)
	}
	if n := polls.count("polled-failing") - before["polled-failing"]; n < 2 {
		t.Errorf("the failing list's Secret was read %d times in 7 s, want one every 2 s", n)
	}
}

// secretPolls counts, by namespace, the reads of Secrets' metadata (the
// controller's poll of the Secrets lists name) that pass its transport.
type secretPolls struct {
	counter
}

func (p *secretPolls) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		parts := strings.Split(req.URL.Path, "/")
		// /api/v1/namespaces/<ns>/secrets/<name>
		if req.Method == http.MethodGet && len(parts) == 7 && parts[5] == "secrets" && strings.Contains(req.Header.Get("Accept"), "as=PartialObjectMetadata") {
			p.add(parts[4])
		}
		return rt.RoundTrip(req)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
