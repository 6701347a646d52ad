// Package nodeimageset is the node agent's reconciler: it makes the node's
// container runtime hold what its NodeImageSet's spec asks — each image at its
// digest, every tag pods use naming exactly that digest, pinned for its
// owners — and reports per image in the NodeImageSet's status, the one field
// the agent writes.
//
// Pulls go through CRI, so that the runtime's mirrors and credentials apply;
// tags and pins go through cri.Store (containerd's API), and a runtime
// without one gets "unsupported by the runtime" in status instead of silence.
// Pulls run in the background, a bounded number at a time, with a timeout
// each and backoff with jitter between attempts; Reconcile never waits for
// one. A periodic resync and containerd's image events restore what someone
// else changed: an image removed, a pin taken off, a tag moved.
package nodeimageset

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
)

// Defaults of the Reconciler's tunables.
const (
	DefaultMaxConcurrentPulls = 3
	DefaultStatusInterval     = 2 * time.Second
	DefaultResyncInterval     = 30 * time.Second
	DefaultBackoffBase        = 5 * time.Second
	DefaultBackoffMax         = 5 * time.Minute
)

// Reconciler reconciles the node's runtime to its NodeImageSet.
type Reconciler struct {
	client.Client
	// APIReader reads pull secrets one by one in Namespace; they are never
	// cached.
	APIReader client.Reader
	// NodeName is the node this agent serves; its NodeImageSet has its name.
	NodeName string
	// Namespace holds the pull secrets the controller mirrored.
	Namespace string
	Images    cri.ImageService
	Store     cri.Store
	// Runtime names the runtime, for status.
	Runtime string
	Clock   clock.Clock

	// MaxConcurrentPulls bounds the pulls under way at once.
	MaxConcurrentPulls int
	// StatusInterval is the least time between two status writes.
	StatusInterval time.Duration
	// ResyncInterval is how often everything is verified again.
	ResyncInterval time.Duration
	// BackoffBase and BackoffMax shape the wait between pull attempts.
	BackoffBase, BackoffMax time.Duration
	// DiskBudget is the fraction of the image filesystem (0 < f ≤ 1) past
	// which no pull starts; 0 means no budget.
	DiskBudget float64
	// FsUsage reports a filesystem's used and total bytes; nil means statfs.
	FsUsage func(path string) (used, total uint64, err error)
	// KeepStrayPins leaves alone pins whose owner no spec entry names. Only
	// for several agents sharing one runtime, as in tests: an agent owns its
	// node's runtime.
	KeepStrayPins bool
	// ArchiveDir is the directory that archive paths are relative to.
	ArchiveDir string
	// DownloadDir holds archives downloaded from a URL while they are
	// imported; empty means the system's temporary directory.
	DownloadDir string
	// HTTPClient downloads archives; nil means http.DefaultClient.
	HTTPClient *http.Client

	mu        sync.Mutex
	collected time.Time
	images    map[string]*imageState
	dirty     map[string]bool
	measured  time.Time
	sem       chan struct{}
	wake      chan event.GenericEvent
	baseCtx   context.Context
	lastWrite time.Time
	fs        *prepullv1.ImageFilesystem
	fsMount   string
	// archiveWants are, by archive SHA-256, the images of the spec that
	// come from it; archiveLocks serialize the imports of one archive; and
	// loaded records which references an import of an archive made.
	archiveWants map[string][]string
	archiveLocks map[string]*sync.Mutex
	loaded       map[string]map[string]bool
}

// imageState is what the agent knows of one spec image between reconciles.
type imageState struct {
	phase             prepullv1.ImagePhase
	digest            string
	pinned            bool
	pinOwners         []string
	attempts          int32
	reason, lastError string
	since             metav1.Time
	pulling           bool
	nextTry           time.Time
	bytesDone         int64
	bytesTotal        int64
	// failedSpec is the spec entry that failed for good; a changed entry
	// is tried again.
	failedSpec string
	// verified is the spec entry last found fully in place, at verifiedAt.
	verified   string
	verifiedAt time.Time
	// pulledAt is when the image was last pulled successfully, and
	// importedFrom the SHA-256 of the archive it came from, if it did.
	pulledAt     time.Time
	importedFrom string
}

func (s *imageState) setPhase(p prepullv1.ImagePhase, now time.Time) {
	if s.phase != p {
		// Second precision, as the API stores it, so that status compares
		// equal to what was written.
		s.phase, s.since = p, metav1.NewTime(now).Rfc3339Copy()
	}
}

