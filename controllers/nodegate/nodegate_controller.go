// Package nodegate holds new nodes from work until their images are
// present: nodes register with a startup taint, and this reconciler of
// Nodes removes that one taint once every PrePullList with a nodeGate that
// selects the node is present there, or its timeout passed. It keeps the
// prepull.io/ImagesReady condition on every node a gating list selects.
//
// What "present on the node" means is the list reconciler's to say: it
// publishes, in a Book, the images each gating list finds missing on each
// node it selects. This reconciler writes only the taint and the condition
// of Nodes, never a list: the lists count their waiting nodes themselves.
//
// A node that no gating list selects is never held. A node whose gate
// opened is never tainted again, whatever it loses later; a taint that
// comes back (Karpenter restores startup taints removed before it
// initialized the node) is removed again while the node qualifies.
package nodegate

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// Reconciler opens the gates of nodes.
type Reconciler struct {
	// Client reads Nodes and PrePullLists from the manager's cache, which
	// must keep the Nodes' labels, taints, creation time and the
	// prepull.io/ImagesReady condition (the list reconciler's CacheOptions
	// do).
	client.Client
	Book *Book
	// Taint is the key of the startup taint; any effect.
	Taint string
	// ConditionOnly keeps only the prepull.io/ImagesReady condition: no
	// taint is touched, for a cluster whose own readiness tool (a
	// NodeReadinessRule, Karpenter's startup taints) holds nodes on that
	// condition. At a gating list's timeout the condition turns True
	// (reason GateTimedOut), so that a registry out of reach never strands
	// a node.
	ConditionOnly bool
	Recorder      events.EventRecorder
	Clock         clock.Clock

	mu sync.Mutex
	// nodes is what this process did to each node, dropped when the node
	// is gone.
	nodes map[string]*gateRec
}

// gateRec is what the gate did to one node: the condition it last wrote
// (the cache may not show it yet), and whether it opened the gate of the
// node of uid, for the event and the metric, once each.
type gateRec struct {
	written *corev1.NodeCondition
	uid     types.UID
	opened  bool
}

// record is node's record, made empty. The caller holds r.mu.
func (r *Reconciler) record(node string) *gateRec {
	if r.nodes == nil {
		r.nodes = map[string]*gateRec{}
	}
	rec, ok := r.nodes[node]
	if !ok {
		rec = &gateRec{}
		r.nodes[node] = rec
	}
	return rec
}

// gating is one gating list's verdict on one node.
type gating struct {
	list     *prepullv1.PrePullList
	missing  []string
	observed bool
	// due is when the list's timeout opens the gate.
	due time.Time
}

func (g gating) ready() bool { return g.observed && len(g.missing) == 0 }

// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=nodes/status,verbs=patch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile opens node's gate when it qualifies and keeps its condition.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	n := &corev1.Node{}
	if err := r.Get(ctx, req.NamespacedName, n); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	gates, err := r.gatesOf(ctx, n)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	// Until every gating list published its verdict on the node (after a
	// restart, or for a node just registered), the condition keeps what it
	// says: a verdict not reached yet is no news.
	if !slices.ContainsFunc(gates, func(g gating) bool { return !g.observed }) {
		if err := r.setCondition(ctx, n, condition(gates, now, r.ConditionOnly)); err != nil {
			return ctrl.Result{}, err
		}
	}
	open, next := true, time.Time{}
	for _, g := range gates {
		if !g.ready() && now.Before(g.due) {
			open = false
			if next.IsZero() || g.due.Before(next) {
				next = g.due
			}
		}
	}
	if !open {
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}
	if r.ConditionOnly {
		return ctrl.Result{}, nil
	}
	err = r.openGate(ctx, n, gates, now)
	if apierrors.IsConflict(err) {
		// Someone changed the node meanwhile: look again at what they left.
		return ctrl.Result{RequeueAfter: 200 * time.Millisecond}, nil
	}
	return ctrl.Result{}, err
}

// gatesOf is the verdict of every gating list that selects n.
func (r *Reconciler) gatesOf(ctx context.Context, n *corev1.Node) ([]gating, error) {
	// Read only, and done for every node: no copy of every list each time.
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list prepull lists: %w", err)
	}
	var out []gating
	for i := range lists.Items {
		l := &lists.Items[i]
		if l.Spec.NodeGate == nil || !l.DeletionTimestamp.IsZero() {
			continue
		}
		selector, err := l.Spec.Selector()
		if err != nil {
			// The list's status says so; it gates nothing meanwhile.
			continue
		}
		if !selector.Matches(labels.Set(n.Labels)) {
			continue
		}
		missing, observed := r.Book.Missing(client.ObjectKeyFromObject(l), l.Generation, n.Name)
		out = append(out, gating{list: l, missing: missing, observed: observed,
			due: n.CreationTimestamp.Add(l.Spec.NodeGate.GateTimeout())})
	}
	slices.SortFunc(out, func(a, b gating) int {
		return strings.Compare(a.list.Namespace+"/"+a.list.Name, b.list.Namespace+"/"+b.list.Name)
	})
	return out, nil
}

