package testground

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"

	"prepull.io/prepull/verify"
)

// SigningKey is a key pair made for a test: the signer, and the public
// key's PEM that a list names.
type SigningKey struct {
	Signer signature.Signer
	PEM    []byte
}

// NewSigningKey makes an ECDSA P-256 key pair, or an Ed25519 one.
func NewSigningKey(t testing.TB, ed bool) SigningKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	if ed {
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	} else {
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := signature.LoadSigner(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return SigningKey{Signer: s, PEM: pem}
}

// MustPushSigned pushes a new random image of size bytes in one layer to
// repoTag and its signature made with key (see MustSign).
func (r *Registry) MustPushSigned(t testing.TB, repoTag string, size int64, key SigningKey, referrer bool) Pushed {
	t.Helper()
	p := r.MustPushRandom(t, repoTag, size, 1)
	r.MustSign(t, p.Digest, key, referrer)
	return p
}

// Key is k's public key as a list names it, read from source.
func (k SigningKey) Key(t testing.TB, source string) verify.Key {
	t.Helper()
	key, err := verify.ParseKey(k.PEM, source)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// MustSign pushes a signature of the image digestRef names, made with key,
// as cosign stores one: a payload naming the digest, signed, in a manifest
// at the image's signature tag. With referrer, the manifest is pushed as one
// of the image's referrers instead (it names the image as its subject).
func (r *Registry) MustSign(t testing.TB, digestRef string, key SigningKey, referrer bool) {
	t.Helper()
	ref, err := name.NewDigest(digestRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(payload.Cosign{Image: ref})
	if err != nil {
		t.Fatal(err)
	}
	r.MustPushSignature(t, digestRef, ref.DigestStr(), p, key, referrer)
}

// MustPushSignature pushes a signature made with key over payload p to the
// signature tag of digest in digestRef's repository, or as a referrer of
// digestRef: the caller chooses what the payload names.
func (r *Registry) MustPushSignature(t testing.TB, digestRef, digest string, p []byte, key SigningKey, referrer bool) {
	t.Helper()
	ref, err := name.NewDigest(digestRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := key.Signer.SignMessage(bytes.NewReader(p))
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(p, verify.PayloadMediaType),
		Annotations: map[string]string{verify.SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if referrer {
		desc, err := remote.Head(ref, r.remoteOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		art, ok := mutate.Subject(mutate.ConfigMediaType(img, types.MediaType(verify.ArtifactType)), *desc).(v1.Image)
		if !ok {
			t.Fatal("a subject on an image is not an image")
		}
		at, err := art.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref.Context().Digest(at.String()), art, r.remoteOptions()...); err != nil {
			t.Fatalf("push a referrer of %s: %v", digestRef, err)
		}
		return
	}
	tag := ref.Context().Tag(verify.SignatureTag(digest))
	if err := remote.Write(tag, img, r.remoteOptions()...); err != nil {
		t.Fatalf("push %s: %v", tag, err)
	}
}