// Reasons the agent reports.
const (
	ReasonUnauthorized = "Unauthorized"
	ReasonNotFound     = "NotFound"
	ReasonUnavailable  = "RegistryUnavailable"
	ReasonTimeout      = "Timeout"
	ReasonNoSpace      = "NoSpace"
	ReasonPullFailed   = "PullFailed"
	ReasonDiskBudget   = "DiskBudgetExceeded"
	ReasonUnsupported  = "UnsupportedByRuntime"
	ReasonVerifyFailed = "VerifyFailed"
	// Reasons of images that come from an archive.
	ReasonArchiveNotFound = "ArchiveNotFound"
	ReasonArchiveChecksum = "ArchiveChecksumMismatch"
	ReasonArchiveInvalid  = "InvalidArchive"
)

func reasonOf(err error) string {
	switch {
	case errors.Is(err, bundle.ErrChecksum):
		return ReasonArchiveChecksum
	case errors.Is(err, os.ErrNotExist):
		return ReasonArchiveNotFound
	case errors.Is(err, bundle.ErrUnreadable):
		return ReasonArchiveInvalid
	case errors.Is(err, cri.ErrUnauthorized):
		return ReasonUnauthorized
	case errors.Is(err, cri.ErrNotFound):
		return ReasonNotFound
	case errors.Is(err, cri.ErrUnavailable):
		return ReasonUnavailable
	case errors.Is(err, cri.ErrTimeout):
		return ReasonTimeout
	case errors.Is(err, cri.ErrNoSpace):
		return ReasonNoSpace
	case errors.Is(err, cri.ErrUnsupported):
		return ReasonUnsupported
	}
	return ReasonPullFailed
}

// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets,verbs=get;list;watch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists,verbs=get;list;watch
// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",namespace=prepull-system,resources=secrets,verbs=get

