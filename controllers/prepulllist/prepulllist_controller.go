package prepulllist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodegate"
	"prepull.io/prepull/pullsecret"
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
	// Signatures reads images' signatures, for lists with spec.verify.
	Signatures SignatureReader
	Recorder   events.EventRecorder
	Clock      clock.PassiveClock
	// PlanGrace is how long an ImagePlan that no NodeImageSet names is
	// kept; zero means DefaultPlanGrace.
	PlanGrace time.Duration
	// Gates, when set, is where gating lists publish what is missing on
	// their nodes, for the node gate; StartupTaint is the taint it removes.
	Gates        *nodegate.Book
	StartupTaint string

	// fleet is every node's spec as the controller wants it; tags are the
	// cluster's tag resolutions. wake enqueues lists whose tag moved.
	fleet      *fleet
	once       sync.Once
	tags       *tagStore
	signatures signatureBook
	wake       chan event.GenericEvent
	cached     bool
	// reported are the lists whose nodes' agents reported since the last
	// statusBatch.
	reportMu  sync.Mutex
	reported  map[types.NamespacedName]bool
	viewStale bool

	// computed is the status last computed per list UID. The cache a
	// reconcile reads the list from can lag behind the controller's own
	// last write; resolutions and events start from this instead, so that a
	// tag is resolved once per refresh and an event fires once per
	// transition.
	mu       sync.Mutex
	computed map[types.UID]prepullv1.PrePullListStatus
	// reconciled is set once a list's status was written.
	reconciled atomic.Bool
}

// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists/finalizers,verbs=update
// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=prepull.io,resources=tagresolutions,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=prepull.io,resources=imageplans,verbs=get;list;create;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",namespace=prepull-system,resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=prepull-system,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Reconcile brings one PrePullList's nodes and status up to date.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.fleet.begin()
	defer r.fleet.end()
	if err := r.tags.index(ctx); err != nil {
		return ctrl.Result{}, err
	}
	l := &prepullv1.PrePullList{}
	if err := r.Get(ctx, req.NamespacedName, l); err != nil {
		if apierrors.IsNotFound(err) {
			forgetNodes(req.Namespace, req.Name)
			r.dropGate(req.NamespacedName)
			return ctrl.Result{}, r.tags.collect(ctx, r.tags.use(req.NamespacedName, nil))
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
	orig := l
	selector, err := l.Spec.Selector()
	if err != nil {
		return ctrl.Result{}, r.invalid(ctx, l, fmt.Errorf("spec.nodeSelector: %w", err))
	}
	// The list as this reconcile sees it: with what its workloads hold now
	// in status.discovered, which the rest reads its images from.
	disc, graceEnds, err := r.discovered(ctx, l)
	if err != nil {
		return ctrl.Result{}, r.invalid(ctx, l, err)
	}
	lv := *l
	lv.Status.Discovered, lv.Status.DiscoveredPullSecrets = disc.status, disc.secretNames
	l = &lv
	if err := r.tags.collect(ctx, r.tags.use(client.ObjectKeyFromObject(l), usesOf(l))); err != nil {
		return ctrl.Result{}, err
	}
	secretsVersion, creds, secretErr := r.mirrorSecrets(ctx, l, disc.secrets)
	if secretErr != nil {
		log.Info("Pull secrets unavailable", "error", secretErr.Error())
	}
	nodes, err := r.nodes(ctx, selector)
	if err != nil {
		return ctrl.Result{}, err
	}
	prev := r.previousStatus(orig)
	selected, probeNode := selection(nodes)
	targets, images, next, resolveErr := r.resolve(ctx, l, creds, nodes, probeNode)
	verifyKeys := r.checkSignatures(ctx, l, prev.Images, targets, images, creds)

	placeDiscovered(l, targets, disc.discovery, cmp.Or(r.StartupTaint, prepullv1.DefaultStartupTaint))
	p := r.planFor(l, targets, selected)
	p.probeNode = probeNode
	out := r.apply(p, nodes)
	r.publishGate(l, out)
	for i := range images {
		if c, ok := out.perImage[images[i].Image]; ok {
			images[i].NodesReady, images[i].NodesFailed = c.ready, c.failed
		}
	}
	writeErr := resolveErr

	status := buildStatus(l.Status, l.Generation, images, out, secretErr)
	status.PullSecretsVersion, status.VerifyKeys = secretsVersion, verifyKeys
	status.Discovered, status.DiscoveredPullSecrets = l.Status.Discovered, l.Status.DiscoveredPullSecrets
	if l.Spec.Workloads != nil {
		meta.SetStatusCondition(&status.Conditions, discoveredCondition(l, disc.discovery))
	} else {
		meta.RemoveStatusCondition(&status.Conditions, prepullv1.ConditionDiscovered)
	}
	if l.Spec.Verify != nil {
		meta.SetStatusCondition(&status.Conditions, verifiedCondition(l.Generation, images, archiveOf(l) != nil || l.Spec.Resolution == prepullv1.ResolveOnNode))
	} else {
		meta.RemoveStatusCondition(&status.Conditions, prepullv1.ConditionVerified)
	}
	if !graceEnds.IsZero() {
		next = minTime(next, graceEnds)
	}
	r.remember(l, status)
	r.recordTransitions(l, prev, status)
	recordNodes(l, status.Nodes)
	if err := r.patchStatus(ctx, orig, status); err != nil {
		return ctrl.Result{}, errors.Join(writeErr, err)
	}
	r.reconciled.Store(true)
	if writeErr != nil {
		return ctrl.Result{}, writeErr
	}
	return ctrl.Result{RequeueAfter: max(next.Sub(r.Clock.Now()), time.Second)}, nil
}

func (r *Reconciler) reconcileDelete(ctx context.Context, l *prepullv1.PrePullList) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(l, Finalizer) {
		return ctrl.Result{}, nil
	}
	// A list going selects no node, whatever its selector says.
	nodes, err := r.nodes(ctx, labels.Nothing())
	if err != nil {
		return ctrl.Result{}, err
	}
	// A list going holds no node.
	r.dropGate(client.ObjectKeyFromObject(l))
	p := r.planFor(l, nil, 0)
	p.deleting = true
	out := r.apply(p, nodes)
	if out.held > 0 {
		ctrl.LoggerFrom(ctx).Info("Waiting for agents to release the list", "nodes", out.held)
		// NodeImageSet status changes requeue the list.
		return ctrl.Result{}, nil
	}
	if r.fleet.pending() {
		// The specs that drop the list are not written yet: the finalizer
		// goes only once no NodeImageSet names the list.
		return ctrl.Result{RequeueAfter: 10 * flushQuiet}, nil
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
	return ctrl.Result{}, r.tags.collect(ctx, r.tags.use(client.ObjectKeyFromObject(l), nil))
}

// nodes returns every node that exists, with its spec in the fleet and
// whether selector selects it. NodeImageSets of deleted nodes are deleted:
// a deleted node never holds a list back.
func (r *Reconciler) nodes(ctx context.Context, selector labels.Selector) ([]*node, error) {
	if err := r.fleet.load(ctx, r.APIReader); err != nil {
		return nil, err
	}
	var nodeList corev1.NodeList
	if err := r.List(ctx, &nodeList, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	f := r.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*node, 0, len(nodeList.Items))
	seen := make(map[string]bool, len(nodeList.Items))
	for i := range nodeList.Items {
		n := &nodeList.Items[i]
		if !n.DeletionTimestamp.IsZero() {
			continue
		}
		seen[n.Name] = true
		out = append(out, &node{
			name: n.Name, selected: selector.Matches(labels.Set(n.Labels)),
			status: f.reported(n.Name), live: f.status[n.Name],
			tainted: r.tainted(n), created: n.CreationTimestamp.Time, obj: n,
		})
	}
	// A node the fleet knows of, by its spec or its object, that is not
	// among the nodes any more.
	gone := map[string]bool{}
	for name := range f.specs {
		gone[name] = !seen[name]
	}
	for name := range f.exists {
		gone[name] = !seen[name]
	}
	for name, isGone := range gone {
		if !isGone {
			continue
		}
		set := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if err := r.Delete(ctx, set); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete node image set of deleted node %s: %w", name, err)
		}
		f.forget(name)
	}
	return out, nil
}

