package prepulllist

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/pullsecret"
)

// Finalizer holds a deleted PrePullList until every node's agent has taken
// its pins off and applied onDelete, or the node is gone.
const Finalizer = "prepull.io/release"

// resolutionRetry is how soon a failed resolution is tried again.
const resolutionRetry = 30 * time.Second

// Reconciler reconciles PrePullLists into NodeImageSet specs and back into
// PrePullList status.
type Reconciler struct {
	client.Client
	// APIReader reads what the cache does not hold: pull secrets, which are
	// read one by one in the lists' namespaces and never watched.
	APIReader client.Reader
	// Namespace is the controller's own namespace, which holds the mirrored
	// pull secrets.
	Namespace string
	Resolver  Resolver
	Recorder  events.EventRecorder
	Clock     clock.PassiveClock

	// computed is the status last computed per list UID. The cache a
	// reconcile reads the list from can lag behind the controller's own
	// last write; resolutions and events start from this instead, so that a
	// tag is resolved once per refresh and an event fires once per
	// transition.
	mu       sync.Mutex
	computed map[types.UID]prepullv1.PrePullListStatus
}

// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists/finalizers,verbs=update
// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",namespace=prepull-system,resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=prepull-system,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Reconcile brings one PrePullList's nodes and status up to date.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	l := &prepullv1.PrePullList{}
	if err := r.Get(ctx, req.NamespacedName, l); err != nil {
		if apierrors.IsNotFound(err) {
			forgetNodes(req.Namespace, req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !l.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, l)
	}
	if controllerutil.AddFinalizer(l, Finalizer) {
		if err := r.Update(ctx, l); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	return r.reconcileNormal(ctx, l)
}

func (r *Reconciler) reconcileNormal(ctx context.Context, l *prepullv1.PrePullList) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	secretNames, creds, secretErr := r.mirrorSecrets(ctx, l)
	if secretErr != nil {
		log.Info("Pull secrets unavailable", "error", secretErr.Error())
	}
	nodes, err := r.nodes(ctx, l)
	if err != nil {
		return ctrl.Result{}, err
	}
	prev := r.previousStatus(l)
	selected, probeNode := selection(nodes)
	targets, images, next := r.resolve(ctx, l, prev.Images, creds, nodes, probeNode)

	p := r.planFor(l, targets, secretNames, selected)
	p.probeNode = probeNode
	out := p.run(nodes)
	for i := range images {
		if c, ok := out.perImage[images[i].Image]; ok {
			images[i].NodesReady, images[i].NodesFailed = c.ready, c.failed
		}
	}
	writeErr := r.writeNodes(ctx, nodes)

	status := buildStatus(l.Status, l.Generation, images, out, secretErr)
	r.remember(l, status)
	r.recordTransitions(l, prev, status)
	recordNodes(l, status.Nodes)
	if err := r.patchStatus(ctx, l, status); err != nil {
		return ctrl.Result{}, errors.Join(writeErr, err)
	}
	if writeErr != nil {
		return ctrl.Result{}, writeErr
	}
	return ctrl.Result{RequeueAfter: max(next.Sub(r.Clock.Now()), time.Second)}, nil
}

func (r *Reconciler) reconcileDelete(ctx context.Context, l *prepullv1.PrePullList) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(l, Finalizer) {
		return ctrl.Result{}, nil
	}
	nodes, err := r.nodes(ctx, l)
	if err != nil {
		return ctrl.Result{}, err
	}
	p := r.planFor(l, nil, nil, 0)
	p.deleting = true
	out := p.run(nodes)
	if err := r.writeNodes(ctx, nodes); err != nil {
		return ctrl.Result{}, err
	}
	if out.held > 0 {
		ctrl.LoggerFrom(ctx).Info("Waiting for agents to release the list", "nodes", out.held)
		// NodeImageSet status changes requeue the list.
		return ctrl.Result{}, nil
	}
	if err := r.deleteMirrors(ctx, l, nil); err != nil {
		return ctrl.Result{}, err
	}
	controllerutil.RemoveFinalizer(l, Finalizer)
	if err := r.Update(ctx, l); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("remove finalizer: %w", err)
	}
	forgetNodes(l.Namespace, l.Name)
	r.forget(l.UID)
	return ctrl.Result{}, nil
}

