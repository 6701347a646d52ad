package prepulllist

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
	"prepull.io/prepull/redact"
	"prepull.io/prepull/verify"
)

// SignatureReader reads an image's signatures from its registry.
type SignatureReader interface {
	Signatures(ctx context.Context, digestRef string, auth authn.Authenticator) ([]verify.Signature, error)
}

var _ SignatureReader = (*verify.Registry)(nil)

// signatureBook holds what checking each digest's signatures against each
// set of keys found, so that a digest is checked once for the cluster,
// whichever lists name it and however many nodes they select. A digest that
// verified stays verified; one that did not is checked again after
// resolutionRetry, in case it was signed since. A check no reconcile asked
// for in signatureKeep is dropped: its digest is no list's any more, or is
// checked once more.
type signatureBook struct {
	mu      sync.Mutex
	checked map[string]*checkedDigest
	swept   time.Time
	flight  singleflight.Group
}

// checkedDigest is one check: its result, when it was made and when a
// reconcile last asked for it.
type checkedDigest struct {
	res      verify.Result
	at, used time.Time
}

// signatureKeep is how long a check no reconcile asks for is kept.
const signatureKeep = time.Hour

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get

// verifyKeys reads the public keys l's spec.verify names, from its
// namespace, uncached: keys are few, and read only by lists that verify.
func (r *Reconciler) verifyKeys(ctx context.Context, l *prepullv1.PrePullList) (verify.Keys, error) {
	var keys verify.Keys
	var errs []error
	for _, src := range l.Spec.Verify.Keys {
		name := src.String(l.Namespace)
		var pem []byte
		var found bool
		switch {
		case src.Secret != nil:
			s := &corev1.Secret{}
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: src.Secret.Name}, s); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			pem, found = s.Data[src.Secret.Key]
		case src.ConfigMap != nil:
			cm := &corev1.ConfigMap{}
			if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: src.ConfigMap.Name}, cm); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			var s string
			s, found = cm.Data[src.ConfigMap.Key]
			pem = []byte(s)
		}
		if !found {
			errs = append(errs, fmt.Errorf("%s: no such key", name))
			continue
		}
		k, err := verify.ParseKey(pem, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys = append(keys, k)
	}
	return keys, errors.Join(errs...)
}

// checkSignatures checks, under l's spec.verify, the signature of every
// target resolved to a digest, and records what it found in the image's
// status. Under Enforce, a target whose digest did not verify is given the
// last digest that did (from the list's previous status) or none, so no node
// is handed a digest that did not verify.
//
// It returns the keys as read, for the agents, which verify on the node the
// images that come from an archive (whose targets are resolved there).
func (r *Reconciler) checkSignatures(ctx context.Context, l *prepullv1.PrePullList, prev []prepullv1.ImageResolution, targets []target, images []prepullv1.ImageResolution, creds []pullsecret.Credential) []prepullv1.VerifyKeyStatus {
	if l.Spec.Verify == nil {
		return nil
	}
	keys, keyErr := r.verifyKeys(ctx, l)
	var published []prepullv1.VerifyKeyStatus
	for _, k := range keys {
		published = append(published, prepullv1.VerifyKeyStatus{Source: k.Source, Fingerprint: k.Fingerprint, PEM: k.PEM})
	}
	enforce := l.Spec.Verify.Mode != prepullv1.VerifyAudit
	for i := range targets {
		t := &targets[i]
		res := imageNamed(images, t.image)
		if t.digest == "" || res == nil || t.probe {
			continue
		}
		var got verify.Result
		if keyErr != nil {
			got = verify.Result{Reason: prepullv1.ReasonKeyUnavailable, Message: keyErr.Error()}
		} else {
			got = r.signatures.check(ctx, r, digestRef(t.Repo, t.digest), t.digest, keys, creds)
		}
		res.Signature = &prepullv1.SignatureStatus{Verified: got.Verified, Digest: t.digest, Key: got.Key, Reason: got.Reason, Message: redact.Text(got.Message)}
		if got.Verified || !enforce {
			continue
		}
		t.digest = lastVerified(resolutionOf(prev, t.image))
		res.Digest = t.digest
	}
	return published
}

// check is what checking digestRef's signatures against keys found: known
// already, or asked of the registry once however many reconciles ask at
// once.
func (b *signatureBook) check(ctx context.Context, r *Reconciler, digestRef, digest string, keys verify.Keys, creds []pullsecret.Credential) verify.Result {
	key := digestRef + " " + keys.ID()
	now := r.Clock.Now()
	if res, ok := b.known(key, now); ok {
		return res
	}
	v, _, _ := b.flight.Do(key, func() (any, error) {
		var res verify.Result
		if r.Signatures == nil {
			return verify.Result{Reason: verify.ReasonUnavailable, Message: "this controller reads no signatures"}, nil
		}
		sigs, err := r.Signatures.Signatures(ctx, digestRef, authFor(creds, digestRef))
		if err != nil {
			res = verify.Result{Reason: verify.ReasonUnavailable, Message: "the signatures could not be read: " + registryMessage(err)}
		} else {
			res = verify.Check(sigs, digest, keys)
		}
		verifications.WithLabelValues(verdict(res)).Inc()
		b.mu.Lock()
		if b.checked == nil {
			b.checked = map[string]*checkedDigest{}
		}
		b.checked[key] = &checkedDigest{res: res, at: now, used: now}
		b.mu.Unlock()
		return res, nil
	})
	return v.(verify.Result)
}

// known is the result of key's check when it stands at now: it verified,
// or it was made within resolutionRetry. Checks not asked for in
// signatureKeep are dropped, once every signatureKeep.
func (b *signatureBook) known(key string, now time.Time) (verify.Result, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.swept) >= signatureKeep {
		for k, c := range b.checked {
			if now.Sub(c.used) >= signatureKeep {
				delete(b.checked, k)
			}
		}
		b.swept = now
	}
	c, ok := b.checked[key]
	if !ok {
		return verify.Result{}, false
	}
	c.used = now
	return c.res, c.res.Verified || now.Before(c.at.Add(resolutionRetry))
}

func verdict(res verify.Result) string {
	if res.Verified {
		return "verified"
	}
	return res.Reason
}

// imageNamed is the status entry of image in images, or nil.
func imageNamed(images []prepullv1.ImageResolution, image string) *prepullv1.ImageResolution {
	for i := range images {
		if images[i].Image == image {
			return &images[i]
		}
	}
	return nil
}
