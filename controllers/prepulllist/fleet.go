package prepulllist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unique"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// The controller is the one writer of every NodeImageSet spec, so its own
// copy of them — the fleet — is the truth, and the API holds what it last
// wrote. List reconciles change the fleet and mark nodes dirty; a flusher
// writes each dirty node's whole spec in one patch once no reconcile has
// run for flushQuiet (or flushMax after the first mark), so that the
// decisions of every list reconciled back to back reach a node in one
// write, however many lists there are.
//
// A change the agent has nothing to do for — dropping an entry whose
// release it has confirmed — marks the node tidy instead: it goes with the
// node's next write, or once the fleet wrote nothing else for tidyQuiet
// (at the latest tidyMax after the first mark), tidyBatch nodes a flush,
// so that a rollout's waves are not slowed by a second write, and a second
// status write, of every node they reach. A deleted list's drops are not
// tidy: its finalizer waits for them.
//
// What agents report is kept compactly too: the informer's transform turns
// each NodeImageSet's status into reports (phase, pin owners, and for the
// few entries that need them the digest, pull time and failure) and strips
// the object it caches to its metadata, so that the controller's memory
// grows with nodes × images by a few dozen bytes, not by the status objects.
const (
	flushQuiet   = 20 * time.Millisecond
	flushMax     = 2 * time.Second
	flushWorkers = 16
	tidyQuiet    = 5 * time.Second
	tidyMax      = 2 * time.Minute
	tidyBatch    = 250
)

// DefaultPlanGrace is how long an ImagePlan that no NodeImageSet names is
// kept: an agent reads its plan once its NodeImageSet names it, and a plan
// nodes moved off may be named again soon (a rollout's next step).
const DefaultPlanGrace = time.Minute

// report is what the controller needs of one image's status on one node.
type report struct {
	image     string
	phase     prepullv1.ImagePhase
	pinOwners []string
	// extra is set only for tag entries (their digest and pull time) and
	// failed images (their reason and message).
	extra *reportExtra
}

type reportExtra struct {
	digest          string
	pulledAt        *metav1.Time
	reason, message string
}

// reports are one node's reports: those its status lists, and for the
// images of the plan its status names that it does not list, present as
// asked (NodeImageSetStatus.Plan).
type reports struct {
	listed []report
	// plan is the status's plan; planned its images as present as asked,
	// shared by every node, nil until the fleet knows the plan.
	plan    string
	planned []report
}

// find is the report of ref, or nil.
func (rs reports) find(ref string) *report {
	if r := search(rs.listed, ref); r != nil {
		return r
	}
	return search(rs.planned, ref)
}

// search finds ref in rs, sorted by image.
func search(rs []report, ref string) *report {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].image >= ref })
	if i < len(rs) && rs[i].image == ref {
		return &rs[i]
	}
	return nil
}

// presentAsAsked are the reports an agent leaves out for the images of
// plan, sorted by image as the plan is.
func presentAsAsked(plan []prepullv1.NodeImage) []report {
	out := make([]report, 0, len(plan))
	for i := range plan {
		st := plan[i].PresentAsAsked()
		out = append(out, report{image: intern(st.Image), phase: internPhase(st.Phase), pinOwners: internOwners(st.PinOwners)})
	}
	slices.SortFunc(out, func(a, b report) int { return strings.Compare(a.image, b.image) })
	return out
}

// fleet holds every node's spec as the controller wants it, and what the
// node's agent last reported.
type fleet struct {
	mu sync.Mutex
	// planMu keeps the sweep's deletes of unused plans and the flushes
	// that name plans apart; it is taken before mu, never while mu is held.
	planMu sync.Mutex
	// specs are the nodes' specs. Nodes whose specs are equal share one
	// once it is written (canon holds it, by plan name), since most nodes
	// of a fleet are handed the same images; own marks the specs that are
	// a node's own, changed in place. A node's shared spec is copied
	// before it changes (node.edit).
	specs  map[string]*prepullv1.NodeImageSetSpec
	own    map[string]bool
	canon  map[string]*prepullv1.NodeImageSetSpec
	status map[string]reports
	// view is status as of the last statusBatch: the lists reconciled
	// together decide from one view, so they hand the same nodes at once.
	view   map[string]reports
	exists map[string]bool
	// planOf is the plan each node's NodeImageSet names, as last written;
	// plans are the ImagePlans that exist, with when a node last named
	// each (or when it was made).
	planOf map[string]string
	plans  map[string]time.Time
	// planned are, by plan, its images as present as asked, for the
	// statuses that name the plan.
	planned map[string][]report
	loaded  bool
	dirty   map[string]bool
	writing int
	first   time.Time
	// tidy are the nodes whose only change is the drop of released
	// entries, marked first at tidySince; wrote is when dirty nodes were
	// last taken for a write.
	tidy      map[string]bool
	tidySince time.Time
	wrote     time.Time
	// last is when a reconcile last ended; active counts those under way.
	last   time.Time
	active int
	clock  clock.PassiveClock
}

