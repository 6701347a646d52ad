package nodeimageset

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageplan"
)

// Defaults of the Reconciler's tunables, which are the agent's flags'.
const (
	DefaultMaxConcurrentPulls = 3
	DefaultStatusInterval     = 2 * time.Second
	DefaultResyncInterval     = 30 * time.Second
	DefaultBackoffBase        = 5 * time.Second
	DefaultBackoffMax         = 5 * time.Minute
	DefaultDoctorInterval     = 10 * time.Minute
)

// Reconciler reconciles the node's runtime to its NodeImageSet.
type Reconciler struct {
	client.Client
	// APIReader reads pull secrets one by one in Namespace; they are never
	// cached.
	APIReader client.Reader
	// NodeName is the node this agent serves; its NodeImageSet has its name.
	NodeName string
	// Namespace holds the pull secrets the controller mirrored.
	Namespace string
	Images    cri.ImageService
	Store     cri.Store
	// Runtime names the runtime, for status.
	Runtime string
	Clock   clock.Clock

	// MaxConcurrentPulls bounds the pulls under way at once.
	MaxConcurrentPulls int
	// StatusInterval is the least time between two status writes.
	StatusInterval time.Duration
	// ResyncInterval is how often everything is verified again.
	ResyncInterval time.Duration
	// BackoffBase and BackoffMax shape the wait between pull attempts.
	BackoffBase, BackoffMax time.Duration
	// DiskBudget is the fraction of the image filesystem (0 < f ≤ 1) past
	// which no pull starts; 0 means no budget. The agent's default stays
	// below the kubelet's disk thresholds (doctor.KubeletDiskLimit).
	DiskBudget float64
	// FsUsage reports a filesystem's used and total bytes; nil means statfs.
	FsUsage func(path string) (used, total uint64, err error)
	// Doctor checks the node's runtime configuration (package doctor), for
	// status; nil reports no checks. It runs beside the reconciler, when the
	// agent starts and then every DoctorInterval.
	Doctor func(context.Context) []prepullv1.RuntimeCheck
	// Peers, when set, fetches images from peer agents first, and serves
	// the node's to them (ServePeers).
	Peers *Peers
	// CredentialVerification, when set, reads the kubelet's image pull
	// credential verification policy, for status, with the checks.
	CredentialVerification func() string
	// Credentials finds the pull credentials of the node's images that
	// their lists' pull secrets give; NodeCredentials, when set, those the
	// node itself has (its kubelet's credential provider plugins), for
	// images the secrets give none for.
	Credentials     Credentials
	NodeCredentials NodeCredentials
	DoctorInterval  time.Duration
	// KeepStrayPins leaves alone pins whose owner no spec entry names. Only
	// for several agents sharing one runtime, as in tests: an agent owns its
	// node's runtime.
	KeepStrayPins bool
	// ArchiveDir is the directory that archive paths are relative to.
	ArchiveDir string
	// DownloadDir holds archives downloaded from a URL while they are
	// imported; empty means the system's temporary directory.
	DownloadDir string
	// Archives is where archives given by URL may be downloaded from, and
	// how much (the zero policy: https only, no loopback, link-local or
	// metadata address, bounded).
	Archives bundle.FetchPolicy

	// mu guards what follows and every imageState.
	mu        sync.Mutex
	collected time.Time
	images    map[string]*imageState
	dirty     map[string]bool
	measured  time.Time
	sem       chan struct{}
	sizing    chan struct{}
	wake      chan event.GenericEvent
	baseCtx   context.Context
	lastWrite time.Time
	fs        *prepullv1.ImageFilesystem
	fsMount   string
	checks    []prepullv1.RuntimeCheck
	verifies  string
	// archiveWants are, by archive SHA-256, the images of the spec that
	// come from it; archiveLocks serialize the imports of one archive; and
	// loaded records which references an import of an archive made.
	archiveWants map[string][]archiveWant
	// archiveClaims are, by reference, the lists whose archive entries
	// name it: those whose pins an archive may move it over.
	archiveClaims map[string][]string
	archiveLocks  map[string]*sync.Mutex
	// archiveTurn lets one archive at a time into DownloadDir.
	archiveTurn sync.Mutex
	loaded      map[string]map[string]bool
	// plans reads the ImagePlan the NodeImageSet names.
	plans *imageplan.Reader
}

// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets,verbs=get;list;watch
// +kubebuilder:rbac:groups=prepull.io,resources=prepulllists,verbs=get;list;watch
// +kubebuilder:rbac:groups=prepull.io,resources=imageplans,verbs=get
// +kubebuilder:rbac:groups=prepull.io,resources=nodeimagesets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",namespace=prepull-system,resources=configmaps,resourceNames=prepull-endpoint,verbs=get

// Reconcile makes the runtime hold what the node's NodeImageSet asks.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if req.Name != r.NodeName {
		return ctrl.Result{}, nil
	}
	set := &prepullv1.NodeImageSet{}
	if err := r.Get(ctx, req.NamespacedName, set); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	inline := make(map[string]bool, len(set.Spec.Images))
	for _, e := range set.Spec.Images {
		inline[e.Image] = true
	}
	if err := r.plans.Spec(ctx, set); err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	r.measureFilesystem(ctx, now)
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = map[string]bool{}
	r.mu.Unlock()
	soon := false
	entries := r.entries(ctx, set)
	r.noteArchives(entries)
	losers := tagConflicts(entries)
	for _, e := range entries {
		st := r.state(e.Image)
		if msg, ok := losers[e.Image]; ok {
			r.conflict(st, msg, now)
			continue
		}
		r.clearConflict(st, now)
		if r.ensure(ctx, e, &set.Status, now, dirty) {
			soon = true
		}
	}
	r.forgetOthers(set)
	r.collectStrayPins(ctx, set, now)
	return r.report(ctx, set, inline, now, r.requeueAfter(now, soon))
}

// requeueAfter is when Reconcile should look again: at the next resync;
// sooner while pulls are under way or the runtime is about to show a change
// (soon); and no later than the earliest retry.
func (r *Reconciler) requeueAfter(now time.Time, soon bool) time.Duration {
	requeue := r.ResyncInterval
	if r.busy() || soon {
		requeue = r.StatusInterval
	}
	if next := r.nextRetry(); !next.IsZero() && next.Sub(now) < requeue {
		requeue = max(next.Sub(now), 100*time.Millisecond)
	}
	return requeue
}

