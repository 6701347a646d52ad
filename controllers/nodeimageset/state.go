package nodeimageset

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/present"
	"prepull.io/prepull/redact"
	"prepull.io/prepull/verify"
)

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
	// ReasonKept (Released): onDelete: Remove asked for the image's
	// removal, and it stays: prepull did not bring it, or a container
	// uses it.
	ReasonKept = "Kept"
	// ReasonTagConflict: the entry claims a tag that another entry of the
	// same NodeImageSet also claims, and the other entry was chosen; or
	// the entry comes from an archive and the tag names another image on
	// the node that others placed.
	ReasonTagConflict = "TagConflict"
	// ReasonCredentialProvider: a credential provider plugin of the node
	// that matches the image did not answer in time, answered what is not
	// a CredentialProviderResponse, or failed.
	ReasonCredentialProvider = "CredentialProviderFailed"
	// ReasonTagMismatch: a tag the runtime could make only by pulling it
	// names other bytes at the registry than the entry's digest.
	ReasonTagMismatch = "TagMismatch"
	// Reasons of images that come from an archive.
	ReasonArchiveNotFound = "ArchiveNotFound"
	ReasonArchiveChecksum = "ArchiveChecksumMismatch"
	ReasonArchiveInvalid  = "InvalidArchive"
)

func reasonOf(err error) string {
	var unverified *verify.Error
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
	case errors.As(err, &unverified):
		return unverified.Reason
	case errors.Is(err, present.ErrTagElsewhere):
		return ReasonTagMismatch
	case errors.Is(err, errTagHeld):
		return ReasonTagConflict
	case errors.Is(err, cri.ErrUnsupported):
		return ReasonUnsupported
	case errors.Is(err, credprovider.ErrProvider):
		return ReasonCredentialProvider
	case nodeauth.IsForbidden(err):
		// The controller's endpoint refused this node the image's
		// credentials.
		return ReasonUnauthorized
	}
	return ReasonPullFailed
}

// imageState is what the agent knows of one spec image between reconciles.
// Every field is read and written with the Reconciler's mutex held.
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
	// is tried again. triedSpec is the entry last tried: a changed one (a
	// rotated pull secret, a new timeout) is tried again at once, without
	// waiting out the back-off of the old one.
	failedSpec, triedSpec string
	// lostTag: the entry lost a tag to another entry of the spec.
	lostTag bool
	// source is where its bytes last came from; fetchedFrom the peer.
	// recalled: the runtime's record of them was read (once, for an image
	// this agent found present).
	source      prepullv1.ImageFetchSource
	fetchedFrom string
	recalled    bool
	// verified is the spec entry last found fully in place, at verifiedAt.
	verified   string
	verifiedAt time.Time
	// pulledAt is when the image was last pulled successfully, and
	// importedFrom the SHA-256 of the archive it came from, if it did.
	pulledAt     time.Time
	importedFrom string
	// signature is what the last import found of the image's signatures.
	signature *prepullv1.SignatureStatus
	// private is whether the entry last settled names pull secrets: a
	// private image, as far as the agent knows.
	private bool
	// credentials is the kind of credentials the last pull used.
	credentials prepullv1.CredentialKind
	// uncounted is a fetch done whose image the fetch metrics do not
	// count yet: they do once it is Present, with its size.
	uncounted bool
}

// to puts st in phase p, saying why with reason and msg ("" and "" when
// all is well). It is the one place a phase changes: the transition's time
// and the metrics of transitions are kept here.
func (st *imageState) to(p prepullv1.ImagePhase, reason, msg string, now time.Time) {
	if st.phase != p {
		if p == prepullv1.PhasePresent {
			pullBytes.Observe(float64(st.bytesTotal))
			if st.uncounted {
				fetchedImages.WithLabelValues(string(st.source)).Inc()
				fetchedBytes.WithLabelValues(string(st.source)).Add(float64(st.bytesTotal))
				st.uncounted = false
			}
		}
		transitionsTotal.WithLabelValues(string(p)).Inc()
		// Second precision, as the API stores it, so that status compares
		// equal to what was written.
		st.phase, st.since = p, metav1.NewTime(now).Rfc3339Copy()
	}
	// What the runtime or a registry said, fit for a status.
	st.reason, st.lastError = reason, redact.Text(msg)
}

// cannotMake reports whether the image is present as the entry whose spec
// key is key, and the runtime cannot make it what that entry asks: only a
// changed entry is worth another try.
func (st *imageState) cannotMake(key string) bool {
	return st.phase == prepullv1.PhaseFailed && st.failedSpec == key &&
		(st.reason == ReasonUnsupported || st.reason == ReasonTagMismatch)
}

// explain gives st's reason and message, its phase unchanged.
func (st *imageState) explain(reason, msg string, now time.Time) {
	st.to(st.phase, reason, msg, now)
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
func (r *Reconciler) nextRetry() time.Time {
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
	return fmt.Sprintf("%s|%v|%v|%s|%d|%d|%s|%v|%s|%s", e.Image, e.Tags, e.PullSecrets, e.SecretsVersion, e.BackoffLimit, resolveAfter.Unix(), archive, e.Pinners, e.Timeout, verificationKey(e))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
