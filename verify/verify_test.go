package verify_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/sigstore/pkg/signature/payload"

	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/verify"
)

// Signatures made in the test, pushed to a real registry, read back and
// checked.
func TestSignaturesOnARegistry(t *testing.T) {
	ctx := context.Background()
	reg := testground.StartRegistry(t)
	r := &verify.Registry{Insecure: map[string]bool{reg.Host: true}}
	ours := testground.NewSigningKey(t, false)
	oursEd := testground.NewSigningKey(t, true)
	theirs := testground.NewSigningKey(t, false)
	keys := verify.Keys{mustKey(t, ours.PEM, "secret shop/keys[ecdsa.pub]"), mustKey(t, oursEd.PEM, "configmap shop/keys[ed25519.pub]")}

	signed := reg.MustPushSigned(t, "app/signed:v1", 1024, ours, false)
	edSigned := reg.MustPushSigned(t, "app/ed:v1", 1024, oursEd, false)
	referred := reg.MustPushSigned(t, "app/referred:v1", 1024, ours, true)
	unsigned := reg.MustPushRandom(t, "app/unsigned:v1", 1024, 1)
	other := reg.MustPushSigned(t, "app/other:v1", 1024, theirs, false)
	// A signature of signed, by our key, put at copied's signature tag.
	copied := reg.MustPushRandom(t, "app/signed:v2", 1024, 1)
	p, err := json.Marshal(payload.Cosign{Image: mustDigest(t, signed.Digest)})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustPushSignature(t, copied.Digest, digestOf(copied.Digest), p, ours, false)

	tests := []struct {
		name     string
		image    string
		verified bool
		key      string
		reason   string
		says     []string
	}{
		{name: "signed with an ECDSA P-256 key", image: signed.Digest, verified: true, key: keys[0].Fingerprint, says: []string{"secret shop/keys[ecdsa.pub]"}},
		{name: "signed with an Ed25519 key", image: edSigned.Digest, verified: true, key: keys[1].Fingerprint},
		{name: "signed, found through the referrers API", image: referred.Digest, verified: true, key: keys[0].Fingerprint},
		{name: "not signed", image: unsigned.Digest, reason: verify.ReasonMissing, says: []string{"no signature", keys[0].Fingerprint, keys[1].Fingerprint}},
		{name: "signed by another key", image: other.Digest, reason: verify.ReasonInvalid, says: []string{"none of the keys"}},
		{name: "a signature copied from another digest", image: copied.Digest, reason: verify.ReasonInvalid, says: []string{"names another digest", digestOf(signed.Digest)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sigs, err := r.Signatures(ctx, tt.image, authn.Anonymous)
			if err != nil {
				t.Fatalf("Signatures: %v", err)
			}
			got := verify.Check(sigs, digestOf(tt.image), keys)
			if got.Verified != tt.verified || got.Key != tt.key || got.Reason != tt.reason {
				t.Errorf("Check = %+v, want verified %v by %q, reason %q", got, tt.verified, tt.key, tt.reason)
			}
			for _, s := range tt.says {
				if !strings.Contains(got.Message, s) {
					t.Errorf("message %q: want %q", got.Message, s)
				}
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	k := testground.NewSigningKey(t, false)
	a := k.Key(t, "a")
	b, err := verify.ParseKey(append([]byte("\n"), k.PEM...), "b")
	if err != nil || b.Fingerprint != a.Fingerprint || !strings.HasPrefix(a.Fingerprint, "sha256:") || len(a.Fingerprint) != 71 {
		t.Errorf("fingerprints %q and %q (%v): want one sha256 fingerprint", a.Fingerprint, b.Fingerprint, err)
	}
	if (verify.Keys{a}).ID() != (verify.Keys{b, a}).ID() {
		t.Errorf("one key twice names another set than the key once")
	}
	for _, bad := range []string{"", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} {
		if _, err := verify.ParseKey([]byte(bad), "secret shop/keys[k]"); err == nil || !strings.Contains(err.Error(), "secret shop/keys[k]") {
			t.Errorf("ParseKey(%q) = %v: want an error naming the key's source", bad, err)
		}
	}
}

func mustKey(t *testing.T, pem []byte, source string) verify.Key {
	t.Helper()
	k, err := verify.ParseKey(pem, source)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustDigest(t *testing.T, ref string) name.Digest {
	t.Helper()
	d, err := name.NewDigest(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func digestOf(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}