// Reconcile makes the runtime hold what the node's NodeImageSet asks.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if req.Name != r.NodeName {
		return ctrl.Result{}, nil
	}
	set := &prepullv1.NodeImageSet{}
	if err := r.Get(ctx, req.NamespacedName, set); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	r.measureFilesystem(ctx, now)
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = map[string]bool{}
	r.mu.Unlock()
	r.noteArchives(set)
	soon := false
	entries := r.entries(ctx, set)
	losers := tagConflicts(entries)
	for _, e := range entries {
		st := r.state(e.Image)
		if msg, ok := losers[e.Image]; ok {
			r.conflict(st, msg, now)
			continue
		}
		r.clearConflict(st, now)
		if r.ensure(ctx, e, &set.Status, now, dirty) {
			soon = true
		}
	}
	r.forgetOthers(set)
	r.collectStrayPins(ctx, set, now)

	status := r.buildStatus(set)
	requeue := r.ResyncInterval
	if r.busy() || soon {
		requeue = r.StatusInterval
	}
	if next := r.nextRetry(now); !next.IsZero() && next.Sub(now) < requeue {
		requeue = max(next.Sub(now), 100*time.Millisecond)
	}
	if !equality.Semantic.DeepEqual(set.Status, status) {
		if wait := r.StatusInterval - now.Sub(r.lastWrite); wait > 0 {
			return ctrl.Result{RequeueAfter: min(wait, requeue)}, nil
		}
		orig := set.DeepCopy()
		set.Status = status
		if err := r.Status().Patch(ctx, set, client.MergeFrom(orig)); err != nil {
			return ctrl.Result{}, fmt.Errorf("write status of node image set %s: %w", set.Name, err)
		}
		r.lastWrite = now
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// ensure brings one spec image to its wanted state, and reports whether it
// changed something that the runtime shows a moment later (pins), so that
// the next look comes soon.
func (r *Reconciler) ensure(ctx context.Context, e *entry, status *prepullv1.NodeImageSetStatus, now time.Time, dirty map[string]bool) bool {
	st := r.state(e.Image)
	if st.pulling || r.fresh(e, st, now, dirty) {
		return false
	}
	if len(e.ActiveOwners()) == 0 {
		r.release(ctx, e, st, now)
		return false
	}
	img, err := r.Images.ImageStatus(ctx, e.Image)
	if errors.Is(err, cri.ErrNotFound) || (err == nil && r.resolveDue(e, st, status, now)) {
		r.maybePull(ctx, e, st, now)
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
	changed, owners, err := r.syncTagsAndPins(ctx, e, img)
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.phase != prepullv1.PhasePresent {
		pullBytes.Observe(float64(img.Size))
	}
	st.digest = cri.ManifestDigest(e.Image, img)
	st.setPhase(prepullv1.PhasePresent, now)
	st.verified = specKey(e)
	st.verifiedAt = now
	if changed {
		// Our own tags and pins show through CRI a moment later: look again.
		st.verifiedAt = time.Time{}
	}
	st.pinned = img.Pinned
	st.pinOwners = owners
	st.reason, st.lastError, st.bytesDone, st.bytesTotal = "", "", int64(img.Size), int64(img.Size)
	if err != nil {
		st.reason, st.lastError = reasonOf(err), err.Error()
		if !errors.Is(err, cri.ErrUnsupported) {
			st.reason = ReasonVerifyFailed
			st.setPhase(prepullv1.PhasePulling, now)
		}
	}
	return changed
}

// fresh reports whether e was found fully in place recently enough that it
// needs no look until the next resync: its spec is the same, and no runtime
// event touched any of its references since.
func (r *Reconciler) fresh(e *entry, st *imageState, now time.Time, dirty map[string]bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.phase != prepullv1.PhasePresent || st.verified != specKey(e) || st.verifiedAt.IsZero() || now.Sub(st.verifiedAt) >= r.ResyncInterval {
		return false
	}
	for _, ref := range append([]string{e.Image}, e.Tags...) {
		if dirty[ref] {
			return false
		}
	}
	return true
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

// markDirty records that the runtime changed the image record name.
func (r *Reconciler) markDirty(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dirty[name] = true
}

// maybePull starts a pull unless one failed for good, its retry is not due,
// or the disk budget forbids it.
func (r *Reconciler) maybePull(ctx context.Context, e *entry, st *imageState, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.phase == prepullv1.PhaseFailed && st.failedSpec == specKey(e) {
		return
	}
	if st.phase == prepullv1.PhaseFailed || st.phase == prepullv1.PhasePresent || st.phase == prepullv1.PhaseReleased {
		// A changed spec after a failure, or an image gone from under us:
		// start over.
		st.attempts, st.failedSpec, st.nextTry = 0, "", time.Time{}
	}
	if now.Before(st.nextTry) {
		return
	}
	if msg := r.overBudget(); msg != "" {
		st.setPhase(prepullv1.PhasePending, now)
		st.reason, st.lastError = ReasonDiskBudget, msg
		st.nextTry = now.Add(r.ResyncInterval)
		return
	}
	st.pulling = true
	if st.phase != prepullv1.PhasePulling {
		st.setPhase(prepullv1.PhasePending, now)
	}
	go r.pull(e.clone(), st)
}

// pull runs one pull attempt in the background and wakes Reconcile when it
// ends.
func (r *Reconciler) pull(e *entry, st *imageState) {
	r.mu.Lock()
	ctx := r.baseCtx
	r.mu.Unlock()
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-r.sem }()
	log := ctrl.LoggerFrom(ctx).WithValues("image", e.Image)

	r.mu.Lock()
	st.attempts++
	st.setPhase(prepullv1.PhasePulling, r.Clock.Now())
	attempt := st.attempts
	r.mu.Unlock()
	r.notify()

	start := r.Clock.Now()
	auth, authErr := r.auth(ctx, e)
	var err error
	if authErr != nil {
		err = authErr
	} else {
		pctx, cancel := context.WithTimeout(ctx, e.Timeout)
		if e.Archive != nil {
			err = r.importArchive(pctx, e)
		} else {
			_, err = r.Images.PullImage(pctx, e.Image, auth)
		}
		cancel()
	}
	elapsed := r.Clock.Since(start)

	r.mu.Lock()
	now := r.Clock.Now()
	if err == nil {
		pullsTotal.WithLabelValues("success").Inc()
		pullDuration.Observe(elapsed.Seconds())
		st.nextTry, st.pulledAt, st.importedFrom = time.Time{}, metav1.NewTime(now).Rfc3339Copy().Time, ""
		if e.Archive != nil {
			st.importedFrom = e.Archive.SHA256
			log.Info("Imported image", "archive", e.Archive.Location(), "attempt", attempt, "duration", elapsed.String())
		} else {
			log.Info("Pulled image", "attempt", attempt, "duration", elapsed.String())
		}
	} else if ctx.Err() == nil {
		pullsTotal.WithLabelValues(reasonOf(err)).Inc()
		st.reason, st.lastError = reasonOf(err), truncate(err.Error(), 1024)
		if attempt > e.BackoffLimit {
			st.setPhase(prepullv1.PhaseFailed, now)
			st.failedSpec = specKey(e)
			log.Info("Image failed", "attempts", attempt, "reason", st.reason, "error", st.lastError)
		} else {
			st.nextTry = now.Add(r.backoff(attempt))
			log.Info("Pull failed; retrying", "attempt", attempt, "reason", st.reason, "retryAt", st.nextTry, "error", st.lastError)
		}
	}
	r.mu.Unlock()
	if err == nil {
		// Tag, pin and verify while still holding the pull's slot, so that
		// an image reads Pulling only until it is Present and at most
		// MaxConcurrentPulls images read Pulling. An import shows through
		// CRI a moment after it is made.
		if img, err := cri.StatusSoon(ctx, r.Images, e.Image); err == nil {
			r.settle(ctx, e, st, img, r.Clock.Now())
		}
	}
	r.mu.Lock()
	st.pulling = false
	r.mu.Unlock()
	r.notify()
}

// backoff is the wait after the n-th failed attempt: doubling from
// BackoffBase up to BackoffMax, with ±20% jitter so that nodes that failed
// together do not retry together.
func (r *Reconciler) backoff(n int32) time.Duration {
	d := r.BackoffBase << min(n-1, 20)
	if d <= 0 || d > r.BackoffMax {
		d = r.BackoffMax
	}
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}

// syncTagsAndPins makes every tag name the image and puts exactly the
// wanted owners' pins on the digest and on every tag. It reports whether it
// changed anything, and the owners now pinned on the image.
func (r *Reconciler) syncTagsAndPins(ctx context.Context, e *entry, img *cri.Image) (bool, []string, error) {
	var retagged []string
	var errs []error
	for _, tag := range e.Tags {
		ts, err := r.Images.ImageStatus(ctx, tag)
		if err == nil && ts.ID == img.ID {
			continue
		}
		if err != nil && !errors.Is(err, cri.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		if err := r.Store.Tag(ctx, tag, e.Image); err != nil {
			errs = append(errs, err)
			continue
		}
		retagged = append(retagged, tag)
		tagsTotal.Inc()
	}
	pinners := map[string]bool{}
	for _, o := range e.Pinners {
		pinners[o] = true
	}
	changed := len(retagged) > 0
	var owners []string
	for i, ref := range append([]string{e.Image}, e.Tags...) {
		now, c, err := r.syncPins(ctx, ref, pinners)
		changed = changed || c
		if err != nil {
			errs = append(errs, err)
		}
		if i == 0 {
			owners = now
		}
	}
	if err := errors.Join(errs...); err != nil {
		return changed, owners, err
	}
	// Verify what was retagged: the tag must answer through CRI with the
	// image the digest answers with. The other tags were just seen to.
	for _, tag := range retagged {
		ts, err := r.Images.ImageStatus(ctx, tag)
		if err != nil {
			return changed, owners, fmt.Errorf("verify tag %s: %w", tag, err)
		}
		if ts.ID != img.ID {
			return changed, owners, fmt.Errorf("verify tag %s: names image %s, want %s", tag, ts.ID, img.ID)
		}
	}
	return changed, owners, nil
}

// syncPins pins ref for each of pinners and takes off every other owner's
// pin. It returns the owners left on ref and whether it changed any.
func (r *Reconciler) syncPins(ctx context.Context, ref string, pinners map[string]bool) ([]string, bool, error) {
	have, err := r.Store.Owners(ctx, ref)
	if err != nil {
		return nil, false, err
	}
	changed := false
	var errs []error
	var now []string
	for o := range pinners {
		if !slices.Contains(have, o) {
			if err := r.Store.Pin(ctx, ref, o); err != nil {
				errs = append(errs, err)
				continue
			}
			changed = true
		}
		now = append(now, o)
	}
	for _, o := range have {
		if !pinners[o] {
			if err := r.Store.Unpin(ctx, ref, o); err != nil {
				errs = append(errs, err)
				now = append(now, o)
				continue
			}
			changed = true
		}
	}
	slices.Sort(now)
	return now, changed, errors.Join(errs...)
}

// release takes the releasing owners' pins off the image and its tags, and
// removes the image when an owner says onDelete: Remove.
func (r *Reconciler) release(ctx context.Context, e *entry, st *imageState, now time.Time) {
	remove := e.Remove
	var errs []error
	for _, ref := range entryRefs(e.NodeImage) {
		if _, _, err := r.syncPins(ctx, ref, nil); err != nil && !errors.Is(err, cri.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if remove && len(errs) == 0 {
		if err := r.Images.RemoveImage(ctx, e.Image); err != nil {
			errs = append(errs, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := errors.Join(errs...); err != nil && !errors.Is(err, cri.ErrUnsupported) {
		st.reason, st.lastError = reasonOf(err), truncate(err.Error(), 1024)
		return
	}
	st.setPhase(prepullv1.PhaseReleased, now)
	st.pinned, st.pinOwners, st.reason, st.lastError = false, nil, "", ""
}

func (r *Reconciler) fail(st *imageState, err error, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st.reason, st.lastError = reasonOf(err), truncate(err.Error(), 1024)
	if st.phase == "" {
		st.setPhase(prepullv1.PhasePending, now)
	}
}

func (r *Reconciler) state(image string) *imageState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.images[image]
	if !ok {
		st = &imageState{}
		r.images[image] = st
	}
	return st
}

// forgetOthers drops what the agent knows of images no longer in the spec.
func (r *Reconciler) forgetOthers(set *prepullv1.NodeImageSet) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for image, st := range r.images {
		if st.pulling {
			continue
		}
		if !slices.ContainsFunc(set.Spec.Images, func(e prepullv1.NodeImage) bool { return e.Image == image }) {
			delete(r.images, image)
		}
	}
}

func (r *Reconciler) busy() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range r.images {
		if st.pulling {
			return true
		}
	}
	return false
}

// nextRetry is the earliest due retry, or zero.
func (r *Reconciler) nextRetry(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for _, st := range r.images {
		if !st.pulling && !st.nextTry.IsZero() && st.phase != prepullv1.PhasePresent && (next.IsZero() || st.nextTry.Before(next)) {
			next = st.nextTry
		}
	}
	return next
}

// notify wakes Reconcile.
func (r *Reconciler) notify() {
	ev := event.GenericEvent{Object: &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName}}}
	select {
	case r.wake <- ev:
	default:
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

// specKey identifies what a spec entry asks, for "failed for good".
func specKey(e *entry) string {
	var resolveAfter time.Time
	if e.ResolveAfter != nil {
		resolveAfter = e.ResolveAfter.Time
	}
	var archive string
	if e.Archive != nil {
		archive = e.Archive.Location() + "|" + e.Archive.SHA256
	}
	return fmt.Sprintf("%s|%v|%v|%d|%d|%s|%v|%s", e.Image, e.Tags, e.PullSecrets, e.BackoffLimit, resolveAfter.Unix(), archive, e.Pinners, e.Timeout)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// SetupWithManager registers the reconciler: it watches the node's own
// NodeImageSet, is woken by finished pulls and by the runtime's image
// events, and polls pull progress.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.MaxConcurrentPulls <= 0 {
		r.MaxConcurrentPulls = DefaultMaxConcurrentPulls
	}
	if r.StatusInterval <= 0 {
		r.StatusInterval = DefaultStatusInterval
	}
	if r.ResyncInterval <= 0 {
		r.ResyncInterval = DefaultResyncInterval
	}
	if r.BackoffBase <= 0 {
		r.BackoffBase = DefaultBackoffBase
	}
	if r.BackoffMax <= 0 {
		r.BackoffMax = DefaultBackoffMax
	}
	r.images = map[string]*imageState{}
	r.dirty = map[string]bool{}
	r.sem = make(chan struct{}, r.MaxConcurrentPulls)
	r.wake = make(chan event.GenericEvent, 1)
	r.baseCtx = context.Background()
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		r.mu.Lock()
		r.baseCtx = ctrl.LoggerInto(ctx, mgr.GetLogger().WithValues("node", r.NodeName))
		r.mu.Unlock()
		go r.watchRuntime(ctx)
		r.pollProgress(ctx)
		return nil
	})); err != nil {
		return err
	}
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == r.NodeName })
	// A list's settings (retain, onDelete, rollout, pull secrets) are read
	// from the list: a change of one is a change of this node's work.
	ownNode := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: r.NodeName}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&prepullv1.NodeImageSet{}, builder.WithPredicates(mine)).
		Watches(&prepullv1.PrePullList{}, ownNode, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{})).
		Named("nodeimageset").
		Complete(r)
}

// runnable adapts a function to manager.Runnable.
type runnable func(context.Context) error

func (f runnable) Start(ctx context.Context) error { return f(ctx) }

// watchRuntime wakes Reconcile when the runtime reports an image change, so
// that a pin or tag taken away is restored at once; it resubscribes when the
// runtime restarts.
func (r *Reconciler) watchRuntime(ctx context.Context) {
	w, ok := r.Store.(cri.ImageWatcher)
	if !ok {
		return
	}
	for ctx.Err() == nil {
		ch, err := w.WatchImages(ctx)
		if err == nil {
			for name := range ch {
				r.markDirty(name)
				r.notify()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			r.notify()
		}
	}
}