// invalid reports a spec that admission let through and the controller
// cannot act on: the list says which field and why (Ready and Progressing
// False, Degraded True, reason InvalidSpec) and a Warning event says so;
// nothing changes on any node until the spec is fixed, and the list can
// still be deleted. The error is not retried: a spec change requeues.
func (r *Reconciler) invalid(ctx context.Context, l *prepullv1.PrePullList, cause error) error {
	msg := cause.Error()
	st := *l.Status.DeepCopy()
	st.ObservedGeneration = l.Generation
	if st.ReadyNodes == "" {
		st.ReadyNodes = "-"
	}
	if len(st.Images) == 0 {
		for _, i := range imagesOf(l) {
			st.Images = append(st.Images, prepullv1.ImageResolution{Image: i})
		}
		st.ImageCount = int32(len(st.Images))
	}
	for _, c := range []struct {
		typ    string
		status metav1.ConditionStatus
	}{{prepullv1.ConditionReady, metav1.ConditionFalse}, {prepullv1.ConditionProgressing, metav1.ConditionFalse}, {prepullv1.ConditionDegraded, metav1.ConditionTrue}} {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: c.typ, Status: c.status, ObservedGeneration: l.Generation,
			Reason: prepullv1.ReasonInvalidSpec, Message: msg})
	}
	if prev := meta.FindStatusCondition(l.Status.Conditions, prepullv1.ConditionDegraded); r.Recorder != nil && (prev == nil || prev.Reason != prepullv1.ReasonInvalidSpec || prev.Message != msg) {
		r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonInvalidSpec, "Validate", "%s", msg)
	}
	if err := r.patchStatus(ctx, l, st); err != nil {
		return err
	}
	return reconcile.TerminalError(cause)
}

// apply runs p over nodes and marks the nodes whose spec it changed for the
// fleet's next write.
func (r *Reconciler) apply(p *plan, nodes []*node) outcome {
	f := r.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	// The specs as they are now: a write since the nodes were listed may
	// have made a spec shared.
	for _, n := range nodes {
		n.spec, n.shared = f.spec(n.name)
	}
	out := p.run(nodes)
	for _, n := range nodes {
		if !n.changed {
			continue
		}
		f.setSpec(n.name, n.spec)
		if n.urgent || p.deleting {
			// A deleted list's finalizer waits for its entries to go.
			f.markDirty(n.name)
		} else {
			f.markTidy(n.name)
		}
	}
	return out
}

// Reconciled is a readiness check: a replica that is not the leader is
// ready (its caches are another check's); the leader once it reconciled a
// list, or when there is none to reconcile.
func (r *Reconciler) Reconciled(elected <-chan struct{}) healthz.Checker {
	return func(req *http.Request) error {
		select {
		case <-elected:
		default:
			return nil
		}
		if r.reconciled.Load() {
			return nil
		}
		var lists prepullv1.PrePullListList
		if err := r.List(req.Context(), &lists, client.Limit(1), client.UnsafeDisableDeepCopy); err != nil {
			return err
		}
		if len(lists.Items) == 0 {
			return nil
		}
		return errors.New("elected, and no PrePullList reconciled yet")
	}
}

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

// nodeUID is the UID of a node in the cache, which a new NodeImageSet's
// owner reference names.
func (r *Reconciler) nodeUID(name string) (types.UID, bool) {
	n := &corev1.Node{}
	if err := r.Get(context.Background(), client.ObjectKey{Name: name}, n); err != nil {
		return "", false
	}
	return n.UID, true
}

// planFor returns l's rollout plan.
func (r *Reconciler) planFor(l *prepullv1.PrePullList, targets []target, selected int) *plan {
	p := &plan{
		owner:         prepullv1.ImageOwner{List: intern(ownerName(l))},
		archive:       archiveOf(l),
		maxConcurrent: maxConcurrentNodes(l.Spec.Rollout.MaxConcurrentNodes, selected),
		gate:          l.Spec.NodeGate,
		now:           r.Clock.Now(),
	}
	for i := range targets {
		targets[i].share()
	}
	p.targets = targets
	for _, t := range targets {
		if t.probe {
			p.probes = append(p.probes, t)
		}
	}
	return p
}