func newFleet(c clock.PassiveClock) *fleet {
	return &fleet{
		specs: map[string]*prepullv1.NodeImageSetSpec{}, status: map[string]reports{},
		own: map[string]bool{}, canon: map[string]*prepullv1.NodeImageSetSpec{},
		exists: map[string]bool{}, dirty: map[string]bool{}, tidy: map[string]bool{}, clock: c,
		planOf: map[string]string{}, plans: map[string]time.Time{}, planned: map[string][]report{},
	}
}

// load reads every NodeImageSet's spec, and the plans they name, from the
// API once, after a start or a change of leader: the cache holds no specs.
// It pages through them.
func (f *fleet) load(ctx context.Context, r client.Reader) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loaded {
		return nil
	}
	plans := map[string]*prepullv1.ImagePlan{}
	now := f.clock.Now()
	if err := pages(ctx, r, func() *prepullv1.ImagePlanList { return &prepullv1.ImagePlanList{} }, func(l *prepullv1.ImagePlanList) {
		for i := range l.Items {
			p := &l.Items[i]
			plans[p.Name] = p
			f.plans[p.Name] = now
			f.planned[p.Name] = presentAsAsked(p.Spec.Images)
		}
	}); err != nil {
		return fmt.Errorf("read image plans: %w", err)
	}
	// Nodes that name one plan and have no entries of their own share its
	// entries: read once, not once a node.
	byPlan := map[string]*prepullv1.NodeImageSetSpec{}
	err := pages(ctx, r, func() *prepullv1.NodeImageSetList { return &prepullv1.NodeImageSetList{} }, func(l *prepullv1.NodeImageSetList) {
		for i := range l.Items {
			s := &l.Items[i]
			if s.Spec.Plan != "" && plans[s.Spec.Plan] == nil {
				// The plan is gone: the node's spec is written again.
				f.markDirty(s.Name)
			}
			spec, ok := byPlan[s.Spec.Plan]
			if !ok || len(s.Spec.Images) > 0 {
				// Kept sorted by image (setOwner); one written by an older
				// controller may not be. Reconciles copy a shared spec
				// before they change it.
				spec = &prepullv1.NodeImageSetSpec{Images: s.Spec.Planned(plans[s.Spec.Plan])}
				prepullv1.SortImages(spec.Images)
				internSpec(spec)
				spec, _ = f.share(spec)
				if len(s.Spec.Images) == 0 {
					byPlan[s.Spec.Plan] = spec
				}
			}
			f.specs[s.Name] = spec
			f.exists[s.Name] = true
			f.planOf[s.Name] = s.Spec.Plan
		}
	})
	if err != nil {
		return fmt.Errorf("read node image sets: %w", err)
	}
	// Statuses observed before the plans were known.
	for node, rs := range f.status {
		if rs.plan != "" && rs.planned == nil {
			rs.planned = f.planned[rs.plan]
			f.status[node] = rs
		}
	}
	f.loaded = true
	return nil
}

// pages lists every object of a kind, 500 at a time, into a new list
// each time, and hands each page to each.
func pages[L client.ObjectList](ctx context.Context, r client.Reader, newList func() L, each func(L)) error {
	cont := ""
	for {
		list := newList()
		if err := r.List(ctx, list, client.Limit(500), client.Continue(cont)); err != nil {
			return err
		}
		each(list)
		if cont = list.GetContinue(); cont == "" {
			return nil
		}
	}
}

// snapshot makes what agents reported so far the view reconciles read.
func (f *fleet) snapshot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.view = maps.Clone(f.status)
}

// reported is node's reports in the current view. The caller holds f.mu.
func (f *fleet) reported(node string) reports {
	if f.view == nil {
		return f.status[node]
	}
	return f.view[node]
}

// spec is node's spec, created empty, and whether other nodes share it.
// The caller holds f.mu.
func (f *fleet) spec(node string) (spec *prepullv1.NodeImageSetSpec, shared bool) {
	s, ok := f.specs[node]
	if !ok {
		s = &prepullv1.NodeImageSetSpec{}
		f.specs[node], f.own[node] = s, true
	}
	return s, !f.own[node]
}

