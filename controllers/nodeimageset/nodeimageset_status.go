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

// buildStatus is the status the agent reports for set, whose spec.images
// holds its plan's images and those named inline. An image of the plan
// that is present as asked is counted, not listed.
func (r *Reconciler) buildStatus(set *prepullv1.NodeImageSet, inline map[string]bool) prepullv1.NodeImageSetStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := prepullv1.NodeImageSetStatus{
		ObservedGeneration:     set.Generation,
		Runtime:                r.Runtime,
		ImageFilesystem:        r.fs.DeepCopy(),
		Checks:                 slices.Clone(r.checks),
		CredentialVerification: r.verifies,
		Peer:                   r.Peers.self(),
	}
	var present, pinned int
	var pinnedBytes int64
	var fetched prepullv1.FetchCounts
	var sources []planSource
	for _, e := range set.Spec.Images {
		s := r.images[e.Image]
		if s == nil || s.phase == "" {
			st.Images = append(st.Images, prepullv1.NodeImageStatus{Image: e.Image, Phase: prepullv1.PhasePending})
			continue
		}
		rep := s.report(e.Image)
		if set.Spec.Plan != "" && !inline[e.Image] && e.IsPresentAsAsked(&rep) {
			st.PlanPresent++
			st.PlanBytes += rep.BytesTotal
			sources = append(sources, planSource{e.Image, prepullv1.PlanSourceLetter(s.source)})
		} else {
			st.Images = append(st.Images, rep)
		}
		fetched.Count(s.source, s.bytesTotal)
		if s.phase == prepullv1.PhasePresent {
			present++
			if s.pinned {
				pinned++
				pinnedBytes += s.bytesTotal
			}
		}
	}
	st.Plan = set.Spec.Plan
	st.PlanSources = planSources(sources)
	if fetched != (prepullv1.FetchCounts{}) {
		st.Fetched = &fetched
	}
	setGauges(present, pinned, pinnedBytes)
	return st
}

// planSource is an image left out of a status, with the letter of its
// source.
type planSource struct {
	image  string
	letter byte
}

// planSources is NodeImageSetStatus.PlanSources of the images left out:
// their letters in the order of their names; "" when no source is known.
func planSources(left []planSource) string {
	slices.SortFunc(left, func(a, b planSource) int { return strings.Compare(a.image, b.image) })
	out := make([]byte, len(left))
	for i, p := range left {
		out[i] = p.letter
	}
	if strings.Trim(string(out), "-") == "" {
		return ""
	}
	return string(out)
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

// pullBlobs are the blobs e's pull fetches, or nil when they are not known
// or no budget applies. The runtime reads them from the registry as a pull
// would (containerd only); an archive's are not read. At most
// MaxConcurrentPulls reads run at once.
func (r *Reconciler) pullBlobs(ctx context.Context, e *entry, auth *cri.Auth) []cri.Blob {
	sizer, ok := r.Store.(cri.PullSizer)
	if !ok || r.DiskBudget <= 0 || e.Archive != nil || !strings.Contains(e.Image, "@") || r.Peers != nil {
		// With peers, the registry is not asked: most nodes never reach
		// it, and a registry may count a manifest read as a pull.
		return nil
	}
	select {
	case r.sizing <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-r.sizing }()
	blobs, err := sizer.PullBlobs(ctx, e.Image, auth)
	if err != nil {
		// The pull itself says what is wrong.
		ctrl.LoggerFrom(ctx).V(1).Info("Size of the pull unknown: only the image filesystem's usage counts for the disk budget", "image", e.Image, "error", err.Error())
		return nil
	}
	return blobs
}

// pullOverBudget says why the pull of blobs (nil: not known) may not start,
// or "": the image filesystem at mount (found by the last
// measureFilesystem), as used now, is past DiskBudget, or would be with
// what the pull writes. That is at least the blobs the runtime lacks,
// counted twice — once in the content store, once unpacked, which a
// compressed layer at least matches. All of blobs are counted first; the
// runtime is asked which it lacks only when all would not fit.
func (r *Reconciler) pullOverBudget(ctx context.Context, mount string, blobs []cri.Blob) string {
	if msg := r.overBudget(mount, 0, "the pull"); msg != "" || blobs == nil {
		return msg
	}
	var all int64
	for _, b := range blobs {
		all += b.Size
	}
	if r.overBudget(mount, 2*all, "the pull") == "" {
		return ""
	}
	missing, err := r.Store.(cri.PullSizer).Missing(ctx, blobs)
	if err != nil {
		// Not known: only the usage counts, and it fits.
		return ""
	}
	return r.overBudget(mount, 2*missing, "the pull")
}

// overBudget says why what, which writes need bytes (half of them blobs,
// half unpacked), may not start on the image filesystem at mount, or "" if
// it may: the filesystem is past DiskBudget already, or would be after.
func (r *Reconciler) overBudget(mount string, need int64, what string) string {
	if r.DiskBudget <= 0 || mount == "" {
		return ""
	}
	used, total, err := r.fsUsage(mount)
	if err != nil || total == 0 {
		return ""
	}
	now, after := float64(used)/float64(total), float64(used+uint64(need))/float64(total)
	switch {
	case now >= r.DiskBudget:
		return fmt.Sprintf("the image filesystem %s is %.1f%% full, past the agent's disk budget of %.1f%%: no pull or import starts",
			mount, 100*now, 100*r.DiskBudget)
	case after >= r.DiskBudget:
		return fmt.Sprintf("%s writes at least %s (%s of blobs, as much again unpacked), which would take the image filesystem %s from %.1f%% to %.1f%% full, past the agent's disk budget of %.1f%%: it does not start",
			what, bundle.Bytes(need), bundle.Bytes(need/2), mount, 100*now, 100*after, 100*r.DiskBudget)
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
		checks, verifies := r.Doctor(ctx), ""
		if r.CredentialVerification != nil {
			verifies = r.CredentialVerification()
		}
		r.mu.Lock()
		changed := !equality.Semantic.DeepEqual(r.checks, checks) || r.verifies != verifies
		r.checks, r.verifies = checks, verifies
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

// PrivateImages are the images present on the node whose entries name pull
// secrets, sorted: what the kubelet's credential verification policy
// decides who may run (the doctor's check of it).
func (r *Reconciler) PrivateImages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for ref, st := range r.images {
		if st.private && st.phase == prepullv1.PhasePresent {
			out = append(out, ref)
		}
	}
	slices.Sort(out)
	return out
}

// timeOrNil is t for a status, nil when zero.
func timeOrNil(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	return &metav1.Time{Time: t}
}

// setGauges sets the gauges of the images present and pinned.
func setGauges(present, pinned int, pinnedBytes int64) {
	imagesGauge.WithLabelValues("present").Set(float64(present))
	imagesGauge.WithLabelValues("pinned").Set(float64(pinned))
	pinnedBytesGauge.Set(float64(pinnedBytes))
}

// report is the status of image, in state s.
func (s *imageState) report(image string) prepullv1.NodeImageStatus {
	since := s.since
	return prepullv1.NodeImageStatus{
		PulledAt:           timeOrNil(s.pulledAt),
		ImportedFrom:       s.importedFrom,
		Credentials:        s.credentials,
		Source:             s.source,
		FetchedFrom:        s.fetchedFrom,
		Image:              image,
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
	}
}
