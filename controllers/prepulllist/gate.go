package prepulllist

import (
	"cmp"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodegate"
)

// publishGate tells the node gate what a gating list finds missing on its
// nodes; a list without a gate gates nothing.
func (r *Reconciler) publishGate(l *prepullv1.PrePullList, out outcome) {
	if r.Gates == nil {
		return
	}
	if l.Spec.NodeGate == nil || !l.DeletionTimestamp.IsZero() {
		r.Gates.Drop(client.ObjectKeyFromObject(l))
		return
	}
	missing := out.missing
	if missing == nil {
		missing = map[string][]string{}
	}
	r.Gates.Publish(client.ObjectKeyFromObject(l), l.Generation, missing)
}

func (r *Reconciler) dropGate(key types.NamespacedName) {
	if r.Gates != nil {
		r.Gates.Drop(key)
	}
}

// tainted reports whether n carries the startup taint.
func (r *Reconciler) tainted(n *corev1.Node) bool {
	return nodegate.Tainted(n, cmp.Or(r.StartupTaint, prepullv1.DefaultStartupTaint))
}