// nodes returns every node that exists or has a NodeImageSet, with its
// NodeImageSet (empty if none) and whether l selects it. NodeImageSets of
// deleted nodes are deleted: a deleted node never holds a list back.
func (r *Reconciler) nodes(ctx context.Context, l *prepullv1.PrePullList) ([]*node, error) {
	selector := labels.Everything()
	if l.Spec.NodeSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(l.Spec.NodeSelector)
		if err != nil {
			return nil, reconcile.TerminalError(fmt.Errorf("spec.nodeSelector: %w", err))
		}
		selector = s
	}
	var nodeList corev1.NodeList
	if err := r.List(ctx, &nodeList); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var sets prepullv1.NodeImageSetList
	if err := r.List(ctx, &sets); err != nil {
		return nil, fmt.Errorf("list node image sets: %w", err)
	}
	byName := map[string]*prepullv1.NodeImageSet{}
	for i := range sets.Items {
		byName[sets.Items[i].Name] = &sets.Items[i]
	}
	var out []*node
	seen := map[string]bool{}
	for i := range nodeList.Items {
		n := &nodeList.Items[i]
		if !n.DeletionTimestamp.IsZero() {
			continue
		}
		seen[n.Name] = true
		set := byName[n.Name]
		if set == nil {
			set = newNodeImageSet(n)
		}
		out = append(out, &node{
			name: n.Name, selected: selector.Matches(labels.Set(n.Labels)),
			spec: &set.Spec, status: &set.Status, obj: set, orig: set.DeepCopy(),
		})
	}
	for name, set := range byName {
		if seen[name] {
			continue
		}
		if err := r.Delete(ctx, set); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete node image set of deleted node %s: %w", name, err)
		}
	}
	return out, nil
}

func newNodeImageSet(n *corev1.Node) *prepullv1.NodeImageSet {
	return &prepullv1.NodeImageSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID,
			}},
		},
	}
}

// writeNodes writes every NodeImageSet spec the plan changed: a merge patch
// of the spec, which the agents' status writes never conflict with.
func (r *Reconciler) writeNodes(ctx context.Context, nodes []*node) error {
	var errs []error
	for _, n := range nodes {
		if n.obj == nil || equality.Semantic.DeepEqual(n.obj.Spec, n.orig.Spec) {
			continue
		}
		if n.obj.ResourceVersion == "" {
			if len(n.obj.Spec.Images) == 0 {
				continue
			}
			if err := r.Create(ctx, n.obj); err != nil {
				errs = append(errs, fmt.Errorf("create node image set %s: %w", n.name, err))
			}
			continue
		}
		if err := r.Patch(ctx, n.obj, client.MergeFrom(n.orig)); err != nil {
			errs = append(errs, fmt.Errorf("update node image set %s: %w", n.name, err))
		}
	}
	return errors.Join(errs...)
}

// planFor returns l's rollout plan.
func (r *Reconciler) planFor(l *prepullv1.PrePullList, targets []target, secrets []string, selected int) *plan {
	ro := l.Spec.Rollout
	retain, onDelete := l.Spec.Retain, l.Spec.OnDelete
	if retain == "" {
		retain = prepullv1.RetainPinned
	}
	if onDelete == "" {
		onDelete = prepullv1.DeleteUnpin
	}
	p := &plan{
		owner: prepullv1.ImageOwner{
			List: ownerName(l), Retain: retain, OnDelete: onDelete,
			PullSecrets: secrets, Timeout: ro.Timeout, BackoffLimit: ro.BackoffLimit,
			Archive: archiveOf(l),
		},
		maxConcurrent: maxConcurrentNodes(ro.MaxConcurrentNodes, selected),
	}
	p.targets = targets
	for _, t := range targets {
		if t.probe {
			p.probes = append(p.probes, t)
		}
	}
	return p
}