// setSpec records node's spec, its own, as a reconcile left it. The caller
// holds f.mu.
func (f *fleet) setSpec(node string, spec *prepullv1.NodeImageSetSpec) {
	f.specs[node], f.own[node] = spec, true
}

// share returns the spec equal to spec that nodes share, which is spec
// when there is none yet, and its plan's name; an empty spec is not shared
// and names no plan. The caller holds f.mu.
func (f *fleet) share(spec *prepullv1.NodeImageSetSpec) (*prepullv1.NodeImageSetSpec, string) {
	if len(spec.Images) == 0 {
		return spec, ""
	}
	name := prepullv1.ImagePlanName(spec.Images)
	if c, ok := f.canon[name]; ok {
		return c, name
	}
	f.canon[name] = spec
	return spec, name
}

// markDirty records that node's spec changed. The caller holds f.mu.
func (f *fleet) markDirty(node string) {
	now := f.clock.Now()
	if len(f.dirty) == 0 {
		f.first = now
	}
	f.dirty[node] = true
}

// markTidy records that node's spec dropped released entries and nothing
// else. The caller holds f.mu.
func (f *fleet) markTidy(node string) {
	if f.dirty[node] {
		return
	}
	if len(f.tidy) == 0 {
		f.tidySince = f.clock.Now()
	}
	f.tidy[node] = true
}

// begin and end bracket a reconcile: the fleet is written once none runs.
func (f *fleet) begin() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active++
}

func (f *fleet) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active--
	f.last = f.clock.Now()
}

// forget drops a node that is gone. The caller holds f.mu.
func (f *fleet) forget(node string) {
	delete(f.specs, node)
	delete(f.own, node)
	delete(f.status, node)
	delete(f.view, node)
	delete(f.exists, node)
	delete(f.dirty, node)
	delete(f.tidy, node)
	delete(f.planOf, node)
}

// owners are the lists that own an entry on node.
func (f *fleet) owners(node string) []types.NamespacedName {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []types.NamespacedName
	s := f.specs[node]
	if s == nil {
		return nil
	}
	for _, e := range s.Images {
		for _, o := range e.Owners {
			n, ok := prepullv1.OwnerKey(o.List)
			if ok && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// take returns the plans the dirty nodes' specs name ("" for no images),
// and the images of those plans that do not exist yet, when the reconciles
// have been quiet long enough or the first mark is old enough; the tidy
// nodes' too when nothing else was written for tidyQuiet, or the first
// tidy mark is tidyMax old.
func (f *fleet) take() (named map[string]string, newPlans map[string][]prepullv1.NodeImage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	quiet := f.active == 0 && now.Sub(f.last) >= flushQuiet
	urgent := len(f.dirty) > 0 && (quiet || now.Sub(f.first) >= flushMax)
	tidy := len(f.tidy) > 0 && ((len(f.dirty) == 0 && f.writing == 0 && now.Sub(f.wrote) >= tidyQuiet) || now.Sub(f.tidySince) >= tidyMax)
	if !urgent && !tidy {
		return nil, nil
	}
	take := f.dirty
	if urgent {
		f.wrote = now
		f.dirty = map[string]bool{}
	} else {
		take = map[string]bool{}
	}
	if tidy {
		// A few at a time, so that a write of the fleet's urgent changes
		// never waits behind thousands of tidy ones.
		limit := len(take) + tidyBatch
		for n := range f.tidy {
			if len(take) >= limit {
				break
			}
			take[n] = true
		}
	}
	named = make(map[string]string, len(take))
	newPlans = map[string][]prepullv1.NodeImage{}
	for n := range take {
		// The write carries the whole spec: tidy changes go with it.
		delete(f.tidy, n)
		s, ok := f.specs[n]
		if !ok {
			continue
		}
		s, name := f.share(s)
		named[n] = name
		if name == "" {
			continue
		}
		// Written, the spec is shared with every node of the same plan.
		f.specs[n] = s
		delete(f.own, n)
		if _, known := f.plans[name]; !known && newPlans[name] == nil {
			newPlans[name] = s.DeepCopy().Images
		}
	}
	f.writing++
	return named, newPlans
}

// pending reports whether a spec change the agents must see is not
// written yet; tidy changes do not count.
func (f *fleet) pending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.dirty) > 0 || f.writing > 0
}

// flush writes the dirty nodes' specs every flushQuiet until ctx ends.
func (f *fleet) flush(ctx context.Context, c client.Client, nodeUID func(string) (types.UID, bool)) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) { f.flushOnce(ctx, c, nodeUID) }, flushQuiet)
	return nil
}