// resolve returns l's targets with their digests, the images' status, when
// a tag is next due for resolution, and a failure to record a resolution.
// Each tag's digest is its TagResolution's, shared by every list naming it:
// resolved at the registry once per refresh for the cluster, or reported by
// a node. A failed resolution keeps the digest known before, so nodes keep
// what they have.
func (r *Reconciler) resolve(ctx context.Context, l *prepullv1.PrePullList, creds []pullsecret.Credential, nodes []*node, probeNode string) ([]target, []prepullv1.ImageResolution, time.Time, error) {
	now := r.Clock.Now()
	next := now.Add(prepullv1.DefaultRefresh)
	var targets []target
	var images []prepullv1.ImageResolution
	var errs []error
	names := imagesOf(l)
	wants, bad := make([]want, len(names)), make([]error, len(names))
	tags := map[string]*tagResult{}
	for i, image := range names {
		wants[i], bad[i] = parseWant(image)
		if bad[i] == nil && wants[i].Digest == "" {
			tags[wants[i].Tag] = &tagResult{}
		}
	}
	r.resolveTags(ctx, l, tags, creds, nodes, probeNode)
	for i, image := range names {
		res := prepullv1.ImageResolution{Image: image}
		w := wants[i]
		if bad[i] != nil {
			res.Message = bad[i].Error()
			images = append(images, res)
			continue
		}
		res.Warning = w.advice
		t := target{want: w}
		if w.Digest != "" {
			t.digest = w.Digest
		} else {
			tr := tags[w.Tag]
			if tr.err != nil {
				errs = append(errs, tr.err)
			}
			next = minTime(next, tr.due)
			if rec := tr.rec; rec != nil {
				t.digest, res.ResolvedAt, res.Message = rec.Status.Digest, rec.Status.ResolvedAt, truncate(rec.Status.Message, 1024)
			}
			if tr.pol.source != prepullv1.SourceRegistry {
				t.probe = true
				if tr.pol.source == prepullv1.SourceNode && res.ResolvedAt != nil && t.digest != "" {
					due := metav1.NewTime(nextRefresh(res.ResolvedAt.Time, tr.pol.refresh))
					t.resolveAfter = &due
				}
				if t.digest == "" {
					res.Message = probeWait(l, probeNode, w.Tag)
				}
			}
		}
		res.Digest = t.digest
		targets = append(targets, t)
		images = append(images, res)
	}
	return targets, images, next, errors.Join(errs...)
}

// tagResult is what resolveTag returned for one tag.
type tagResult struct {
	rec *prepullv1.TagResolution
	pol tagUse
	due time.Time
	err error
}

// resolveWorkers is how many of a list's tags are resolved at once: a
// refresh of many tags is not a sequence of registry round trips and
// record writes.
const resolveWorkers = 8

// resolveTags brings each of tags, which l names, up to date (resolveTag),
// several at a time, and records each one's result in tags.
func (r *Reconciler) resolveTags(ctx context.Context, l *prepullv1.PrePullList, tags map[string]*tagResult, creds []pullsecret.Credential, nodes []*node, probeNode string) {
	var g errgroup.Group
	g.SetLimit(resolveWorkers)
	for tag, res := range tags {
		g.Go(func() error {
			res.rec, res.pol, res.due, res.err = r.resolveTag(ctx, l, tag, creds, nodes, probeNode)
			return nil
		})
	}
	_ = g.Wait()
}

// resolveTag brings tag's TagResolution up to date as far as l can: at the
// registry when it is due and the registry wins, or from what l's probe node
// reported. It returns the record, how the tag is resolved for every list,
// when it is next due, and a failure to write the record. Lists whose digest
// it changed are woken.
func (r *Reconciler) resolveTag(ctx context.Context, l *prepullv1.PrePullList, tag string, creds []pullsecret.Credential, nodes []*node, probeNode string) (*prepullv1.TagResolution, tagUse, time.Time, error) {
	now := r.Clock.Now()
	pol := r.tags.policy(tag)
	rec, err := r.tags.get(ctx, tag)
	if err != nil {
		return nil, pol, now.Add(resolutionRetry), err
	}
	rec, next, err := r.refreshTag(ctx, tag, rec, pol, creds, nodes, probeNode)
	return rec, pol, next, err
}

