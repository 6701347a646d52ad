package prepulllist

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// statusBatch is how long NodeImageSet status changes are gathered before
// the lists they concern are reconciled, all of them together: a list's
// status is aggregated at most about once per statusBatch however many
// agents write, and lists reconciled back to back reach each node in one
// write of the fleet.
const statusBatch = 200 * time.Millisecond

// CacheOptions returns o with what the reconciler needs of the manager's
// cache: NodeImageSets cached as metadata only, their status kept as the
// fleet's compact reports; Nodes with their labels, taints and the node
// gate's condition only; no managed fields.
// The manager that SetupWithManager is given must use them.
func (r *Reconciler) CacheOptions(o cache.Options) cache.Options {
	if o.ByObject == nil {
		o.ByObject = map[client.Object]cache.ByObject{}
	}
	o.DefaultTransform = cache.TransformStripManagedFields()
	o.ByObject[&prepullv1.NodeImageSet{}] = cache.ByObject{Transform: func(obj any) (any, error) {
		if set, ok := obj.(*prepullv1.NodeImageSet); ok {
			return r.fleetOf().observe(set), nil
		}
		return obj, nil
	}}
	o.ByObject[&corev1.Node{}] = cache.ByObject{Transform: func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			// Of the status, only the node gate's own condition.
			var conds []corev1.NodeCondition
			for _, c := range n.Status.Conditions {
				if c.Type == prepullv1.NodeConditionImagesReady {
					conds = append(conds, c)
				}
			}
			return &corev1.Node{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
				Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
				CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp,
			}, Spec: corev1.NodeSpec{Taints: n.Spec.Taints, Unschedulable: n.Spec.Unschedulable},
				Status: corev1.NodeStatus{Conditions: conds}}, nil
		}
		return obj, nil
	}}
	for _, k := range workloadKinds {
		o.ByObject[k.object()] = cache.ByObject{Transform: slimWorkload}
	}
	o.ByObject[&corev1.ServiceAccount{}] = cache.ByObject{Transform: slimServiceAccount}
	o.ByObject[&corev1.Namespace{}] = cache.ByObject{Transform: slimNamespace}
	r.cached = true
	return o
}

// fleetOf is the fleet, made on first use: the cache's transform may run
// before SetupWithManager.
func (r *Reconciler) fleetOf() *fleet {
	r.once.Do(func() {
		if r.Clock == nil {
			r.Clock = clock.RealClock{}
		}
		// The fleet's write pacing is real time, whatever clock the
		// rollout reads.
		r.fleet = newFleet(clock.RealClock{})
	})
	return r.fleet
}

// noteReport records that node's agent reported: the lists that own an
// entry there are reconciled at the next statusBatch.
func (r *Reconciler) noteReport(node string) {
	r.lists.note(r.fleet.owners(node), true)
}

// noteLists records lists to reconcile at the next statusBatch.
func (r *Reconciler) noteLists(lists []types.NamespacedName) {
	r.lists.note(lists, false)
}

// wakeNow queues lists at once, so that they are reconciled right after
// the reconcile under way and their changes reach each node in the same
// write; those the queue has no room for go with the next statusBatch.
// It never waits.
func (r *Reconciler) wakeNow(lists []types.NamespacedName) {
	for _, l := range lists {
		select {
		case r.wake <- event.GenericEvent{Object: &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name}}}:
		default:
			r.noteLists([]types.NamespacedName{l})
		}
	}
}

// releaseReported queues, every statusBatch, every list due since the last
// time, together, after a new view of the agents' reports when they
// reported.
func (r *Reconciler) releaseReported(ctx context.Context) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		lists, reported := r.lists.takeDue()
		if reported {
			r.fleet.snapshot()
		}
		for _, l := range lists {
			select {
			case r.wake <- event.GenericEvent{Object: &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name}}}:
			case <-ctx.Done():
				return
			}
		}
	}, statusBatch)
	return nil
}

// allLists enqueues every list: a node came, went or changed its labels.
func (r *Reconciler) allLists(ctx context.Context, _ client.Object) []reconcile.Request {
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "List PrePullLists for a node change")
		return nil
	}
	out := make([]reconcile.Request, 0, len(lists.Items))
	for _, l := range lists.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&l)})
	}
	return out
}

// discoveryChanged passes the events of objects discovery reads that
// matter to it: created, deleted, relabelled, or with another part (a pod
// template, a service account's pull secrets). A Pod's or a workload's
// status changes, which are most of their updates, are not.
func discoveryChanged[T any](part func(client.Object) T) predicate.Funcs {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		if e.ObjectOld == nil || e.ObjectNew == nil {
			return true
		}
		return !apiequality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) ||
			!apiequality.Semantic.DeepEqual(part(e.ObjectOld), part(e.ObjectNew))
	}}
}

// listsDiscoveringIn are the lists with spec.workloads in o's namespace.
func (r *Reconciler) listsDiscoveringIn(ctx context.Context, o client.Object) []reconcile.Request {
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range lists.Items {
		if lists.Items[i].Spec.Workloads != nil {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&lists.Items[i])})
		}
	}
	return out
}