// report writes set's status if it changed, at most once per
// StatusInterval: a change within the interval is written when it ends.
// The one exception is the write that says the node has settled — every
// image Present, Failed or Released, where it was not — which goes at once:
// it is what the controller's pacing and the node gate wait for, and it
// comes once per rollout.
func (r *Reconciler) report(ctx context.Context, set *prepullv1.NodeImageSet, inline map[string]bool, now time.Time, requeue time.Duration) (ctrl.Result, error) {
	status := r.buildStatus(set, inline)
	if equality.Semantic.DeepEqual(set.Status, status) {
		return ctrl.Result{RequeueAfter: requeue}, nil
	}
	justSettled := settled(status) && !(settled(set.Status) && set.Status.ObservedGeneration == status.ObservedGeneration)
	if wait := r.StatusInterval - now.Sub(r.lastWrite); wait > 0 && !justSettled {
		return ctrl.Result{RequeueAfter: min(wait, requeue)}, nil
	}
	orig := set.DeepCopy()
	set.Status = status
	if err := r.Status().Patch(ctx, set, client.MergeFrom(orig)); err != nil {
		return ctrl.Result{}, fmt.Errorf("write status of node image set %s: %w", set.Name, err)
	}
	r.lastWrite = now
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// settled says no image of st is Pending or Pulling.
func settled(st prepullv1.NodeImageSetStatus) bool {
	for _, i := range st.Images {
		if i.Phase == prepullv1.PhasePending || i.Phase == prepullv1.PhasePulling {
			return false
		}
	}
	return true
}

// SetupWithManager registers the reconciler: it watches the node's own
// NodeImageSet and the lists that own its images, is woken by finished
// pulls and by the runtime's image events, and polls pull progress.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.setDefaults()
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		r.mu.Lock()
		r.baseCtx = ctrl.LoggerInto(ctx, mgr.GetLogger())
		r.mu.Unlock()
		go r.watchRuntime(ctx)
		go r.examine(ctx)
		r.pollProgress(ctx)
		return nil
	})); err != nil {
		return err
	}
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == r.NodeName })
	// A list's settings (retain, onDelete, rollout, pull secrets) are read
	// from the list: a change of one is a change of this node's work.
	ownNode := func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: r.NodeName}}}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&prepullv1.NodeImageSet{}, builder.WithPredicates(mine)).
		Watches(&prepullv1.PrePullList{}, handler.EnqueueRequestsFromMapFunc(ownNode), builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, secretsChanged())))
	if r.Peers != nil {
		// A route that changed (a holder listed, a grant given) ends the
		// wait of the image it routes now, not at the image's next look.
		b = b.Watches(&prepullv1.ImageRoute{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			route, ok := o.(*prepullv1.ImageRoute)
			if !ok {
				return nil
			}
			r.Peers.routeChanged(route.Spec.Image)
			return ownNode(ctx, o)
		}))
	}
	return b.WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{})).
		// The agent has one object to reconcile; a failed reconcile (the
		// API server away) is retried within statusRetryMax, not after the
		// default back-off's minutes, so that status catches up once the
		// API server is back.
		WithOptions(controller.Options{RateLimiter: workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](50*time.Millisecond, statusRetryMax)}).
		Named("nodeimageset").
		Complete(r)
}

// statusRetryMax is the longest wait before a failed reconcile is tried
// again.
const statusRetryMax = 5 * time.Second

// secretsChanged passes an update of a list whose pull secrets'
// credentials, or whose verification keys, changed: status the controller
// writes that the agent reads. It is or-ed with GenerationChangedPredicate,
// which passes creates and deletes.
func secretsChanged() predicate.Funcs {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*prepullv1.PrePullList)
		n, ok2 := e.ObjectNew.(*prepullv1.PrePullList)
		return ok1 && ok2 && (o.Status.PullSecretsVersion != n.Status.PullSecretsVersion ||
			!equality.Semantic.DeepEqual(o.Status.VerifyKeys, n.Status.VerifyKeys))
	}}
}

// setDefaults fills in the tunables left zero and makes the agent's state.
func (r *Reconciler) setDefaults() {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.MaxConcurrentPulls <= 0 {
		r.MaxConcurrentPulls = DefaultMaxConcurrentPulls
	}
	if r.StatusInterval <= 0 {
		r.StatusInterval = DefaultStatusInterval
	}
	if r.ResyncInterval <= 0 {
		r.ResyncInterval = DefaultResyncInterval
	}
	if r.BackoffBase <= 0 {
		r.BackoffBase = DefaultBackoffBase
	}
	if r.BackoffMax <= 0 {
		r.BackoffMax = DefaultBackoffMax
	}
	if r.DoctorInterval <= 0 {
		r.DoctorInterval = DefaultDoctorInterval
	}
	r.images = map[string]*imageState{}
	r.dirty = map[string]bool{}
	r.sem = make(chan struct{}, r.MaxConcurrentPulls)
	r.sizing = make(chan struct{}, r.MaxConcurrentPulls)
	r.wake = make(chan event.GenericEvent, 1)
	r.baseCtx = context.Background()
	// Plans never change: they are read by name, once, not watched; the
	// one in use and the one before it are kept.
	reader := r.APIReader
	if reader == nil {
		reader = r.Client
	}
	r.plans = imageplan.NewReader(reader, 2)
}