// refreshTag resolves tag again when it is due under pol: at the registry,
// or from what the probe node reported.
func (r *Reconciler) refreshTag(ctx context.Context, tag string, rec *prepullv1.TagResolution, pol tagUse, creds []pullsecret.Credential, nodes []*node, probeNode string) (*prepullv1.TagResolution, time.Time, error) {
	now := r.Clock.Now()
	var st prepullv1.TagResolutionStatus
	if rec != nil {
		st = *rec.Status.DeepCopy()
	}
	if pol.source != prepullv1.SourceRegistry {
		d, at := probedDigest(nodes, probeNode, tag)
		if d == "" || (st.Source == pol.source && st.ResolvedAt != nil && !st.ResolvedAt.Before(at)) {
			if st.ResolvedAt != nil && pol.source == prepullv1.SourceNode {
				return rec, nextRefresh(st.ResolvedAt.Time, pol.refresh), nil
			}
			return rec, now.Add(prepullv1.DefaultRefresh), nil
		}
		st = prepullv1.TagResolutionStatus{Digest: d, Source: pol.source, ResolvedAt: at}
		return r.record(ctx, tag, rec, st, now.Add(pol.refresh))
	}
	due := rec == nil || st.Source != prepullv1.SourceRegistry || st.ResolvedAt == nil || !now.Before(nextRefresh(st.ResolvedAt.Time, pol.refresh))
	if due && st.Message != "" && st.AttemptedAt != nil && now.Before(st.AttemptedAt.Add(resolutionRetry)) {
		// It failed a moment ago, for this list or another: wait.
		return rec, st.AttemptedAt.Add(resolutionRetry), nil
	}
	if !due {
		return rec, nextRefresh(st.ResolvedAt.Time, pol.refresh), nil
	}
	d, err := r.Resolver.Resolve(ctx, tag, creds)
	st.AttemptedAt = &metav1.Time{Time: now}
	if err != nil {
		resolutions.WithLabelValues("failed").Inc()
		ctrl.LoggerFrom(ctx).Info("Tag resolution failed", "image", tag, "error", err.Error())
		st.Message = truncate(err.Error(), 1024)
		return r.record(ctx, tag, rec, st, now.Add(resolutionRetry))
	}
	resolutions.WithLabelValues("resolved").Inc()
	st = prepullv1.TagResolutionStatus{Digest: d, Source: prepullv1.SourceRegistry, ResolvedAt: st.AttemptedAt, AttemptedAt: st.AttemptedAt}
	return r.record(ctx, tag, rec, st, now.Add(pol.refresh))
}

// record writes tag's new status and wakes every list naming the tag when
// its digest changed.
func (r *Reconciler) record(ctx context.Context, tag string, rec *prepullv1.TagResolution, st prepullv1.TagResolutionStatus, next time.Time) (*prepullv1.TagResolution, time.Time, error) {
	moved := rec == nil || rec.Status.Digest != st.Digest || rec.Status.Message != st.Message
	out, err := r.tags.put(ctx, tag, rec, st)
	if err != nil {
		return out, minTime(next, r.Clock.Now().Add(resolutionRetry)), err
	}
	if moved {
		lists := r.tags.listsNaming(tag)
		go func() {
			for _, l := range lists {
				r.wake <- event.GenericEvent{Object: &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name}}}
			}
		}()
	}
	return out, next, nil
}

