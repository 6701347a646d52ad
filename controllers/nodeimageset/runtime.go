package nodeimageset

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
)

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

// markDirty records that the runtime changed the image record name.
func (r *Reconciler) markDirty(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dirty[name] = true
}

// notify wakes Reconcile.
func (r *Reconciler) notify() {
	ev := event.GenericEvent{Object: &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName}}}
	select {
	case r.wake <- ev:
	default:
	}
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