// resolve returns l's targets with their digests, the images' status, and
// when a tag is next due for resolution. A tag is resolved once per refresh
// interval; in between, the digest in status is used. A failed resolution
// keeps the digest known before, so nodes keep what they have.
func (r *Reconciler) resolve(ctx context.Context, l *prepullv1.PrePullList, prev []prepullv1.ImageResolution, creds []pullsecret.Credential, nodes []*node, probeNode string) ([]target, []prepullv1.ImageResolution, time.Time) {
	log := ctrl.LoggerFrom(ctx)
	now := r.Clock.Now()
	refresh := time.Hour
	if l.Spec.RefreshInterval != nil {
		refresh = l.Spec.RefreshInterval.Duration
	}
	next := now.Add(refresh)
	var targets []target
	var images []prepullv1.ImageResolution
	for _, entry := range l.Spec.Images {
		res := prepullv1.ImageResolution{Image: entry.Image}
		w, err := parseWant(entry.Image)
		if err != nil {
			res.Message = err.Error()
			images = append(images, res)
			continue
		}
		res.Warning = w.advice
		old := resolutionOf(prev, entry.Image)
		t := target{want: w}
		switch {
		case w.Digest != "":
			t.digest = w.Digest
		case l.Spec.Resolution == prepullv1.ResolveOnNode || archiveOf(l) != nil:
			// The probe node pulls the tag, or imports it from the archive;
			// each pull it reports newer than the last resolution resolves
			// the tag again. Once a refresh is due, the probe is asked to
			// pull again; an archive holds the same bytes until the list
			// names another one, which the probe imports at once.
			t.probe = true
			t.digest = old.Digest
			res.ResolvedAt = old.ResolvedAt
			if d, at := probedDigest(nodes, probeNode, w.Tag); d != "" && (old.ResolvedAt == nil || old.ResolvedAt.Before(at)) {
				t.digest, res.ResolvedAt = d, at
			}
			if res.ResolvedAt != nil && t.digest != "" && archiveOf(l) == nil {
				due := metav1.NewTime(nextRefresh(res.ResolvedAt.Time, refresh))
				t.resolveAfter = &due
				next = minTime(next, due.Time)
			}
			if t.digest == "" {
				verb := "pull it and report its digest"
				if a := archiveOf(l); a != nil {
					verb = "import it from " + a.Location() + " and report its digest"
				}
				res.Message = fmt.Sprintf("waiting for node %s to %s: %s", probeNode, verb, w.Tag)
				if probeNode == "" {
					res.Message = "no node is selected to resolve the tag on"
				}
			}
		case old.Digest != "" && old.ResolvedAt != nil && now.Before(nextRefresh(old.ResolvedAt.Time, refresh)):
			t.digest, res.ResolvedAt = old.Digest, old.ResolvedAt
			next = minTime(next, nextRefresh(old.ResolvedAt.Time, refresh))
		default:
			d, err := r.Resolver.Resolve(ctx, w.Tag, creds)
			if err != nil {
				resolutions.WithLabelValues("failed").Inc()
				log.Info("Tag resolution failed", "image", entry.Image, "error", err.Error())
				t.digest, res.ResolvedAt = old.Digest, old.ResolvedAt
				res.Message = truncate(err.Error(), 1024)
				next = minTime(next, now.Add(resolutionRetry))
			} else {
				resolutions.WithLabelValues("resolved").Inc()
				t.digest, res.ResolvedAt = d, &metav1.Time{Time: now}
			}
		}
		res.Digest = t.digest
		targets = append(targets, t)
		images = append(images, res)
	}
	return targets, images, next
}

// archiveOf is l's archive source, or nil.
func archiveOf(l *prepullv1.PrePullList) *prepullv1.ArchiveSource {
	if l.Spec.Source == nil {
		return nil
	}
	return l.Spec.Source.Archive
}

func (r *Reconciler) forget(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.computed, uid)
}

// resolutionOf is image's entry in images, or an empty one.
func resolutionOf(images []prepullv1.ImageResolution, image string) prepullv1.ImageResolution {
	for _, i := range images {
		if i.Image == image {
			return i
		}
	}
	return prepullv1.ImageResolution{}
}

