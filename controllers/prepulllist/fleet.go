package prepulllist

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// fleet is the controller's copy of every node's spec, which it alone
// writes, and of what every node's agent reported: a record per node and
// a record per plan. Its roles are in three files: the specs and how
// nodes share them (specs.go), the agents' reports (reports.go), and the
// writer that brings the API up to date (writer.go).
type fleet struct {
	// mu guards everything below; it is never held over an API call, so
	// that the informer's handlers (observe, gone, owners) never wait on
	// the API server.
	mu sync.Mutex
	// planMu keeps the sweep's deletes of unused plans and the flushes
	// that name plans apart; it is taken before mu, never while mu is held.
	planMu sync.Mutex
	nodes  map[string]*nodeRec
	plans  map[string]*planRec
	loaded bool
	// batchedOnce is set once a statusBatch has taken a view of the
	// reports: until then rollouts read the latest reports.
	batchedOnce bool
	// The writer's pacing: how many nodes are dirty and tidy, when the
	// first of each was marked, how many writes are under way, when dirty
	// nodes were last taken for a write.
	dirty, tidy      int
	first, tidySince time.Time
	writing          int
	wrote            time.Time
	// last is when a reconcile last ended; active counts those under way.
	last   time.Time
	active int
	clock  clock.PassiveClock
}

func newFleet(c clock.PassiveClock) *fleet {
	return &fleet{nodes: map[string]*nodeRec{}, plans: map[string]*planRec{}, clock: c}
}

// load reads every NodeImageSet's spec, and the plans they name, from the
// API once, after a start or a change of leader: the cache holds no specs.
// It pages through them, and takes mu only to record each page. Only
// reconciles call it, one at a time.
func (f *fleet) load(ctx context.Context, r client.Reader) error {
	f.mu.Lock()
	loaded := f.loaded
	f.mu.Unlock()
	if loaded {
		return nil
	}
	plans := map[string]*prepullv1.ImagePlan{}
	if err := pages(ctx, r, func() *prepullv1.ImagePlanList { return &prepullv1.ImagePlanList{} }, func(l *prepullv1.ImagePlanList) {
		for i := range l.Items {
			plans[l.Items[i].Name] = &l.Items[i]
		}
	}); err != nil {
		return fmt.Errorf("read image plans: %w", err)
	}
	// A plan whose images hash to its name is shared by the nodes naming
	// it; another (an older controller's) only waits for the sweep.
	sharable := map[string]bool{}
	f.mu.Lock()
	for name, p := range plans {
		spec := &prepullv1.NodeImageSetSpec{Images: p.Spec.Images}
		prepullv1.SortImages(spec.Images)
		internSpec(spec)
		f.plans[name] = &planRec{name: name, images: spec.Images, planned: presentAsAsked(spec.Images), seen: f.clock.Now()}
		sharable[name] = prepullv1.ImagePlanName(spec.Images) == name
	}
	f.mu.Unlock()
	err := pages(ctx, r, func() *prepullv1.NodeImageSetList { return &prepullv1.NodeImageSetList{} }, func(l *prepullv1.NodeImageSetList) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i := range l.Items {
			s := &l.Items[i]
			f.loadNode(s, plans[s.Spec.Plan], sharable[s.Spec.Plan])
		}
	})
	if err != nil {
		return fmt.Errorf("read node image sets: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Statuses observed before the plans were known.
	for _, rec := range f.nodes {
		if rs := &rec.report; rs.plan != "" && rs.planned == nil {
			if p := f.plans[rs.plan]; p != nil {
				rs.planned = p.planned
			}
		}
	}
	f.loaded = true
	return nil
}

// loadNode records a NodeImageSet read by load, with the plan it names
// (nil when that is gone) and whether nodes may share that plan's record.
// The caller holds f.mu.
func (f *fleet) loadNode(s *prepullv1.NodeImageSet, plan *prepullv1.ImagePlan, sharable bool) {
	rec := f.record(s.Name)
	rec.exists, rec.written = true, s.Spec.Plan
	if s.Spec.Plan != "" && plan == nil {
		// The plan is gone: the node's spec is written again.
		f.markDirty(rec)
	}
	if sharable && len(s.Spec.Images) == 0 {
		// Read once, not once a node.
		rec.own, rec.plan = nil, f.plans[s.Spec.Plan]
		return
	}
	// Kept sorted by image (setOwner); one written by an older controller
	// may not be.
	spec := &prepullv1.NodeImageSetSpec{Images: s.Spec.Planned(plan)}
	prepullv1.SortImages(spec.Images)
	internSpec(spec)
	if p := f.share(spec.Images); p != nil {
		rec.own, rec.plan = nil, p
	} else {
		rec.own, rec.plan = spec, nil
	}
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
	if rec, ok := f.nodes[node]; ok {
		f.unmark(rec)
		delete(f.nodes, node)
	}
}

// owners are the lists that own an entry on node.
func (f *fleet) owners(node string) []types.NamespacedName {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := f.nodes[node]
	if rec == nil {
		return nil
	}
	var out []types.NamespacedName
	for _, e := range rec.images() {
		for _, o := range e.Owners {
			n, ok := prepullv1.OwnerKey(o.List)
			if ok && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}
