package nodeimageset

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/verify"
)

// maybePull starts a pull unless one failed for good, its retry is not due,
// or the disk budget forbids it.
//
// absent says the node did not hold the image: one pulled or imported then
// is recorded as brought by prepull, and only such an image is removed on
// onDelete: Remove.
func (r *Reconciler) maybePull(e *entry, st *imageState, now time.Time, absent bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := specKey(e)
	if st.phase == prepullv1.PhaseFailed && st.failedSpec == key {
		return
	}
	if st.phase == prepullv1.PhaseFailed || st.phase == prepullv1.PhasePresent || st.phase == prepullv1.PhaseLazy || st.phase == prepullv1.PhaseReleased {
		// A changed spec after a failure, or an image gone from under us:
		// start over.
		st.attempts, st.failedSpec, st.nextTry = 0, "", time.Time{}
	}
	if st.triedSpec != "" && st.triedSpec != key {
		st.nextTry = time.Time{}
	}
	if r.Peers.takeRouted(e.Image) && waitsForSource(st.reason) {
		// Its route changed (a holder listed, a grant given): look now.
		st.nextTry = time.Time{}
	}
	if now.Before(st.nextTry) {
		return
	}
	if msg := r.pullOverBudget(r.baseCtx, r.fsMount, nil); msg != "" {
		st.to(prepullv1.PhasePending, ReasonDiskBudget, msg, now)
		st.nextTry = now.Add(r.ResyncInterval)
		return
	}
	st.pulling, st.triedSpec = true, key
	if st.phase != prepullv1.PhasePulling {
		st.to(prepullv1.PhasePending, st.reason, st.lastError, now)
	}
	go r.pull(e.clone(), st, absent)
}

// pull runs one pull attempt in the background, in one of the
// MaxConcurrentPulls slots, and wakes Reconcile when it ends. What the pull
// will write is read before the slot is taken, while other pulls run, so
// that the disk budget's look at the registry adds nothing to a queue of
// pulls but to its first.
func (r *Reconciler) pull(e *entry, st *imageState, absent bool) {
	r.mu.Lock()
	ctx := r.baseCtx
	r.mu.Unlock()
	auth, kind, err := r.auth(ctx, e)
	var blobs []cri.Blob
	if err == nil {
		blobs = r.pullBlobs(ctx, e, auth)
	}
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-r.sem }()

	r.mu.Lock()
	mount := r.fsMount
	r.mu.Unlock()
	if msg := r.pullOverBudget(ctx, mount, blobs); msg != "" {
		r.mu.Lock()
		now := r.Clock.Now()
		st.to(prepullv1.PhasePending, ReasonDiskBudget, msg, now)
		st.nextTry, st.pulling = now.Add(r.ResyncInterval), false
		r.mu.Unlock()
		r.notify()
		return
	}
	r.mu.Lock()
	st.attempts++
	st.to(prepullv1.PhasePulling, st.reason, st.lastError, r.Clock.Now())
	attempt := st.attempts
	r.mu.Unlock()
	r.notify()

	start := r.Clock.Now()
	var from string
	if err == nil {
		from, err = r.fetch(ctx, e, auth)
	}
	if err == nil {
		r.fetched(ctx, e, st, absent, kind, from)
	}
	r.record(ctx, e, st, attempt, err, r.Clock.Since(start))
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

// fetched notes that e was fetched, with credentials of kind, or from the
// peer from: that prepull brought it, when the node lacked it, and how it
// was fetched.
func (r *Reconciler) fetched(ctx context.Context, e *entry, st *imageState, absent bool, kind prepullv1.CredentialKind, from string) {
	if absent {
		r.markBrought(ctx, e.Image)
	}
	source := prepullv1.FetchedFromRegistry
	switch {
	case from != "":
		source, kind = prepullv1.FetchedFromPeer, ""
	case e.Archive != nil:
		source, kind = prepullv1.FetchedFromArchive, ""
	}
	r.mu.Lock()
	st.credentials, st.source, st.fetchedFrom, st.uncounted = kind, source, from, true
	r.mu.Unlock()
	if p, ok := r.Store.(cri.Provenance); ok {
		if err := p.MarkSource(ctx, e.Image, string(source), from); err != nil {
			ctrl.LoggerFrom(ctx).Info("Could not record where the image came from; an agent restarted will not say", "image", e.Image, "error", err.Error())
		}
	}
}