// flushOnce writes the dirty nodes' specs, when take says it is time:
// first the plans they name that do not exist yet, then each node's
// NodeImageSet, which names its plan.
func (f *fleet) flushOnce(ctx context.Context, c client.Client, nodeUID func(string) (types.UID, bool)) {
	f.planMu.Lock()
	defer f.planMu.Unlock()
	named, newPlans := f.take()
	if named == nil {
		return
	}
	var mu sync.Mutex
	var failed []string
	fail := func(node string, err error) {
		ctrl.LoggerFrom(ctx).Info("Write of a node image set failed; retrying", "node", node, "error", err.Error())
		mu.Lock()
		failed = append(failed, node)
		mu.Unlock()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(flushWorkers)
	planErrs := map[string]error{}
	for name, images := range newPlans {
		g.Go(func() error {
			if err := f.makePlan(gctx, c, name, images); err != nil {
				mu.Lock()
				planErrs[name] = err
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(flushWorkers)
	for node, name := range named {
		if err, ok := planErrs[name]; ok {
			fail(node, err)
			continue
		}
		g.Go(func() error {
			if err := f.write(gctx, c, node, name, nodeUID); err != nil {
				fail(node, err)
			}
			return nil
		})
	}
	_ = g.Wait()
	f.mu.Lock()
	f.writing--
	for _, n := range failed {
		if _, ok := f.specs[n]; ok {
			f.markDirty(n)
		}
	}
	f.mu.Unlock()
}

// makePlan creates the plan name of images, unless it exists.
func (f *fleet) makePlan(ctx context.Context, c client.Client, name string, images []prepullv1.NodeImage) error {
	plan := &prepullv1.ImagePlan{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       prepullv1.ImagePlanSpec{Count: int32(len(images)), Images: images},
	}
	if err := c.Create(ctx, plan); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create image plan %s: %w", name, err)
	}
	planned := presentAsAsked(images)
	f.mu.Lock()
	f.plans[name] = f.clock.Now()
	f.planned[name] = planned
	f.mu.Unlock()
	return nil
}

// write makes node's NodeImageSet name plan ("" for no images): a merge
// patch of the whole spec (the controller is its only writer), or a
// create.
func (f *fleet) write(ctx context.Context, c client.Client, node, plan string, nodeUID func(string) (types.UID, bool)) error {
	f.mu.Lock()
	exists := f.exists[node]
	f.mu.Unlock()
	if !exists {
		if plan == "" {
			return nil
		}
		uid, ok := nodeUID(node)
		if !ok {
			return nil
		}
		set := &prepullv1.NodeImageSet{
			ObjectMeta: metav1.ObjectMeta{
				Name:            node,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node, UID: uid}},
			},
			Spec: prepullv1.NodeImageSetSpec{Plan: plan},
		}
		err := c.Create(ctx, set)
		if err == nil {
			f.written(node, plan)
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		f.setExists(node)
	}
	// images: null drops entries written by hand or by an older
	// controller; plan: null (when there is none) drops the plan.
	var planField any
	if plan != "" {
		planField = plan
	}
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"plan": planField, "images": nil}})
	if err != nil {
		return err
	}
	set := &prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: node}}
	err = c.Patch(ctx, set, client.RawPatch(types.MergePatchType, body))
	if apierrors.IsNotFound(err) {
		f.mu.Lock()
		delete(f.exists, node)
		f.mu.Unlock()
		return errors.New("node image set is gone; creating it again")
	}
	if err == nil {
		f.written(node, plan)
	}
	return err
}

// written records that node's NodeImageSet names plan.
func (f *fleet) written(node, plan string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists[node] = true
	f.planOf[node] = plan
}

// sweep deletes the plans no NodeImageSet has named for grace, every grace
// until ctx ends.
func (f *fleet) sweep(ctx context.Context, c client.Client, grace time.Duration) {
	wait.UntilWithContext(ctx, func(ctx context.Context) { f.sweepOnce(ctx, c, grace) }, grace)
}

// sweepOnce deletes the plans no NodeImageSet has named for grace, and
// forgets them. No flush runs meanwhile: one that named a plan between the
// sweep finding it unused and deleting it would leave a node naming a plan
// that is gone; after the sweep, a flush that names it makes it again.
func (f *fleet) sweepOnce(ctx context.Context, c client.Client, grace time.Duration) {
	f.planMu.Lock()
	defer f.planMu.Unlock()
	for _, name := range f.unused(grace) {
		err := c.Delete(ctx, &prepullv1.ImagePlan{ObjectMeta: metav1.ObjectMeta{Name: name}})
		if client.IgnoreNotFound(err) != nil {
			ctrl.LoggerFrom(ctx).Info("Delete of an unused image plan failed", "plan", name, "error", err.Error())
			continue
		}
		f.mu.Lock()
		delete(f.plans, name)
		delete(f.planned, name)
		delete(f.canon, name)
		f.mu.Unlock()
	}
}