// openGate removes the startup taint from n, touching no other taint, with
// n's resource version as a precondition, so that a concurrent edit of the
// taints is never lost: it fails, and the next look sees it.
func (r *Reconciler) openGate(ctx context.Context, n *corev1.Node, gates []gating, now time.Time) error {
	if !Tainted(n, r.Taint) {
		return nil
	}
	orig := n.DeepCopy()
	n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == r.Taint })
	if err := r.Patch(ctx, n, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return err
		}
		return fmt.Errorf("remove taint %s from node %s: %w", r.Taint, n.Name, err)
	}
	log := ctrl.LoggerFrom(ctx)
	r.mu.Lock()
	rec := r.record(n.Name)
	first := !rec.opened || rec.uid != n.UID
	rec.opened, rec.uid = true, n.UID
	r.mu.Unlock()
	if !first {
		log.Info("Removed the startup taint again", "taint", r.Taint)
		return nil
	}
	by := "images"
	for _, g := range gates {
		if g.ready() {
			continue
		}
		by = "timeout"
		r.Recorder.Eventf(g.list, n, corev1.EventTypeWarning, "NodeGateTimedOut", "OpenGate",
			"node %s: gate opened after %s without %s", n.Name, g.list.Spec.NodeGate.GateTimeout(), missingText(g))
	}
	if len(gates) == 0 {
		by = "ungated"
	}
	gateOpenSeconds.WithLabelValues(by).Observe(now.Sub(n.CreationTimestamp.Time).Seconds())
	log.Info("Opened the gate", "taint", r.Taint, "by", by, "sinceRegistration", now.Sub(n.CreationTimestamp.Time).String())
	return nil
}

// condition is the ImagesReady condition gates give; nil when no gating
// list selects the node.
func condition(gates []gating, now time.Time, conditionOnly bool) *corev1.NodeCondition {
	if len(gates) == 0 {
		return nil
	}
	var waiting, late []string
	for _, g := range gates {
		if g.ready() {
			continue
		}
		text := fmt.Sprintf("%s/%s: %s", g.list.Namespace, g.list.Name, missingText(g))
		if now.Before(g.due) {
			waiting = append(waiting, text)
		} else {
			late = append(late, text)
		}
	}
	c := &corev1.NodeCondition{Type: prepullv1.NodeConditionImagesReady, Status: corev1.ConditionTrue,
		Reason: prepullv1.ReasonImagesPresent, Message: "every gating list's images are present"}
	switch {
	case len(waiting) > 0:
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, prepullv1.ReasonImagesMissing, "waiting for "+strings.Join(append(waiting, late...), "; ")
	case len(late) > 0 && conditionOnly:
		// What holds the node on this condition lets it go.
		c.Reason, c.Message = prepullv1.ReasonGateTimedOut, "the gate's timeout passed without "+strings.Join(late, "; ")
	case len(late) > 0:
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, prepullv1.ReasonGateTimedOut, "the gate opened at the timeout without "+strings.Join(late, "; ")
	}
	if len(c.Message) > 1024 {
		c.Message = c.Message[:1021] + "..."
	}
	return c
}

func missingText(g gating) string {
	if !g.observed {
		return "its images (not observed on the node yet)"
	}
	return strings.Join(g.missing, ", ")
}

// setCondition writes want on n's status when it differs from what n has,
// keeping the transition time while the status stays; a nil want replaces
// a condition left from a gating list that went with NotGated. n is the
// cached node, which keeps this condition.
func (r *Reconciler) setCondition(ctx context.Context, n *corev1.Node, want *corev1.NodeCondition) error {
	var have *corev1.NodeCondition
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == prepullv1.NodeConditionImagesReady {
			have = &n.Status.Conditions[i]
		}
	}
	if want == nil {
		if have == nil || have.Reason == prepullv1.ReasonNotGated {
			return nil
		}
		want = &corev1.NodeCondition{Type: prepullv1.NodeConditionImagesReady, Status: corev1.ConditionTrue,
			Reason: prepullv1.ReasonNotGated, Message: "no PrePullList with a nodeGate selects this node"}
	}
	var last corev1.NodeCondition
	r.mu.Lock()
	rec := r.nodes[n.Name]
	known := rec != nil && rec.written != nil
	if known {
		last = *rec.written
	}
	r.mu.Unlock()
	if (have != nil && same(*have, *want)) || (known && same(last, *want)) {
		// The cache may not show our last write yet.
		return nil
	}
	c := *want
	c.LastHeartbeatTime = metav1.NewTime(r.Clock.Now())
	c.LastTransitionTime = c.LastHeartbeatTime
	if have != nil && have.Status == c.Status {
		c.LastTransitionTime = have.LastTransitionTime
	} else if known && last.Status == c.Status {
		c.LastTransitionTime = last.LastTransitionTime
	}
	// A strategic merge patch of this one condition merges by type: the
	// kubelet's own conditions stay as they are.
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{c}}})
	if err != nil {
		return err
	}
	if err := r.Status().Patch(ctx, n.DeepCopy(), client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("set condition %s of node %s: %w", c.Type, n.Name, err)
	}
	r.remember(n.Name, c)
	return nil
}

func same(a, b corev1.NodeCondition) bool {
	return a.Status == b.Status && a.Reason == b.Reason && a.Message == b.Message
}

func (r *Reconciler) remember(node string, c corev1.NodeCondition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record(node).written = &c
}

func (r *Reconciler) forget(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.nodes, node)
}

// Tainted reports whether n carries a taint of key, whatever its effect.
func Tainted(n *corev1.Node, key string) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
}

// NodeChanged passes a Node's creation, deletion, and updates that change
// its labels (what lists select) or taints (what the gate holds): not the
// kubelet's status heartbeats.
func NodeChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
			return !equality.Semantic.DeepEqual(o.Spec.Taints, n.Spec.Taints) || !labels.Equals(o.Labels, n.Labels)
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// SetupWithManager registers the reconciler: it looks at a node when it
// registers, when its labels or taints change, and when a gating list's
// verdict on it changes.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Taint == "" {
		r.Taint = prepullv1.DefaultStartupTaint
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&corev1.Node{}, builder.WithPredicates(NodeChanged())).
		WatchesRawSource(r.Book.source()).
		Named("nodegate").
		Complete(r)
}
