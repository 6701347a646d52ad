package prepulllist_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// Signatures made in the test with keys of its own, pushed to a real
// registry beside the images, checked by the controller on a real API
// server before any node gets a digest.
func TestSignatures(t *testing.T) {
	e := setup(t)
	ns := e.namespace(t, "signed")
	pool := map[string]string{"pool": "signed"}
	nodes := []string{"sig-1", "sig-2", "sig-3"}
	for _, n := range nodes {
		e.node(t, n, pool)
	}
	ours, oursEd, stranger := testground.NewSigningKey(t, false), testground.NewSigningKey(t, true), testground.NewSigningKey(t, false)
	e.mustCreate(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "keys"}, Data: map[string][]byte{"cosign.pub": ours.PEM}})
	e.mustCreate(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "more-keys"}, Data: map[string]string{"ed.pub": string(oursEd.PEM)}})
	fingerprint := func(k testground.SigningKey) string { return k.Key(t, "test").Fingerprint }
	policy := func(mode prepullv1.VerifyMode) *prepullv1.VerifyPolicy {
		return &prepullv1.VerifyPolicy{Mode: mode, Keys: []prepullv1.PublicKeySource{
			{Secret: &prepullv1.KeyReference{Name: "keys", Key: "cosign.pub"}},
			{ConfigMap: &prepullv1.KeyReference{Name: "more-keys", Key: "ed.pub"}},
		}}
	}
	newList := func(name string, mode prepullv1.VerifyMode, images ...string) *prepullv1.PrePullList {
		l := list(ns, name, images...)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Verify = policy(mode)
		e.mustCreate(t, l)
		return l
	}
	agents := func() {
		for _, n := range nodes {
			e.agent(t, n, nil)
		}
	}
	imageStatus := func(l *prepullv1.PrePullList, image string) prepullv1.ImageResolution {
		for _, img := range e.getList(t, l).Status.Images {
			if img.Image == image {
				return img
			}
		}
		return prepullv1.ImageResolution{}
	}
	onNodes := func(digestRef string) int {
		n := 0
		for _, node := range nodes {
			if en := e.entry(node, digestRef); en != nil && len(activeOwners(en)) > 0 {
				n++
			}
		}
		return n
	}

	signed := e.public.MustPushSigned(t, "sig/app:v1", 1024, ours, false)
	referred := e.public.MustPushSigned(t, "sig/referred:v1", 1024, oursEd, true)
	unsigned := e.public.MustPushRandom(t, "sig/unsigned:v1", 1024, 1)
	strange := e.public.MustPushSigned(t, "sig/strange:v1", 1024, stranger, false)
	// A signature of signed, by our key, put where copied's would be.
	copied := e.public.MustPushRandom(t, "sig/copied:v1", 1024, 1)
	signedDigest, err := name.NewDigest(signed.Digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(payload.Cosign{Image: signedDigest})
	if err != nil {
		t.Fatal(err)
	}
	e.public.MustPushSignature(t, copied.Digest, digestOf(copied.Digest), p, ours, false)

	t.Run("Enforce: only verified digests reach the nodes; the others say why, naming the keys", func(t *testing.T) {
		l := newList("enforce", prepullv1.VerifyEnforce, signed.Tag, referred.Tag, unsigned.Tag, strange.Tag, copied.Tag)
		eventually(t, "the signed images Present on every node", func() error {
			agents()
			got := e.getList(t, l)
			if len(got.Status.Images) != 5 {
				return fmt.Errorf("images %+v", got.Status.Images)
			}
			for _, img := range []testground.Pushed{signed, referred} {
				if n := onNodes(img.Digest); n != len(nodes) {
					return fmt.Errorf("%s on %d nodes", img.Digest, n)
				}
			}
			if c := condition(got, prepullv1.ConditionVerified); c == nil || c.Status != metav1.ConditionFalse {
				return fmt.Errorf("Verified %+v", c)
			}
			return nil
		})
		for _, tt := range []struct {
			image  testground.Pushed
			key    string
			reason string
			says   string
		}{
			{image: signed, key: fingerprint(ours)},
			{image: referred, key: fingerprint(oursEd)},
			{image: unsigned, reason: prepullv1.ReasonSignatureMissing, says: "no signature"},
			{image: strange, reason: prepullv1.ReasonSignatureInvalid, says: "none of the keys"},
			{image: copied, reason: prepullv1.ReasonSignatureInvalid, says: "names another digest"},
		} {
			st := imageStatus(l, tt.image.Tag)
			s := st.Signature
			switch {
			case s == nil:
				t.Errorf("%s: no signature status", tt.image.Tag)
			case tt.key != "" && (!s.Verified || s.Key != tt.key || s.Digest != digestOf(tt.image.Digest) || st.Digest != s.Digest):
				t.Errorf("%s: %+v, digest %s: want verified by %s", tt.image.Tag, s, st.Digest, tt.key)
			case tt.key == "" && (s.Verified || s.Reason != tt.reason || !strings.Contains(s.Message, tt.says) || st.Digest != ""):
				t.Errorf("%s: %+v, digest %q: want not verified, %s, %q, no digest", tt.image.Tag, s, st.Digest, tt.reason, tt.says)
			case tt.key == "" && !strings.Contains(s.Message, fingerprint(ours)):
				t.Errorf("%s: message %q: want the keys tried named", tt.image.Tag, s.Message)
			}
			if tt.key == "" {
				if n := onNodes(tt.image.Digest); n != 0 {
					t.Errorf("%s, not verified, handed to %d nodes", tt.image.Tag, n)
				}
			}
		}
		got := e.getList(t, l)
		if c := condition(got, prepullv1.ConditionDegraded); c == nil || c.Status != metav1.ConditionTrue || c.Reason != prepullv1.ReasonSignatureMissing || !strings.Contains(c.Message, unsigned.Tag) {
			t.Errorf("Degraded %+v: want SignatureMissing naming %s", c, unsigned.Tag)
		}
		if c := condition(got, prepullv1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("Ready %+v: want False, three images have no verified digest", c)
		}
		if evs := e.events(t, ns, prepullv1.ReasonSignatureInvalid); len(evs) == 0 {
			t.Errorf("no SignatureInvalid event")
		}
	})

	t.Run("Audit: every digest rolls out, status and events say which did not verify", func(t *testing.T) {
		l := newList("audit", prepullv1.VerifyAudit, signed.Tag, unsigned.Tag)
		eventually(t, "both images Present on every node", func() error {
			agents()
			if n := onNodes(unsigned.Digest); n != len(nodes) {
				return fmt.Errorf("the unsigned image on %d nodes", n)
			}
			if got := e.getList(t, l); got.Status.ReadyNodes != "3/3" {
				return fmt.Errorf("ready %s", got.Status.ReadyNodes)
			}
			return nil
		})
		st := imageStatus(l, unsigned.Tag)
		if s := st.Signature; s == nil || s.Verified || s.Reason != prepullv1.ReasonSignatureMissing || st.Digest != digestOf(unsigned.Digest) {
			t.Errorf("unsigned under Audit: %+v, digest %s: want rolled out and reported missing", s, st.Digest)
		}
		got := e.getList(t, l)
		if c := condition(got, prepullv1.ConditionVerified); c == nil || c.Status != metav1.ConditionFalse || c.Reason != prepullv1.ReasonSignatureMissing {
			t.Errorf("Verified %+v: want False, SignatureMissing", c)
		}
		if c := condition(got, prepullv1.ConditionDegraded); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("Degraded %+v: an audit is not a degradation", c)
		}
		if evs := e.events(t, ns, prepullv1.ReasonSignatureMissing); len(evs) < 2 {
			t.Errorf("SignatureMissing events %d: want one from each list", len(evs))
		}
	})

	t.Run("each digest's signatures are read once for the cluster", func(t *testing.T) {
		// Two lists and three nodes, many reconciles: one read of each.
		for _, img := range []testground.Pushed{signed, referred, copied} {
			if n := e.signatures.count(img.Digest); n != 1 {
				t.Errorf("signatures of %s read %d times, want 1", img.Digest, n)
			}
		}
	})

	t.Run("a tag moved to an unsigned digest does not roll out; the verified one stays", func(t *testing.T) {
		v1 := e.public.MustPushSigned(t, "sig/moving:v1", 1024, ours, false)
		l := newList("moving", prepullv1.VerifyEnforce, v1.Tag)
		eventually(t, "Ready at the signed digest", func() error {
			agents()
			got := e.getList(t, l)
			if got.Status.ReadyNodes != "3/3" || onNodes(v1.Digest) != 3 {
				return fmt.Errorf("ready %s", got.Status.ReadyNodes)
			}
			return nil
		})
		v2 := e.public.MustPushRandom(t, "sig/moving:v1", 1024, 1)
		e.clock.Step(61 * time.Minute)
		touch(t, e, l)
		eventually(t, "the unsigned digest seen and refused", func() error {
			agents()
			st := imageStatus(l, v1.Tag)
			if s := st.Signature; s == nil || s.Digest != digestOf(v2.Digest) || s.Verified {
				return fmt.Errorf("signature %+v", s)
			}
			if st.Digest != digestOf(v1.Digest) {
				return fmt.Errorf("status digest %s, want the verified %s kept", st.Digest, digestOf(v1.Digest))
			}
			return nil
		})
		agents()
		if n := onNodes(v2.Digest); n != 0 {
			t.Errorf("the unsigned digest was handed to %d nodes", n)
		}
		for _, node := range nodes {
			en := e.entry(node, v1.Digest)
			if en == nil || len(activeOwners(en)) == 0 || !strings.Contains(strings.Join(tagsOf(en), ","), v1.Tag) {
				t.Errorf("node %s: the verified digest's entry %+v, want it kept with its tag", node, en)
			}
		}
		got := e.getList(t, l)
		if c := condition(got, prepullv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("Ready %+v: the nodes hold the verified digest", c)
		}
		if c := condition(got, prepullv1.ConditionDegraded); c == nil || c.Reason != prepullv1.ReasonSignatureMissing || !strings.Contains(c.Message, digestOf(v2.Digest)) {
			t.Errorf("Degraded %+v: want SignatureMissing naming the new digest", c)
		}
		if evs := e.events(t, ns, "TagMoved"); len(evs) != 0 {
			t.Errorf("TagMoved events %+v: the tag did not move for the nodes", evs)
		}
	})

	t.Run("a missing key says which", func(t *testing.T) {
		l := list(ns, "nokey", signed.Tag)
		l.Spec.NodeSelector = selector(pool)
		l.Spec.Verify = &prepullv1.VerifyPolicy{Keys: []prepullv1.PublicKeySource{{Secret: &prepullv1.KeyReference{Name: "absent", Key: "cosign.pub"}}}}
		e.mustCreate(t, l)
		eventually(t, "KeyUnavailable", func() error {
			got := e.getList(t, l)
			c := condition(got, prepullv1.ConditionVerified)
			if c == nil || c.Reason != prepullv1.ReasonKeyUnavailable || !strings.Contains(c.Message, "secret "+ns+"/absent[cosign.pub]") {
				return fmt.Errorf("Verified %+v", c)
			}
			return nil
		})
	})
}
