package nodeimageset

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/pullsecret"
)

// buildStatus is the status the agent reports for set.
func (r *Reconciler) buildStatus(set *prepullv1.NodeImageSet) prepullv1.NodeImageSetStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := prepullv1.NodeImageSetStatus{
		ObservedGeneration: set.Generation,
		Runtime:            r.Runtime,
		ImageFilesystem:    r.fs.DeepCopy(),
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
	var s syscall.Statfs_t
	if err := syscall.Statfs(path, &s); err != nil {
		return 0, 0, err
	}
	total := s.Blocks * uint64(s.Bsize)
	return total - s.Bavail*uint64(s.Bsize), total, nil
}

// auth returns the credentials for e's registry from its pull secrets, read
// in the controller's namespace, or nil when it has none for that registry.
func (r *Reconciler) auth(ctx context.Context, e *entry) (*cri.Auth, error) {
	if len(e.PullSecrets) == 0 {
		return nil, nil
	}
	repo, err := imageref.Repository(e.Image)
	if err != nil {
		return nil, err
	}
	host, _, _ := strings.Cut(repo, "/")
	for _, name := range e.PullSecrets {
		s := &corev1.Secret{}
		if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: name}, s); apierrors.IsNotFound(err) {
			// The controller mirrors only the secrets that exist and parse;
			// the list's status says which do not.
			continue
		} else if err != nil {
			return nil, fmt.Errorf("pull secret %s/%s: %w", r.Namespace, name, err)
		}
		creds, err := pullsecret.Parse(s)
		if err != nil {
			return nil, err
		}
		if c, ok := pullsecret.Find(creds, host); ok {
			return &cri.Auth{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, ServerAddress: host}, nil
		}
	}
	return nil, nil
}

// pollProgress reads the runtime's download progress while pulls are under
// way and wakes Reconcile, whose status writes are rate-limited. containerd
// reports downloads per blob, not per image: with one pull under way its
// bytes are the image's; with several, each image reports its bytes when it
// is Present.
func (r *Reconciler) pollProgress(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var pulling []*imageState
		r.mu.Lock()
		for _, st := range r.images {
			if st.pulling && st.phase == prepullv1.PhasePulling {
				pulling = append(pulling, st)
			}
		}
		r.mu.Unlock()
		if len(pulling) != 1 {
			continue
		}
		prog, err := r.Store.Progress(ctx)
		if err != nil {
			continue
		}
		var done, total int64
		for _, p := range prog {
			done += p.Offset
			total += p.Total
		}
		r.mu.Lock()
		if done > pulling[0].bytesDone || total > pulling[0].bytesTotal {
			pulling[0].bytesDone, pulling[0].bytesTotal = max(done, pulling[0].bytesDone), max(total, pulling[0].bytesTotal)
		}
		r.mu.Unlock()
		r.notify()
	}
}