// probeWait says what a tag resolved on a node is waiting for.
func probeWait(l *prepullv1.PrePullList, probeNode, tag string) string {
	if probeNode == "" {
		return "no node is selected to resolve the tag on"
	}
	verb := "pull it and report its digest"
	if a := archiveOf(l); a != nil {
		verb = "import it from " + a.Location() + " and report its digest"
	}
	return fmt.Sprintf("waiting for node %s to %s: %s", probeNode, verb, tag)
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
		if st := n.status.find(tag); st != nil && st.phase == prepullv1.PhasePresent && st.extra != nil && st.extra.pulledAt != nil {
			return st.extra.digest, st.extra.pulledAt
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
	ready := meta.IsStatusConditionTrue(st.Conditions, prepullv1.ConditionReady) && !meta.IsStatusConditionTrue(prev.Conditions, prepullv1.ConditionReady)
	if ready {
		rollouts.WithLabelValues(l.Namespace, l.Name).Inc()
	}
	if r.Recorder == nil {
		return
	}
	if ready {
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
		if s := img.Signature; s != nil && (old.Signature == nil || old.Signature.Digest != s.Digest || old.Signature.Verified != s.Verified || old.Signature.Reason != s.Reason) {
			if s.Verified {
				r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, prepullv1.ReasonSignaturesVerified, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			} else {
				r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, s.Reason, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			}
		}
		if img.Warning != "" && old.Warning == "" {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, "MutableTag", "Validate", "%s: %s", img.Image, img.Warning)
		}
	}
	for _, d := range st.Discovered {
		if d.Warning == "" {
			continue
		}
		if i := slices.IndexFunc(prev.Discovered, func(o prepullv1.DiscoveredImage) bool { return o.Image == d.Image }); i < 0 || prev.Discovered[i].Warning != d.Warning {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonPullPolicyAlways, "Discover", "%s: %s", d.Image, d.Warning)
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
	err := r.Status().Update(ctx, l)
	if apierrors.IsConflict(err) {
		// The cache l came from lags behind the controller's own last
		// write of it: read it again and write once more.
		cur := &prepullv1.PrePullList{}
		if err = r.APIReader.Get(ctx, client.ObjectKeyFromObject(l), cur); err == nil {
			cur.Status = st
			err = r.Status().Update(ctx, cur)
		}
	}
	if err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	return nil
}

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

// SetupWithManager registers the reconciler, its watches and the fleet's
// writer.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if !r.cached {
		return errors.New("the manager's cache must be built with Reconciler.CacheOptions")
	}
	r.fleetOf()
	r.tags = newTagStore(r.Client)
	r.wake = make(chan event.GenericEvent, 1024)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return r.fleet.flush(ctrl.LoggerInto(ctx, mgr.GetLogger().WithName("fleet")), r.Client, r.nodeUID)
	})); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		grace := r.PlanGrace
		if grace <= 0 {
			grace = DefaultPlanGrace
		}
		r.fleet.sweep(ctrl.LoggerInto(ctx, mgr.GetLogger().WithName("fleet")), r.Client, grace)
		return nil
	})); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(r.releaseReported)); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &prepullv1.PrePullList{}, pullSecretIndex, indexPullSecrets); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return r.watchSourceSecrets(ctrl.LoggerInto(ctx, mgr.GetLogger().WithName("secrets")), mgr.GetConfig())
	})); err != nil {
		return err
	}
	statusChanged := handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.noteReport(e.Object.GetName())
		},
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.noteReport(e.ObjectNew.GetName())
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.fleet.gone(e.Object.GetName())
			r.noteReport(e.Object.GetName())
		},
	}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&prepullv1.PrePullList{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.allLists),
			builder.WithPredicates(nodegate.NodeChanged())).
		Watches(&prepullv1.NodeImageSet{}, statusChanged).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{}))
	for _, k := range workloadKinds {
		b = b.Watches(k.object(), handler.EnqueueRequestsFromMapFunc(r.listsDiscoveringIn), builder.WithPredicates(discoveryChanged(k.template)))
	}
	b = b.Watches(&corev1.ServiceAccount{}, handler.EnqueueRequestsFromMapFunc(r.listsDiscoveringIn), builder.WithPredicates(discoveryChanged(pullSecretsOf)))
	return b.Named("prepulllist").Complete(r)
}

// noteReport records that node's agent reported: the lists that own an
// entry there are reconciled at the next statusBatch.
func (r *Reconciler) noteReport(node string) {
	owners := r.fleet.owners(node)
	r.reportMu.Lock()
	r.viewStale = true
	r.reportMu.Unlock()
	r.noteLists(owners)
}

// noteLists records lists to reconcile at the next statusBatch.
func (r *Reconciler) noteLists(lists []types.NamespacedName) {
	if len(lists) == 0 {
		return
	}
	r.reportMu.Lock()
	defer r.reportMu.Unlock()
	if r.reported == nil {
		r.reported = map[types.NamespacedName]bool{}
	}
	for _, l := range lists {
		r.reported[l] = true
	}
}

// releaseReported queues, every statusBatch, every list whose nodes
// reported since the last time, together.
func (r *Reconciler) releaseReported(ctx context.Context) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		r.reportMu.Lock()
		lists, stale := r.reported, r.viewStale
		r.reported, r.viewStale = nil, false
		r.reportMu.Unlock()
		if stale {
			r.fleet.snapshot()
		}
		for l := range lists {
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
