package nodeimageset

import (
	"context"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
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
