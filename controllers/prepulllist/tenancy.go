package prepulllist

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/tenancy"
)

// +kubebuilder:rbac:groups=prepull.io,resources=prepullpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// govern returns the PrePullPolicy l is held to (nil when there is none:
// no PrePullPolicy exists, and nothing bounds the lists), or why l does
// nothing under it: its namespace's policy does not exist, it does not
// grant a field of l's spec, or a quota of it leaves l out. l carries the
// images it discovered.
func (r *Reconciler) govern(ctx context.Context, l *prepullv1.PrePullList) (*prepullv1.PrePullPolicy, string, error) {
	pol, missing, err := r.policyOf(ctx, l.Namespace)
	if pol == nil || err != nil {
		return nil, missing, err
	}
	if v := tenancy.Check(pol, l); len(v) > 0 {
		return pol, strings.Join(v, "; "), nil
	}
	q := pol.Spec.Quotas
	if q.Lists == nil && q.ImagesPerNode == nil {
		return pol, "", nil
	}
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.InNamespace(l.Namespace)); err != nil {
		return nil, "", err
	}
	all := []*prepullv1.PrePullList{l}
	for i := range lists.Items {
		if o := &lists.Items[i]; o.UID != l.UID {
			all = append(all, o)
		}
	}
	why := tenancy.Quotas(pol, all, imagesOf)[client.ObjectKeyFromObject(l)]
	return pol, why, nil
}

// policyOf returns the PrePullPolicy namespace ns is held to; nil when no
// PrePullPolicy exists, or, with why, when the one ns names does not.
func (r *Reconciler) policyOf(ctx context.Context, ns string) (*prepullv1.PrePullPolicy, string, error) {
	var pols prepullv1.PrePullPolicyList
	if err := r.List(ctx, &pols); err != nil {
		return nil, "", fmt.Errorf("list PrePullPolicies: %w", err)
	}
	if len(pols.Items) == 0 {
		return nil, "", nil
	}
	n := &corev1.Namespace{}
	if err := r.Get(ctx, client.ObjectKey{Name: ns}, n); err != nil {
		return nil, "", fmt.Errorf("namespace %s: %w", ns, err)
	}
	name := tenancy.PolicyName(n)
	i := slices.IndexFunc(pols.Items, func(p prepullv1.PrePullPolicy) bool { return p.Name == name })
	if i < 0 {
		return nil, fmt.Sprintf("namespace %s is held to PrePullPolicy %s (its %s label, or %s without one), which does not exist: its lists do nothing until it does",
			ns, name, prepullv1.PolicyLabel, prepullv1.DefaultPolicy), nil
	}
	return &pols.Items[i], "", nil
}

// withinPolicy holds l (orig, as cached, with its discovered images) to
// its namespace's policy, which it returns: its selector narrowed to the
// policy's nodes, or, stop, l refused (refuse) or its policy's selector
// invalid.
func (r *Reconciler) withinPolicy(ctx context.Context, orig, l *prepullv1.PrePullList, selector labels.Selector) (labels.Selector, *prepullv1.PrePullPolicy, bool, error) {
	pol, refusal, err := r.govern(ctx, l)
	if err != nil {
		return nil, nil, true, err
	}
	if refusal != "" {
		_, err := r.refuse(ctx, orig, refusal)
		return nil, nil, true, err
	}
	if selector, err = withinGrant(pol, l, selector); err != nil {
		return nil, nil, true, r.invalid(ctx, orig, err)
	}
	return selector, pol, false, nil
}

// withinGrant restricts selector to pol's nodes, and leaves out, with a
// message in status.discovered, the images l discovered whose repository
// pol does not grant.
func withinGrant(pol *prepullv1.PrePullPolicy, l *prepullv1.PrePullList, selector labels.Selector) (labels.Selector, error) {
	if pol == nil {
		return selector, nil
	}
	for i := range l.Status.Discovered {
		d := &l.Status.Discovered[i]
		if d.Message == "" && !tenancy.Granted(pol.Spec.Repositories, d.Image) {
			d.Message = truncate(fmt.Sprintf("PrePullPolicy %s does not grant its repository (spec.repositories: %s): not pulled", pol.Name, strings.Join(pol.Spec.Repositories, ", ")), 1024)
		}
	}
	return tenancy.Restrict(pol, selector)
}

// refuse makes l do nothing, for cause (naming the policy and the field):
// its entries leave every node, it holds no node and no tag, and its
// status says why. A change of the policy, of the namespace's label or of
// the namespace's other lists requeues it.
func (r *Reconciler) refuse(ctx context.Context, l *prepullv1.PrePullList, cause string) (ctrl.Result, error) {
	key := client.ObjectKeyFromObject(l)
	if err := r.tags.collect(ctx, r.tags.use(key, nil)); err != nil {
		return ctrl.Result{}, err
	}
	nodes, err := r.nodes(ctx, labels.Nothing())
	if err != nil {
		return ctrl.Result{}, err
	}
	r.dropGate(key)
	r.apply(r.planFor(l, nil, 0), nodes)
	st := stoppedStatus(l, prepullv1.ReasonPolicyRefused, cause)
	r.emit(l, transitions(l.Status, st))
	return ctrl.Result{}, r.patchStatus(ctx, l, st)
}

// refuseUnless refuses l for cause, unless err says the cause is not
// known.
func (r *Reconciler) refuseUnless(ctx context.Context, l *prepullv1.PrePullList, cause string, err error) (ctrl.Result, error) {
	if err != nil {
		return ctrl.Result{}, err
	}
	return r.refuse(ctx, l, cause)
}

// listsGovernedBy enqueues the lists a PrePullPolicy or a Namespace change
// may concern: every list.
func (r *Reconciler) listsGovernedBy(ctx context.Context, o client.Object) []reconcile.Request {
	if _, ok := o.(*corev1.Namespace); ok {
		return r.listsIn(ctx, o.GetName())
	}
	return r.allLists(ctx, o)
}

// neighbours enqueues the other lists of o's namespace when its policy has
// quotas: a list created or deleted changes which of them the quotas
// serve.
func (r *Reconciler) neighbours(ctx context.Context, o client.Object) []reconcile.Request {
	pol, _, err := r.policyOf(ctx, o.GetNamespace())
	if err != nil || pol == nil || pol.Spec.Quotas == (prepullv1.PolicyQuotas{}) {
		return nil
	}
	return r.listsIn(ctx, o.GetNamespace())
}

func (r *Reconciler) listsIn(ctx context.Context, ns string) []reconcile.Request {
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.InNamespace(ns)); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(lists.Items))
	for i := range lists.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&lists.Items[i])})
	}
	return out
}

// heldBytesChanged passes a list whose status changed the bytes its images
// hold (tenancy.Bytes reads them), so that its namespace's younger lists
// are served again.
type heldBytesChanged struct {
	predicate.Funcs
}

func (heldBytesChanged) Update(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*prepullv1.PrePullList)
	n, ok2 := e.ObjectNew.(*prepullv1.PrePullList)
	return ok1 && ok2 && heldBytes(o) != heldBytes(n)
}

func heldBytes(l *prepullv1.PrePullList) int64 {
	var n int64
	for _, img := range l.Status.Images {
		n += img.Bytes
	}
	return n
}

// slimNamespace keeps of a Namespace what govern reads: its name and
// labels.
func slimNamespace(obj any) (any, error) {
	n, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{TypeMeta: n.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
	}}, nil
}
