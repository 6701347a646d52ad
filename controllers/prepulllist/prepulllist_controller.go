package prepulllist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/lru"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodegate"
)

// Finalizer holds a deleted PrePullList until every node's agent has taken
// its pins off and applied onDelete, or the node is gone.
const Finalizer = "prepull.io/release"

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
	// SecretPoll is how often the Secrets lists name are read again, to
	// notice a rotation; zero means DefaultSecretPoll.
	SecretPoll time.Duration
	// TokenAudiences are the audiences the endpoint makes service-account
	// tokens for (Tokens): those of the nodes' credential provider plugins
	// that take one. Empty, it makes none.
	TokenAudiences []string
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
	// lists is what the reconciler keeps of each list between reconciles.
	lists listBook
	// described keeps what digests name at the registry (describe).
	described *lru.Cache
	// Peers, when set, routes images between nodes (routes.go).
	Peers  *PeerRouting
	router router
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
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
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
			r.forget(req.NamespacedName)
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
	orig := l
	selector, err := l.Spec.Selector()
	if err != nil {
		return ctrl.Result{}, r.invalid(ctx, l, fmt.Errorf("spec.nodeSelector: %w", err))
	}
	// l as this reconcile sees it: status.discovered as its workloads are.
	disc, graceEnds, err := r.discovered(ctx, l)
	if err != nil {
		return ctrl.Result{}, r.invalid(ctx, l, err)
	}
	lv := *l
	lv.Status.Discovered, lv.Status.DiscoveredPullSecrets = disc.status, disc.secretNames
	l = &lv
	selector, pol, stop, err := r.withinPolicy(ctx, orig, l, selector)
	if stop || err != nil {
		return ctrl.Result{}, err
	}
	if err := r.tags.collect(ctx, r.tags.use(client.ObjectKeyFromObject(l), usesOf(l))); err != nil {
		return ctrl.Result{}, err
	}
	secretsVersion, creds, secretErr := r.mirrorSecrets(ctx, l, disc.secrets)
	if secretErr != nil {
		ctrl.LoggerFrom(ctx).Info("Pull secrets unavailable", "error", secretErr.Error())
	}
	nodes, err := r.nodes(ctx, selector)
	if err != nil {
		return ctrl.Result{}, err
	}
	prev := r.lists.previous(orig)
	selected, probeNode := selection(nodes)
	targets, images, awaiting, next, resolveErr := r.resolve(ctx, l, readerOf(l, secretsVersion, creds), creds, nodes, probeNode)
	if why, retry, err := r.describe(ctx, l, pol, targets, images, creds); why != "" || err != nil {
		res, err := r.refuseUnless(ctx, orig, why, err)
		if retry && err == nil {
			res.RequeueAfter = sizeRetry
		}
		return res, err
	}
	verifyKeys := r.checkSignatures(ctx, l, prev.Images, targets, images, creds)

	placeDiscovered(l, targets, disc.discovery, cmp.Or(r.StartupTaint, prepullv1.DefaultStartupTaint))
	p := r.planFor(l, targets, selected)
	p.probeNode = probeNode
	out := r.apply(p, nodes)
	r.publishGate(l, out)
	status := listStatus(listFacts{
		gen: l.Generation, old: l.Status, images: images, awaiting: awaiting, out: out,
		secretsVersion: secretsVersion, secretErr: secretErr, verifyKeys: verifyKeys,
		discovered: l.Status.Discovered, discoveredSecrets: l.Status.DiscoveredPullSecrets,
		discovery: disc.found(l), namespace: l.Namespace, exposure: exposureOf(nodes, len(creds) > 0),
		verify: l.Spec.Verify != nil, onNodes: archiveOf(l) != nil || l.Spec.Resolution == prepullv1.ResolveOnNode,
	})
	if !graceEnds.IsZero() {
		next = minTime(next, graceEnds)
	}
	if err := r.writeStatus(ctx, orig, prev, status); err != nil {
		return ctrl.Result{}, errors.Join(resolveErr, err)
	}
	if resolveErr != nil {
		return ctrl.Result{}, resolveErr
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
		return ctrl.Result{}, r.patchStatus(ctx, l, releasingStatus(l, out.held))
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
	r.forget(client.ObjectKeyFromObject(l))
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
	out := make([]*node, 0, len(nodeList.Items))
	seen := make(map[string]bool, len(nodeList.Items))
	for i := range nodeList.Items {
		n := &nodeList.Items[i]
		if !n.DeletionTimestamp.IsZero() {
			continue
		}
		seen[n.Name] = true
		nd := &node{name: n.Name, selected: selector.Matches(labels.Set(n.Labels)),
			tainted: r.tainted(n), created: n.CreationTimestamp.Time, obj: n}
		if rec := f.nodes[n.Name]; rec != nil {
			nd.batched, nd.latest = f.reported(rec), rec.report
		}
		out = append(out, nd)
	}
	// A node the fleet knows of, by its spec or its object, that is not
	// among the nodes any more.
	var gone []string
	for name := range f.nodes {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	f.mu.Unlock()
	for _, name := range gone {
		set := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if err := r.Delete(ctx, set); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete node image set of deleted node %s: %w", name, err)
		}
		f.mu.Lock()
		f.forget(name)
		f.mu.Unlock()
	}
	return out, nil
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
		rec := f.record(n.name)
		n.spec = rec.spec
	}
	out := p.run(nodes)
	for _, n := range nodes {
		if !n.changed {
			continue
		}
		rec := f.nodes[n.name]
		rec.own, rec.plan = n.own, nil
		if n.urgent || p.deleting {
			// A deleted list's finalizer waits for its entries to go.
			f.markDirty(rec)
		} else {
			f.markTidy(rec)
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

// archiveOf is l's archive source, or nil.
func archiveOf(l *prepullv1.PrePullList) *prepullv1.ArchiveSource {
	if l.Spec.Source == nil {
		return nil
	}
	return l.Spec.Source.Archive
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

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// addRunnables adds what runs beside the reconciles, on the leader: the
// fleet's writer and sweep, the status batches, and the routing of images
// between nodes when peers are on.
func (r *Reconciler) addRunnables(mgr ctrl.Manager) error {
	log := mgr.GetLogger().WithName("fleet")
	grace := r.PlanGrace
	if grace <= 0 {
		grace = DefaultPlanGrace
	}
	runs := []manager.RunnableFunc{
		func(ctx context.Context) error { return r.fleet.flush(ctrl.LoggerInto(ctx, log), r.Client, r.nodeUID) },
		func(ctx context.Context) error {
			r.fleet.sweep(ctrl.LoggerInto(ctx, log), r.Client, grace)
			return nil
		},
		r.releaseReported,
	}
	if r.Peers != nil {
		runs = append(runs, func(ctx context.Context) error {
			return r.route(ctrl.LoggerInto(ctx, mgr.GetLogger().WithName("routes")))
		})
	}
	for _, run := range runs {
		if err := mgr.Add(run); err != nil {
			return err
		}
	}
	return nil
}

// SetupWithManager registers the reconciler, its watches and the fleet's
// writer.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if !r.cached {
		return errors.New("the manager's cache must be built with Reconciler.CacheOptions")
	}
	r.fleetOf()
	r.tags, r.described = newTagStore(r.Client), lru.New(describedDigests)
	r.wake = make(chan event.GenericEvent, 1024)
	if err := r.addRunnables(mgr); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &prepullv1.PrePullList{}, pullSecretIndex, indexPullSecrets); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return r.pollSourceSecrets(ctrl.LoggerInto(ctx, mgr.GetLogger().WithName("secrets")), mgr.GetConfig())
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
		Watches(&prepullv1.PrePullPolicy{}, handler.EnqueueRequestsFromMapFunc(r.listsGovernedBy)).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.listsGovernedBy), builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&prepullv1.PrePullList{}, handler.EnqueueRequestsFromMapFunc(r.neighbours), builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, heldBytesChanged{}))).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{}))
	for _, k := range workloadKinds {
		b = b.Watches(k.object(), handler.EnqueueRequestsFromMapFunc(r.listsDiscoveringIn), builder.WithPredicates(discoveryChanged(k.template)))
	}
	b = b.Watches(&corev1.ServiceAccount{}, handler.EnqueueRequestsFromMapFunc(r.listsDiscoveringIn), builder.WithPredicates(discoveryChanged(pullSecretsOf)))
	return b.Named("prepulllist").Complete(r)
}
