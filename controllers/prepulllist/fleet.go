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

// "a,b" -> []string, shared by every report that has them