// unused are the plans no node has named for grace. A write under way may
// name any plan: none is unused then.
func (f *fleet) unused(grace time.Duration) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	for _, name := range f.planOf {
		if name != "" {
			f.plans[name] = now
		}
	}
	if !f.loaded || f.writing > 0 || len(f.dirty) > 0 || len(f.tidy) > 0 {
		return nil
	}
	var out []string
	for name, seen := range f.plans {
		if now.Sub(seen) >= grace {
			out = append(out, name)
		}
	}
	return out
}

func (f *fleet) setExists(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists[node] = true
}

// observe records a NodeImageSet the informer delivered: its reports, and
// that it exists. It returns the object stripped to its metadata, which is
// all the cache keeps.
//
// The informer may pass an object it already holds through the transform
// again (a relist replaces the store with what it has, and the streaming
// list does so at its end); such an object is the stripped one, which
// carries strippedMark, and is returned as it is: its reports are those
// recorded when it was first seen.
func (f *fleet) observe(set *prepullv1.NodeImageSet) *prepullv1.NodeImageSet {
	if _, ok := set.Annotations[strippedAnnotation]; ok {
		return set
	}
	rs := reports{listed: make([]report, 0, len(set.Status.Images)), plan: set.Status.Plan}
	for _, st := range set.Status.Images {
		rep := report{image: intern(st.Image), phase: internPhase(st.Phase), pinOwners: internOwners(st.PinOwners)}
		tagEntry := !strings.Contains(st.Image, "@")
		if tagEntry || st.Phase == prepullv1.PhaseFailed {
			rep.extra = &reportExtra{digest: st.Digest, pulledAt: st.PulledAt, reason: st.Reason, message: st.LastError}
		}
		rs.listed = append(rs.listed, rep)
	}
	slices.SortFunc(rs.listed, func(a, b report) int { return strings.Compare(a.image, b.image) })
	f.mu.Lock()
	if rs.plan != "" {
		rs.planned = f.planned[rs.plan]
	}
	f.status[set.Name] = rs
	f.exists[set.Name] = true
	f.mu.Unlock()
	return &prepullv1.NodeImageSet{
		TypeMeta: set.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: set.Name, UID: set.UID, ResourceVersion: set.ResourceVersion,
			Generation: set.Generation, DeletionTimestamp: set.DeletionTimestamp,
			Annotations: strippedMark,
		},
	}
}

// strippedAnnotation marks the objects observe made. It exists only in the
// controller's cache, never in the API.
const strippedAnnotation = "prepull.io/fleet-stripped"

// strippedMark is the annotations of every stripped object, shared: the
// cache's objects are read, never written.
var strippedMark = map[string]string{strippedAnnotation: ""}

// gone records that a NodeImageSet was deleted.
func (f *fleet) gone(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.exists, name)
	delete(f.status, name)
}

func intern(s string) string { return unique.Make(s).Value() }

func internPhase(p prepullv1.ImagePhase) prepullv1.ImagePhase {
	switch p {
	case prepullv1.PhasePending, prepullv1.PhasePulling, prepullv1.PhasePresent, prepullv1.PhaseFailed, prepullv1.PhaseReleased:
		return prepullv1.ImagePhase(intern(string(p)))
	}
	return p
}

var ownerSets sync.Map // "a,b" -> []string, shared by every report that has them

func internOwners(owners []string) []string {
	if len(owners) == 0 {
		return nil
	}
	key := strings.Join(owners, ",")
	if v, ok := ownerSets.Load(key); ok {
		return v.([]string)
	}
	v, _ := ownerSets.LoadOrStore(key, slices.Clone(owners))
	return v.([]string)
}

// internSpec shares the strings of spec that repeat on every node.
func internSpec(spec *prepullv1.NodeImageSetSpec) {
	for i := range spec.Images {
		e := &spec.Images[i]
		e.Image = intern(e.Image)
		for j := range e.Owners {
			o := &e.Owners[j]
			o.List = intern(o.List)
			for k := range o.Tags {
				o.Tags[k] = intern(o.Tags[k])
			}
		}
	}
}
