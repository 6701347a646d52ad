package nodeimageset

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
)

// buildStatus is the status the agent reports for set.
func (r *Reconciler) buildStatus(set *prepullv1.NodeImageSet) prepullv1.NodeImageSetStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := prepullv1.NodeImageSetStatus{
		ObservedGeneration: set.Generation,
		Runtime:            r.Runtime,
		ImageFilesystem:    r.fs.DeepCopy(),
		Checks:             slices.Clone(r.checks),
	}
	var present, pinned int
	var pinnedBytes int64
	for _, e := range set.Spec.Images {
		s := r.images[e.Image]
		if s == nil || s.phase == "" {
			st.Images = append(st.Images, prepullv1.NodeImageStatus{Image: e.Image, Phase: prepullv1.PhasePending})
			continue
		}
		since := s.since
		var pulledAt *metav1.Time
		if !s.pulledAt.IsZero() {
			pulledAt = &metav1.Time{Time: s.pulledAt}
		}
		st.Images = append(st.Images, prepullv1.NodeImageStatus{
			PulledAt:           pulledAt,
			ImportedFrom:       s.importedFrom,
			Image:              e.Image,
			Phase:              s.phase,
			Digest:             s.digest,
			Pinned:             s.pinned,
			PinOwners:          slices.Clone(s.pinOwners),
			BytesDone:          s.bytesDone,
			BytesTotal:         s.bytesTotal,
			Attempts:           s.attempts,
			Reason:             s.reason,
			LastError:          s.lastError,
			LastTransitionTime: &since,
			Signature:          s.signature.DeepCopy(),
		})
		if s.phase == prepullv1.PhasePresent {
			present++
			if s.pinned {
				pinned++
				pinnedBytes += s.bytesTotal
			}
		}
	}
	imagesGauge.WithLabelValues("present").Set(float64(present))
	imagesGauge.WithLabelValues("pinned").Set(float64(pinned))
	pinnedBytesGauge.Set(float64(pinnedBytes))
	return st
}

// measureFilesystem records the image filesystem's usage for status, at
// most once per status interval.
func (r *Reconciler) measureFilesystem(ctx context.Context, now time.Time) {
	if now.Sub(r.measured) < r.StatusInterval {
		return
	}
	r.measured = now
	fs, err := r.Images.ImageFsInfo(ctx)
	if err != nil || len(fs) == 0 {
		return
	}
	out := &prepullv1.ImageFilesystem{UsedBytes: int64(fs[0].UsedBytes)}
	if _, total, err := r.fsUsage(fs[0].Mountpoint); err == nil {
		out.CapacityBytes = int64(total)
	}
	r.mu.Lock()
	r.fs, r.fsMount = out, fs[0].Mountpoint
	r.mu.Unlock()
}

// overBudget says why no pull may start, or "" when one may: the image
// filesystem, found by the last measureFilesystem, is used past DiskBudget.
// The caller holds r.mu.
func (r *Reconciler) overBudget() string {
	if r.DiskBudget <= 0 || r.fsMount == "" {
		return ""
	}
	used, total, err := r.fsUsage(r.fsMount)
	if err != nil || total == 0 {
		return ""
	}
	if frac := float64(used) / float64(total); frac >= r.DiskBudget {
		return fmt.Sprintf("the image filesystem %s is %.1f%% full, past the agent's disk budget of %.1f%%: no pull starts",
			r.fsMount, 100*frac, 100*r.DiskBudget)
	}
	return ""
}

// pullOverBudget says why e's pull may not start, or "": what the pull
// writes would take the image filesystem past DiskBudget. That is the
// image's blobs the runtime does not hold yet, counted twice — once in the
// content store, once unpacked, which a compressed layer at least matches —
// so a lower bound. The runtime reads their sizes from the registry as a
// pull would (containerd only); where it cannot, or for an archive, only
// the usage counts.
func (r *Reconciler) pullOverBudget(ctx context.Context, e *entry, auth *cri.Auth) string {
	sizer, ok := r.Store.(cri.PullSizer)
	r.mu.Lock()
	mount := r.fsMount
	r.mu.Unlock()
	if !ok || r.DiskBudget <= 0 || mount == "" || e.Archive != nil || !strings.Contains(e.Image, "@") {
		return ""
	}
	blobs, err := sizer.PullSize(ctx, e.Image, auth)
	if err != nil {
		// The pull itself says what is wrong.
		ctrl.LoggerFrom(ctx).V(1).Info("Size of the pull unknown: only the image filesystem's usage counts for the disk budget", "image", e.Image, "error", err.Error())
		return ""
	}
	used, total, err := r.fsUsage(mount)
	if err != nil || total == 0 {
		return ""
	}
	now, after := float64(used)/float64(total), float64(used+2*uint64(blobs))/float64(total)
	if after < r.DiskBudget {
		return ""
	}
	return fmt.Sprintf("the pull writes at least %s (%s of blobs, as much again unpacked), which would take the image filesystem %s from %.1f%% to %.1f%% full, past the agent's disk budget of %.1f%%: no pull starts",
		bundle.Bytes(2*blobs), bundle.Bytes(blobs), mount, 100*now, 100*after, 100*r.DiskBudget)
}

func (r *Reconciler) fsUsage(path string) (uint64, uint64, error) {
	if r.FsUsage != nil {
		return r.FsUsage(path)
	}
	return cri.Statfs(path)
}

// examine runs the doctor's checks now and every DoctorInterval until ctx
// ends, and wakes Reconcile when they changed, for status.
func (r *Reconciler) examine(ctx context.Context) {
	if r.Doctor == nil {
		return
	}
	t := time.NewTicker(r.DoctorInterval)
	defer t.Stop()
	for {
		checks := r.Doctor(ctx)
		r.mu.Lock()
		changed := !equality.Semantic.DeepEqual(r.checks, checks)
		r.checks = checks
		r.mu.Unlock()
		if changed {
			r.notify()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
