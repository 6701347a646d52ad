package nodeimageset

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"

	"prepull.io/prepull/cri"
)

// ReasonLazy (Lazy): the image's layers are remote snapshots of a
// lazy-pulling snapshotter.
const ReasonLazy = "LazySnapshotter"

// lazyAdvice is what to do about an image a lazy snapshotter left remote.
const lazyAdvice = "pods of it need the registry until every file was read once, so prepull does not count it present. To have it whole on the node, publish it without a lazy-loading index (eStargz TOC, SOCI index), or give the nodes that must start pods without a registry a snapshotter that unpacks in full (overlayfs)"

// lazy says why the present image ref is not whole on the node — some of
// its layers are remote snapshots a lazy-pulling snapshotter mounts from
// the registry — or "" when it is, or when the runtime cannot tell. A
// snapshotter that fetches on first read gives no account of what it
// fetched since, so an image with a remote layer stays Lazy.
func (r *Reconciler) lazy(ctx context.Context, ref string) string {
	li, ok := r.Store.(cri.LayerInspector)
	if !ok {
		return ""
	}
	remote, total, snapshotter, err := li.RemoteLayers(ctx, ref)
	if err != nil {
		// An artifact has no layers to unpack; a runtime that cannot say
		// leaves the image as its pull left it.
		ctrl.LoggerFrom(ctx).V(1).Info("Layers not inspected", "image", ref, "error", err.Error())
		return ""
	}
	if remote == 0 {
		return ""
	}
	return fmt.Sprintf("%d of the image's %d layers are remote snapshots of the snapshotter %s, fetched from the registry on first read: %s", remote, total, snapshotter, lazyAdvice)
}
