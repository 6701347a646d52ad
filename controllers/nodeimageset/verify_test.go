package nodeimageset_test

import (
	"fmt"
	"strings"
	"testing"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// A tag resolved on the node for a list with spec.verify, on a real
// containerd and a real registry: the node reads the tag's digest and its
// signatures through containerd's registry configuration, and pulls the
// digest only once it verified.
func TestAgentVerifiesTheTagsItResolves(t *testing.T) {
	e := setup(t)
	ours := testground.NewSigningKey(t, true)
	key := ours.Key(t, "configmap vnode/keys[ed.pub]")
	signed := e.public.MustPushSigned(t, "vnode/signed:v1", 1024, ours, false)
	referred := e.public.MustPushSigned(t, "vnode/referred:v1", 1024, ours, true)
	unsigned := e.public.MustPushRandom(t, "vnode/unsigned:v1", 1024, 1)
	audited := e.public.MustPushRandom(t, "vnode/audited:v1", 1024, 1)
	list := func(owner string, mode prepullv1.VerifyMode) {
		e.setList(t, owner, func(s *prepullv1.PrePullListSpec) {
			s.Resolution = prepullv1.ResolveOnNode
			s.Verify = &prepullv1.VerifyPolicy{Mode: mode, Keys: []prepullv1.PublicKeySource{{ConfigMap: &prepullv1.KeyReference{Name: "keys", Key: "ed.pub"}}}}
		})
		e.publishKeys(t, owner, key)
	}
	list("vnode/enforced", prepullv1.VerifyEnforce)
	list("vnode/audited", prepullv1.VerifyAudit)
	e.agent(t, "vnode", nil)
	e.setSpec(t, "vnode",
		entry(signed.Tag, owner("vnode/enforced", signed.Tag)),
		entry(referred.Tag, owner("vnode/enforced", referred.Tag)),
		entry(unsigned.Tag, owner("vnode/enforced", unsigned.Tag)),
		entry(audited.Tag, owner("vnode/audited", audited.Tag)))

	for _, img := range []testground.Pushed{signed, referred} {
		e.phase(t, "vnode", img.Tag, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if s := st.Signature; s == nil || !s.Verified || s.Key != key.Fingerprint || st.Digest != digestOf(img.Digest) || !st.Pinned {
				return fmt.Errorf("digest %s, pinned %v, signature %+v", st.Digest, st.Pinned, st.Signature)
			}
			return nil
		})
		if id := e.runtimeID(t, img.Tag); id != img.ID {
			t.Errorf("%s names %q, want %s", img.Tag, id, img.ID)
		}
	}
	st := e.phase(t, "vnode", unsigned.Tag, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
		if st.Reason != prepullv1.ReasonSignatureMissing {
			return fmt.Errorf("reason %q: %s", st.Reason, st.LastError)
		}
		return nil
	})
	if !strings.Contains(st.LastError, key.Fingerprint) {
		t.Errorf("message %q: want the key tried", st.LastError)
	}
	for _, ref := range []string{unsigned.Tag, unsigned.Digest} {
		if id := e.runtimeID(t, ref); id != "" {
			t.Errorf("%s, which did not verify, was pulled (%s)", ref, id)
		}
	}
	e.phase(t, "vnode", audited.Tag, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if s := st.Signature; s == nil || s.Verified || s.Reason != prepullv1.ReasonSignatureMissing || st.Digest != digestOf(audited.Digest) {
			return fmt.Errorf("digest %s, signature %+v", st.Digest, st.Signature)
		}
		return nil
	})
}