// selection counts the selected nodes and names the one that resolves tags
// for a list with resolution Node: the first selected node by name, so that
// the choice is stable.
func selection(nodes []*node) (selected int, probeNode string) {
	for _, n := range nodes {
		if !n.selected {
			continue
		}
		selected++
		if probeNode == "" || n.name < probeNode {
			probeNode = n.name
		}
	}
	return selected, probeNode
}

// probedDigest is the digest the probe node reported for a tag entry, and
// when it pulled it.
func probedDigest(nodes []*node, probeNode, tag string) (string, *metav1.Time) {
	for _, n := range nodes {
		if n.name != probeNode {
			continue
		}
		if st := findStatus(n.status, tag); st != nil && st.Phase == prepullv1.PhasePresent && st.PulledAt != nil {
			return st.Digest, st.PulledAt
		}
	}
	return "", nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// previousStatus is the status this reconciler last computed for l, or l's
// status when it has computed none since it started.
func (r *Reconciler) previousStatus(l *prepullv1.PrePullList) prepullv1.PrePullListStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.computed[l.UID]; ok {
		return st
	}
	return l.Status
}

// remember records the status just computed for l.
func (r *Reconciler) remember(l *prepullv1.PrePullList, st prepullv1.PrePullListStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.computed == nil {
		r.computed = map[types.UID]prepullv1.PrePullListStatus{}
	}
	r.computed[l.UID] = *st.DeepCopy()
}

// recordTransitions emits Events for what changed: the list became Ready, a
// tag moved, an image failed to resolve, nodes failed, advice about tags.
func (r *Reconciler) recordTransitions(l *prepullv1.PrePullList, prev, st prepullv1.PrePullListStatus) {
	if r.Recorder == nil {
		return
	}
	if meta.IsStatusConditionTrue(st.Conditions, prepullv1.ConditionReady) && !meta.IsStatusConditionTrue(prev.Conditions, prepullv1.ConditionReady) {
		c := meta.FindStatusCondition(st.Conditions, prepullv1.ConditionReady)
		r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, "Ready", "Rollout", "%s", c.Message)
	}
	for _, img := range st.Images {
		old := resolutionOf(prev.Images, img.Image)
		if old.Digest != "" && img.Digest != "" && old.Digest != img.Digest {
			r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, "TagMoved", "Resolve", "%s moved from %s to %s; rolling out", img.Image, old.Digest, img.Digest)
		}
		if img.Message != "" && old.Message != img.Message {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonResolutionFailed, "Resolve", "%s: %s", img.Image, img.Message)
		}
		if img.Warning != "" && old.Warning == "" {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, "MutableTag", "Validate", "%s: %s", img.Image, img.Warning)
		}
	}
	if st.FailureCount > prev.FailureCount && len(st.Failures) > 0 {
		f := st.Failures[0]
		r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonNodesFailed, "Pull",
			"%d image pulls failed on nodes; first: node %s, image %s: %s", st.FailureCount, f.Node, f.Image, f.Message)
	}
}

// patchStatus writes status when it changed.
func (r *Reconciler) patchStatus(ctx context.Context, l *prepullv1.PrePullList, st prepullv1.PrePullListStatus) error {
	if equality.Semantic.DeepEqual(l.Status, st) {
		return nil
	}
	l.Status = st
	if err := r.Status().Update(ctx, l); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	return nil
}

// SetupWithManager registers the reconciler and its watches.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&prepullv1.PrePullList{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.allLists),
			builder.WithPredicates(nodeChanged())).
		Watches(&prepullv1.NodeImageSet{}, handler.EnqueueRequestsFromMapFunc(ownersOf)).
		Named("prepulllist").
		Complete(r)
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

// ownersOf enqueues the lists that own an entry of a NodeImageSet.
func ownersOf(_ context.Context, o client.Object) []reconcile.Request {
	set, ok := o.(*prepullv1.NodeImageSet)
	if !ok {
		return nil
	}
	var out []reconcile.Request
	for _, e := range set.Spec.Images {
		for _, ow := range e.Owners {
			ns, name, ok := strings.Cut(ow.List, "/")
			req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
			if ok && !slices.Contains(out, req) {
				out = append(out, req)
			}
		}
	}
	return out
}

// nodeChanged passes node creations, deletions and label changes.
func nodeChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return !equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}
