// Package verify checks an image's signatures before prepull counts the image
// as present: cosign's format — a "simple signing" payload that names the
// image's manifest digest, signed with a key whose public half the list
// gives — found at the image's signature tag (sha256-<hex>.sig) or through
// the registry's referrers API. The cryptography and the payload's format
// are sigstore's; this package finds the signatures, and decides.
package verify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// Reasons a digest does not verify.
const (
	// ReasonMissing: no signature for the digest was found.
	ReasonMissing = "SignatureMissing"
	// ReasonInvalid: signatures were found, and none verifies with any key
	// for this digest.
	ReasonInvalid = "SignatureInvalid"
	// ReasonUnavailable: the signatures could not be read (the registry did
	// not answer, refused the credentials); nothing is known.
	ReasonUnavailable = "SignatureUnavailable"
)

// Key is one public key signatures may be made with.
type Key struct {
	// Fingerprint is "sha256:" and the hex SHA-256 of the key's DER (PKIX)
	// form: what status shows of the key.
	Fingerprint string
	// Source says where the key came from, e.g. "secret shop/keys[cosign.pub]".
	Source string
	// PEM is the key as it was read.
	PEM      string
	verifier signature.Verifier
}

// ParseKey reads a PEM public key: ECDSA (P-256, P-384, P-521), Ed25519 or
// RSA.
func ParseKey(pemBytes []byte, source string) (Key, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(bytes.TrimSpace(pemBytes))
	if err != nil {
		return Key{}, fmt.Errorf("%s: not a PEM public key: %w", source, err)
	}
	if err := cryptoutils.ValidatePubKey(pub); err != nil {
		return Key{}, fmt.Errorf("%s: %w", source, err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return Key{}, fmt.Errorf("%s: %w", source, err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return Key{}, fmt.Errorf("%s: %w", source, err)
	}
	sum := sha256.Sum256(der)
	return Key{Fingerprint: "sha256:" + hex.EncodeToString(sum[:]), Source: source, PEM: string(bytes.TrimSpace(pemBytes)) + "\n", verifier: v}, nil
}

// Keys is a set of keys, any one of which may verify.
type Keys []Key

// ID names the set: its fingerprints, sorted, hashed. Two lists with the
// same keys share their verifications.
func (ks Keys) ID() string {
	fps := make([]string, 0, len(ks))
	for _, k := range ks {
		fps = append(fps, k.Fingerprint)
	}
	slices.Sort(fps)
	sum := sha256.Sum256([]byte(strings.Join(slices.Compact(fps), ",")))
	return hex.EncodeToString(sum[:8])
}

// Names are the keys' sources and fingerprints, for messages.
func (ks Keys) Names() string {
	out := make([]string, 0, len(ks))
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%s (%s)", k.Source, k.Fingerprint))
	}
	return strings.Join(out, ", ")
}

// Signature is one signature found for an image: the payload signed and the
// raw signature over it.
type Signature struct {
	Payload   []byte
	Signature []byte
	// From says where it was found, e.g. the signature tag.
	From string
}

// Result is what checking one digest's signatures found.
type Result struct {
	// Verified is whether a signature for the digest verified with a key.
	Verified bool
	// Key is the fingerprint of the key that verified.
	Key string
	// Reason is why not verified, one of the Reason constants.
	Reason string
	// Message says what was found and tried, for status.
	Message string
}

// Err is nil when r verified, else an *Error that says why.
func (r Result) Err() error {
	if r.Verified {
		return nil
	}
	return &Error{Result: r}
}

// Error is a digest that did not verify.
type Error struct{ Result }

func (e *Error) Error() string { return e.Reason + ": " + e.Message }

// Check decides whether sigs hold a signature, by one of keys, whose payload
// names digest ("sha256:…"). A signature that verifies but names another
// digest is refused: it was copied from another image.
func Check(sigs []Signature, digest string, keys Keys) Result {
	if len(sigs) == 0 {
		return Result{Reason: ReasonMissing, Message: fmt.Sprintf("no signature of %s found; keys tried: %s", digest, keys.Names())}
	}
	var why []string
	for _, s := range sigs {
		k, err := check(s, digest, keys)
		if err == nil {
			return Result{Verified: true, Key: k.Fingerprint, Message: fmt.Sprintf("signed by %s", k.Source)}
		}
		why = append(why, fmt.Sprintf("%s: %v", s.From, err))
	}
	return Result{Reason: ReasonInvalid, Message: fmt.Sprintf("%d signatures found, none verifies for %s with %s: %s",
		len(sigs), digest, keys.Names(), strings.Join(why, "; "))}
}

// errOtherDigest means a signature verified but its payload names another
// digest.
var errOtherDigest = errors.New("the signed payload names another digest")

func check(s Signature, digest string, keys Keys) (Key, error) {
	var signedBy *Key
	for i := range keys {
		if keys[i].verifier.VerifySignature(bytes.NewReader(s.Signature), bytes.NewReader(s.Payload)) == nil {
			signedBy = &keys[i]
			break
		}
	}
	if signedBy == nil {
		return Key{}, errors.New("made with none of the keys")
	}
	var p payload.SimpleContainerImage
	if err := json.Unmarshal(s.Payload, &p); err != nil {
		return Key{}, fmt.Errorf("payload: %w", err)
	}
	if p.Critical.Type != payload.CosignSignatureType {
		return Key{}, fmt.Errorf("payload of type %q, not %q", p.Critical.Type, payload.CosignSignatureType)
	}
	if got := p.Critical.Image.DockerManifestDigest; got != digest {
		return Key{}, fmt.Errorf("%w: %s", errOtherDigest, got)
	}
	return *signedBy, nil
}
