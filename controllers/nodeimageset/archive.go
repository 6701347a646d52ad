package nodeimageset

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/redact"
	"prepull.io/prepull/verify"
)

// noteArchives records, by archive, the spec images that come from it, and
// how each is verified, so that one import of an archive names every image
// the node wants of it that is verified alike.
func (r *Reconciler) noteArchives(entries []*entry) {
	wants := map[string][]archiveWant{}
	claims := map[string][]string{}
	for _, e := range entries {
		if e.Archive != nil && len(e.ActiveOwners()) > 0 {
			wants[e.Archive.SHA256] = append(wants[e.Archive.SHA256], archiveWant{image: e.Image, verification: verificationKey(e)})
			for _, ref := range e.refs() {
				claims[ref] = append(claims[ref], listsOf(e)...)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.archiveWants, r.archiveClaims = wants, claims
	for sha := range r.loaded {
		if _, ok := wants[sha]; !ok {
			delete(r.loaded, sha)
		}
	}
}

// errTagHeld means an archive's image would move a tag that the node
// holds for others: TagConflict.
var errTagHeld = errors.New("an archive does not move a tag it did not place")

// claimTag answers whether an archive's image may take tag, which names
// another image on the node, from it: only when the tag carries pins and
// every one is of a list in claimants (lists naming the tag here, which
// placed it). A tag the kubelet or another tool pulled carries none of
// prepull's pins, and one placed for a list of another namespace carries
// that list's: an archive is the only authority on the bytes it brings,
// so it never moves what pods of others may run.
func (r *Reconciler) claimTag(ctx context.Context, tag string, claimants []string) error {
	owners, err := r.Store.Owners(ctx, tag)
	switch {
	case errors.Is(err, cri.ErrNotFound):
		return nil
	case err != nil:
		return err
	case len(owners) > 0 && !slices.ContainsFunc(owners, func(o string) bool { return !slices.Contains(claimants, o) }):
		return nil
	}
	held := "no list's pins: the kubelet or another tool placed it"
	if len(owners) > 0 {
		held = "pins of " + strings.Join(owners, ", ")
	}
	return fmt.Errorf("%w: %s names another image on the node (%s); remove that image from the node, or name another tag", errTagHeld, tag, held)
}

// archiveClaim is bundle.FetchPolicy.Claim: an import makes ref name the
// archive's digest unless ref names another image that claimTag keeps.
func (r *Reconciler) archiveClaim(ctx context.Context, ref, digest string) error {
	img, err := r.Images.ImageStatus(ctx, ref)
	switch {
	case errors.Is(err, cri.ErrNotFound):
		return nil
	case err != nil:
		return err
	case cri.ManifestDigest(ref, img) == digest:
		return nil
	}
	r.mu.Lock()
	claimants := r.archiveClaims[ref]
	r.mu.Unlock()
	return r.claimTag(ctx, ref, claimants)
}

// listsOf are the lists owning e.
func listsOf(e *entry) []string {
	out := make([]string, 0, len(e.Owners))
	for _, o := range e.Owners {
		out = append(out, o.List)
	}
	return out
}

// archiveHere reports whether e's archive can be had on this node: a
// file in ArchiveDir that exists, or a URL.
func (r *Reconciler) archiveHere(e *entry) bool {
	if e.Archive.URL != "" {
		return true
	}
	_, err := os.Stat(e.Archive.PathIn(r.ArchiveDir))
	return err == nil
}

// archiveLock is the lock of one archive's imports.
func (r *Reconciler) archiveLock(sha string) *sync.Mutex {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.archiveLocks == nil {
		r.archiveLocks = map[string]*sync.Mutex{}
	}
	l, ok := r.archiveLocks[sha]
	if !ok {
		l = &sync.Mutex{}
		r.archiveLocks[sha] = l
	}
	return l
}

// importArchive makes e present from its archive: it fetches the archive,
// checks its SHA-256, and imports every image the node wants of it, unless
// an import of the same archive for another entry already made e.
func (r *Reconciler) importArchive(ctx context.Context, e *entry) error {
	sha := e.Archive.SHA256
	lock := r.archiveLock(sha)
	lock.Lock()
	defer lock.Unlock()

	v, err := r.verification(e)
	if err != nil {
		return err
	}
	r.mu.Lock()
	done := r.loaded[sha][e.Image]
	var wanted []string
	for _, w := range r.archiveWants[sha] {
		if w.verification == verificationKey(e) {
			wanted = append(wanted, w.image)
		}
	}
	r.mu.Unlock()
	if done {
		if _, err := r.Images.ImageStatus(ctx, e.Image); err == nil {
			return nil
		}
	}
	if !slices.Contains(wanted, e.Image) {
		wanted = append(wanted, e.Image)
	}

	src := bundle.Source{Path: e.Archive.PathIn(r.ArchiveDir), URL: e.Archive.URL, SHA256: sha}
	// One archive at a time in the temporary directory: a download and a
	// verified copy, each at most Archives.MaxBytes.
	r.archiveTurn.Lock()
	loaded, err := bundle.Import(ctx, r.Store, src, r.archivePolicy(), r.DownloadDir, wanted, v)
	r.archiveTurn.Unlock()
	if err != nil {
		return err
	}
	r.mu.Lock()
	for ref, l := range loaded {
		if st := r.images[ref]; st != nil && l.Signature != nil {
			st.signature = signatureStatus(l.Digest, l.Signature)
		}
	}
	if r.loaded == nil {
		r.loaded = map[string]map[string]bool{}
	}
	if r.loaded[sha] == nil {
		r.loaded[sha] = map[string]bool{}
	}
	for ref, l := range loaded {
		if l.Err == nil {
			r.loaded[sha][ref] = true
		}
	}
	r.mu.Unlock()
	// Entries named on the way are found present at their next look.
	r.notify()
	return loaded[e.Image].Err
}

// archivePolicy is Archives with the disk budget: an archive of n bytes
// writes at least as much into the content store and as much again
// unpacked (its layers are compressed already), asked before its download
// and before its import.
func (r *Reconciler) archivePolicy() bundle.FetchPolicy {
	p := r.Archives
	p.Claim = r.archiveClaim
	p.Admit = r.admit("the import")
	return p
}

// admit is the disk budget's admission of what (an import, a fetch from
// peers) that writes n bytes of blobs: once in the content store, at
// least as much again unpacked. Refused, it is a budgetError.
func (r *Reconciler) admit(what string) func(n int64) error {
	return func(n int64) error {
		r.mu.Lock()
		mount := r.fsMount
		r.mu.Unlock()
		if msg := r.overBudget(mount, 2*n, what); msg != "" {
			return &budgetError{msg}
		}
		return nil
	}
}

// budgetError is an archive, or a fetch from peers, the disk budget has no
// room for yet.
type budgetError struct{ msg string }

func (e *budgetError) Error() string { return e.msg }

// archiveWant is one image wanted of an archive, and how it is verified.
type archiveWant struct {
	image        string
	verification string
}

// verificationKey says how e's signatures are checked: by which keys, and
// whether only audited; "" for not at all.
func verificationKey(e *entry) string {
	if len(e.VerifyKeys) == 0 {
		return ""
	}
	return fmt.Sprintf("%v|%v", e.VerifyKeys, e.VerifyAudit)
}

// verification is how an import checks e's signatures, nil for not at all.
func (r *Reconciler) verification(e *entry) (*bundle.Verification, error) {
	if len(e.VerifyKeys) == 0 {
		return nil, nil
	}
	v := &bundle.Verification{Audit: e.VerifyAudit}
	for _, pem := range e.VerifyKeys {
		if pem == "" {
			return nil, &verify.Error{Result: verify.Result{Reason: prepullv1.ReasonKeyUnavailable, Message: "a list's spec.verify keys are not read by the controller yet (see the list's Verified condition)"}}
		}
		k, err := verify.ParseKey([]byte(pem), "a key of the lists' spec.verify")
		if err != nil {
			return nil, &verify.Error{Result: verify.Result{Reason: prepullv1.ReasonKeyUnavailable, Message: err.Error()}}
		}
		v.Keys = append(v.Keys, k)
	}
	return v, nil
}

// signatureStatus is res, for digest, as status says it.
func signatureStatus(digest string, res *verify.Result) *prepullv1.SignatureStatus {
	return &prepullv1.SignatureStatus{Verified: res.Verified, Digest: digest, Key: res.Key, Reason: res.Reason, Message: redact.Text(res.Message)}
}