// recallSource reads, once for an image the agent found present, where
// the runtime's record says prepull fetched it from: an agent restarted
// tells the sources its predecessor fetched from.
func (r *Reconciler) recallSource(ctx context.Context, e *entry, st *imageState) {
	r.mu.Lock()
	known := st.source != "" || st.recalled
	st.recalled = true
	r.mu.Unlock()
	p, ok := r.Store.(cri.Provenance)
	if known || !ok {
		return
	}
	source, from, err := p.Source(ctx, e.Image)
	s := prepullv1.ImageFetchSource(source)
	if err != nil || (s != prepullv1.FetchedFromRegistry && s != prepullv1.FetchedFromPeer && s != prepullv1.FetchedFromArchive) {
		return
	}
	if s != prepullv1.FetchedFromPeer || len(from) > validation.DNS1123SubdomainMaxLength {
		from = ""
	}
	r.mu.Lock()
	if st.source == "" {
		st.source, st.fetchedFrom = s, from
	}
	r.mu.Unlock()
}

// markBrought records on the runtime that prepull brought the image ref
// names; a runtime that cannot record it keeps the image on onDelete:
// Remove.
func (r *Reconciler) markBrought(ctx context.Context, ref string) {
	p, ok := r.Store.(cri.Provenance)
	if !ok {
		return
	}
	if err := p.MarkBrought(ctx, ref); err != nil {
		ctrl.LoggerFrom(ctx).Info("Could not record that prepull brought the image; it is kept on onDelete: Remove", "image", ref, "error", err.Error())
	}
}

// fetch fetches e from a peer (and names it), or pulls it through CRI
// with auth, or imports it from its archive, within e's timeout.
func (r *Reconciler) fetch(ctx context.Context, e *entry, auth *cri.Auth) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, e.Timeout)
	defer cancel()
	if from, err := r.fromPeers(ctx, e); from != "" || err != nil {
		return from, err
	}
	if e.Archive != nil {
		return "", r.importArchive(ctx, e)
	}
	if len(e.VerifyKeys) > 0 && !strings.Contains(e.Image, "@") {
		return "", r.pullVerified(ctx, e, auth)
	}
	_, err := r.Images.PullImage(ctx, e.Image, auth)
	return "", err
}

// pullVerified pulls e, a tag the node resolves for lists with spec.verify,
// once its digest's signature verified: it reads the tag's digest and that
// digest's signatures from the registry as the runtime reaches it, checks
// them with e's keys, and only then pulls the digest and points the tag at
// it; a digest that does not verify is not pulled (under Audit it is, and
// status says what the signatures said). Digests the controller hands were
// verified by the controller, or by the node that resolved their tag.
func (r *Reconciler) pullVerified(ctx context.Context, e *entry, auth *cri.Auth) error {
	v, err := r.verification(e)
	if err != nil {
		return err
	}
	reader, ok := r.Store.(cri.RegistryReader)
	if !ok {
		return &verify.Error{Result: verify.Result{Reason: verify.ReasonUnavailable, Message: fmt.Sprintf("runtime %s: signatures are read on the node through containerd's API", r.Runtime)}}
	}
	ref, err := imageref.Parse(e.Image)
	if err != nil {
		return err
	}
	digest, err := reader.Resolve(ctx, ref.Tag, auth)
	if err != nil {
		return err
	}
	digestRef := ref.Repo + "@" + digest
	sigs, err := reader.Signatures(ctx, digestRef, auth)
	res := verify.Result{Reason: verify.ReasonUnavailable, Message: fmt.Sprintf("the signatures could not be read: %v", err)}
	if err == nil {
		res = verify.Check(sigs, digest, v.Keys)
	}
	st := r.state(e.Image)
	r.mu.Lock()
	st.signature = signatureStatus(digest, &res)
	r.mu.Unlock()
	switch {
	case err != nil:
		// Not known either way: tried again after the back-off.
		return err
	case !res.Verified && !v.Audit:
		return res.Err()
	}
	if _, err := r.Images.PullImage(ctx, digestRef, auth); err != nil {
		return err
	}
	_, err = r.Store.Tag(ctx, e.Image, digestRef, e.Pinners...)
	return err
}

