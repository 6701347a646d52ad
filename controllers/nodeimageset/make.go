package nodeimageset

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/present"
)

// ensure brings one spec image to its wanted state, and reports whether it
// changed something that the runtime shows a moment later (pins), so that
// the next look comes soon.
func (r *Reconciler) ensure(ctx context.Context, e *entry, status *prepullv1.NodeImageSetStatus, now time.Time, dirty map[string]bool) bool {
	st := r.state(e.Image)
	if r.inPlace(e, st, now, dirty) {
		return false
	}
	if len(e.ActiveOwners()) == 0 {
		r.release(ctx, e, st, now)
		return false
	}
	img, err := r.Images.ImageStatus(ctx, e.Image)
	if absent := errors.Is(err, cri.ErrNotFound); absent || (err == nil && r.resolveDue(e, st, status, now)) {
		r.maybePull(e, st, now, absent)
		return false
	}
	if err != nil {
		r.fail(st, err, now)
		return false
	}
	return r.settle(ctx, e, st, img, now)
}

// settle makes the present image img what e asks — tags, pins — and records
// it Present, or why it is not yet. It reports whether it changed something
// that the runtime shows a moment later.
func (r *Reconciler) settle(ctx context.Context, e *entry, st *imageState, img *cri.Image, now time.Time) bool {
	want := present.Want{Image: e.Image, Tags: e.Tags, Pinners: e.Pinners}
	if e.Archive != nil {
		claimants := listsOf(e)
		want.Claim = func(ctx context.Context, tag string) error { return r.claimTag(ctx, tag, claimants) }
	}
	got, err := r.runtime(e).Make(ctx, img, want)
	tagsTotal.Add(float64(len(got.Retagged)))
	r.recallSource(ctx, e, st)
	lazy := ""
	if err == nil {
		lazy = r.lazy(ctx, e.Image)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st.digest, st.pinned, st.pinOwners = got.Digest, got.Pinned, got.Owners
	st.bytesDone, st.bytesTotal = int64(got.Size), int64(got.Size)
	st.verified, st.verifiedAt = specKey(e), now
	st.private = len(e.PullSecrets) > 0
	switch {
	case err == nil && (got.Pinned || len(e.Pinners) == 0):
		// Make saw through CRI every tag and pin it made: the runtime's
		// events of them need no second look.
		for _, ref := range e.refs() {
			delete(r.dirty, ref)
		}
	case got.Changed:
		// CRI did not show our own tags and pins yet: look again.
		st.verifiedAt = time.Time{}
	}
	switch {
	case err == nil && lazy != "":
		st.to(prepullv1.PhaseLazy, ReasonLazy, lazy, now)
	case err == nil:
		st.to(prepullv1.PhasePresent, "", "", now)
	case errors.Is(err, cri.ErrUnsupported), errors.Is(err, present.ErrTagElsewhere), errors.Is(err, errTagHeld):
		// There, but not as the lists ask: a runtime without containerd's
		// API cannot pin (retain: Pinned), a tag it pulled names other
		// bytes, an archive's tag is held for others. That does not count
		// as Present; a changed entry is tried again (a held tag at every
		// look, for the node may have let it go).
		st.failedSpec = specKey(e)
		st.to(prepullv1.PhaseFailed, reasonOf(err), "the image is on the node, but not as its lists ask: "+err.Error(), now)
	default:
		st.to(prepullv1.PhasePulling, ReasonVerifyFailed, err.Error(), now)
	}
	return got.Changed
}

// runtime is the node's runtime as present sees it for e: a tag the Store
// cannot point is pulled through CRI with e's credentials, unless e comes
// from an archive, whose registry may be out of reach.
func (r *Reconciler) runtime(e *entry) present.Runtime {
	rt := present.Runtime{Images: r.Images, Store: r.Store}
	if e.Archive == nil {
		rt.PullTag = func(ctx context.Context, tag string) error {
			auth, _, err := r.auth(ctx, e)
			if err == nil {
				ctx, cancel := context.WithTimeout(ctx, e.Timeout)
				defer cancel()
				_, err = r.Images.PullImage(ctx, tag, auth)
			}
			return err
		}
	}
	return rt
}

// inPlace reports whether e needs no look until the next resync: a pull of
// it is under way, the runtime cannot make it what it asks, or it was found
// fully in place recently, its spec is the same, and no runtime event
// touched any of its references since.
func (r *Reconciler) inPlace(e *entry, st *imageState, now time.Time, dirty map[string]bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.pulling || st.cannotMake(specKey(e)) {
		return true
	}
	if st.phase != prepullv1.PhasePresent || st.verified != specKey(e) || st.verifiedAt.IsZero() || now.Sub(st.verifiedAt) >= r.ResyncInterval {
		return false
	}
	return !slices.ContainsFunc(e.refs(), func(ref string) bool { return dirty[ref] })
}

// resolveDue reports whether a tag resolved on this node (an entry named by
// tag alone) must be pulled again: it was never pulled, or the controller
// asks for a pull after the last one. After a restart, the last pull's time
// comes from the status the agent wrote before.
func (r *Reconciler) resolveDue(e *entry, st *imageState, status *prepullv1.NodeImageSetStatus, now time.Time) bool {
	if strings.Contains(e.Image, "@") {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.pulledAt.IsZero() {
		for _, s := range status.Images {
			if s.Image == e.Image && s.PulledAt != nil {
				st.pulledAt, st.importedFrom = s.PulledAt.Time, s.ImportedFrom
			}
		}
	}
	if st.pulledAt.IsZero() {
		return true
	}
	if e.Archive != nil {
		// An archive's tags move only when the list names another archive.
		return st.importedFrom != e.Archive.SHA256
	}
	return e.ResolveAfter != nil && !now.Before(e.ResolveAfter.Time) && st.pulledAt.Before(e.ResolveAfter.Time)
}

// release takes the releasing owners' pins off the image and its tags, and
// removes the image when an owner says onDelete: Remove and it is
// prepull's to remove (present.Runtime.Release); otherwise the status says
// why it stays.
func (r *Reconciler) release(ctx context.Context, e *entry, st *imageState, now time.Time) {
	kept, err := present.Runtime{Images: r.Images, Store: r.Store}.Release(ctx, entryRefs(e.NodeImage), e.Remove)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && !errors.Is(err, cri.ErrUnsupported) {
		st.explain(reasonOf(err), err.Error(), now)
		return
	}
	st.pinned, st.pinOwners = false, nil
	if kept != "" {
		st.to(prepullv1.PhaseReleased, ReasonKept, "unpinned, not removed (onDelete: Remove): "+kept, now)
		return
	}
	st.to(prepullv1.PhaseReleased, "", "", now)
}

// fail records why the runtime could not say whether the image is there.
func (r *Reconciler) fail(st *imageState, err error, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.to(cmp.Or(st.phase, prepullv1.PhasePending), reasonOf(err), err.Error(), now)
}

// conflict records that e lost a tag to another entry: Failed, and nothing
// done on the runtime for it.
func (r *Reconciler) conflict(st *imageState, msg string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.pulling {
		return
	}
	st.verified, st.failedSpec, st.lostTag = "", "", true
	st.to(prepullv1.PhaseFailed, ReasonTagConflict, msg, now)
}

// clearConflict makes an entry whose conflict ended be looked at afresh.
func (r *Reconciler) clearConflict(st *imageState, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.lostTag {
		st.lostTag = false
		st.to(prepullv1.PhasePending, "", "", now)
	}
}

// collectStrayPins takes off, once per resync, every pin whose owner does
// not own that reference in the spec: pins left by a list that went while
// this agent was away, whose entries the controller has since dropped.
func (r *Reconciler) collectStrayPins(ctx context.Context, set *prepullv1.NodeImageSet, now time.Time) {
	lister, ok := r.Store.(cri.PinLister)
	if r.KeepStrayPins || !ok || now.Sub(r.collected) < r.ResyncInterval {
		return
	}
	r.collected = now
	refs, err := lister.PinnedRefs(ctx)
	if err != nil {
		return
	}
	// Every owner of an entry may keep its pins on the entry's references;
	// releasing owners' pins are the release's to take off.
	type pin struct{ ref, owner string }
	wanted := map[pin]bool{}
	for i := range set.Spec.Images {
		e := &set.Spec.Images[i]
		for _, ref := range entryRefs(e) {
			for _, o := range e.Owners {
				wanted[pin{ref, o.List}] = true
			}
		}
	}
	log := ctrl.LoggerFrom(ctx)
	for ref, owners := range refs {
		for _, o := range owners {
			if wanted[pin{ref, o}] {
				continue
			}
			if err := r.Store.Unpin(ctx, ref, o); err != nil {
				log.Error(err, "Take off a stray pin", "image", ref, "owner", o)
				continue
			}
			log.Info("Took off a stray pin", "image", ref, "owner", o)
		}
	}
}

// entryRefs are the references an entry may carry pins on: its image and
// every owner's tags, releasing owners' included.
func entryRefs(e *prepullv1.NodeImage) []string {
	refs := []string{e.Image}
	for _, o := range e.Owners {
		for _, t := range o.Tags {
			if !slices.Contains(refs, t) {
				refs = append(refs, t)
			}
		}
	}
	return refs
}
