package nodeimageset

import (
	"context"
	"strings"
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

// pollProgress reads, once a second, how much of each image being pulled
// the runtime holds, and wakes Reconcile, whose status writes are
// rate-limited. Each image counts only the blobs of its own manifest, so
// that pulls under way at once, and pulls of others (the kubelet's), do not
// mix; an image named by tag alone reports its bytes once Present.
func (r *Reconciler) pollProgress(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pulling := map[string]*imageState{}
		r.mu.Lock()
		for image, st := range r.images {
			if st.pulling && st.phase == prepullv1.PhasePulling && strings.Contains(image, "@") {
				pulling[image] = st
			}
		}
		r.mu.Unlock()
		moved := false
		for image, st := range pulling {
			done, total, err := r.Store.PullProgress(ctx, image)
			if err != nil || total == 0 {
				continue
			}
			r.mu.Lock()
			if done > st.bytesDone || total != st.bytesTotal {
				st.bytesDone, st.bytesTotal = max(done, st.bytesDone), total
				moved = true
			}
			r.mu.Unlock()
		}
		if moved {
			r.notify()
		}
	}
}