// record notes the end of pull attempt number attempt: its metrics, and
// either the pull's time or its failure, with the next try or Failed once
// the backoff limit is spent.
func (r *Reconciler) record(ctx context.Context, e *entry, st *imageState, attempt int32, err error, elapsed time.Duration) {
	log := ctrl.LoggerFrom(ctx).WithValues("image", e.Image)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.Clock.Now()
	switch {
	case err == nil:
		pullsTotal.WithLabelValues("success").Inc()
		pullDuration.Observe(elapsed.Seconds())
		st.nextTry, st.pulledAt, st.importedFrom = time.Time{}, metav1.NewTime(now).Rfc3339Copy().Time, ""
		if e.Archive != nil {
			st.importedFrom = e.Archive.SHA256
			log.Info("Imported image", "archive", e.Archive.Location(), "attempt", attempt, "duration", elapsed.String())
		} else {
			log.Info("Pulled image", "attempt", attempt, "duration", elapsed.String())
		}
	case ctx.Err() != nil:
		// The agent is stopping: the attempt says nothing of the image.
	case errors.As(err, new(*waitError)):
		// Waiting for holders or a registry grant: not an attempt.
		var w *waitError
		errors.As(err, &w)
		st.attempts--
		st.to(prepullv1.PhasePending, w.reason, w.msg, now)
		st.nextTry = now.Add(wait.Jitter(time.Second, 0.5))
	case errors.As(err, new(*budgetError)):
		// An archive or a fetch from peers without room yet: not an
		// attempt at the image, but a wait for the disk, as a pull's
		// (maybePull).
		st.attempts--
		st.to(prepullv1.PhasePending, ReasonDiskBudget, err.Error(), now)
		st.nextTry = now.Add(r.ResyncInterval)
		log.Info("Image waits for the disk budget", "error", err.Error())
	case attempt > e.BackoffLimit || errors.As(err, new(*verify.Error)):
		// A signature that does not verify will not on a second try: only
		// a changed entry (another archive, other keys) is tried again.
		pullsTotal.WithLabelValues(reasonOf(err)).Inc()
		st.to(prepullv1.PhaseFailed, reasonOf(err), err.Error(), now)
		st.failedSpec = specKey(e)
		log.Info("Image failed", "attempts", attempt, "reason", st.reason, "error", st.lastError)
	default:
		pullsTotal.WithLabelValues(reasonOf(err)).Inc()
		st.explain(reasonOf(err), err.Error(), now)
		st.nextTry = now.Add(r.backoff(attempt))
		log.Info("Pull failed; retrying", "attempt", attempt, "reason", st.reason, "retryAt", st.nextTry, "error", st.lastError)
	}
}

// backoff is the wait after the n-th failed attempt: doubling from
// BackoffBase up to BackoffMax, with ±20% jitter so that nodes that failed
// together do not retry together.
func (r *Reconciler) backoff(n int32) time.Duration {
	b := wait.Backoff{Duration: r.BackoffBase, Factor: 2, Cap: r.BackoffMax, Steps: math.MaxInt32}
	var d time.Duration
	for range min(n, 32) {
		d = b.Step()
	}
	return wait.Jitter(min(d, r.BackoffMax)*4/5, 0.5)
}

// auth returns the credentials for e's registry, and their kind: from its
// pull secrets, through Credentials, else the node's own
// (NodeCredentials); nil when neither has any for that registry.
func (r *Reconciler) auth(ctx context.Context, e *entry) (*cri.Auth, prepullv1.CredentialKind, error) {
	if len(e.PullSecrets) > 0 {
		if r.Credentials == nil {
			return nil, "", errors.New("the agent has no source of pull credentials")
		}
		if a, err := r.Credentials.Auth(ctx, e.Image, e.PullSecrets); a != nil || err != nil {
			return a, prepullv1.CredentialsPullSecret, err
		}
	}
	if r.NodeCredentials == nil {
		return nil, "", nil
	}
	a, err := r.NodeCredentials.Auth(ctx, e.Image)
	if a == nil {
		return nil, "", err
	}
	return a, prepullv1.CredentialsCredentialProvider, err
}
