package prepulllist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
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

// markDirty records that rec's spec changed. The caller holds f.mu.
func (f *fleet) markDirty(rec *nodeRec) {
	if rec.dirty {
		return
	}
	if f.dirty == 0 {
		f.first = f.clock.Now()
	}
	rec.dirty = true
	f.dirty++
}

// markTidy records that rec's spec dropped released entries and nothing
// else. The caller holds f.mu.
func (f *fleet) markTidy(rec *nodeRec) {
	if rec.dirty || rec.tidy {
		return
	}
	if f.tidy == 0 {
		f.tidySince = f.clock.Now()
	}
	rec.tidy = true
	f.tidy++
}

// unmark records that rec's spec is taken for a write, or forgotten. The
// caller holds f.mu.
func (f *fleet) unmark(rec *nodeRec) {
	if rec.dirty {
		rec.dirty = false
		f.dirty--
	}
	if rec.tidy {
		rec.tidy = false
		f.tidy--
	}
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
	urgent := f.dirty > 0 && (quiet || now.Sub(f.first) >= flushMax)
	tidy := f.tidy > 0 && ((f.dirty == 0 && f.writing == 0 && now.Sub(f.wrote) >= tidyQuiet) || now.Sub(f.tidySince) >= tidyMax)
	if !urgent && !tidy {
		return nil, nil
	}
	if urgent {
		f.wrote = now
	}
	// Tidy nodes a few at a time, so that a write of the fleet's urgent
	// changes never waits behind thousands of tidy ones.
	tidyLeft := 0
	if tidy {
		tidyLeft = tidyBatch
	}
	named = map[string]string{}
	newPlans = map[string][]prepullv1.NodeImage{}
	for node, rec := range f.nodes {
		switch {
		case urgent && rec.dirty:
		case rec.tidy && tidyLeft > 0:
			tidyLeft--
		default:
			continue
		}
		// The write carries the whole spec: tidy changes go with it.
		f.unmark(rec)
		p := f.planOf(rec)
		if p == nil {
			named[node] = ""
			continue
		}
		named[node] = p.name
		if !p.made() && newPlans[p.name] == nil {
			newPlans[p.name] = (&prepullv1.NodeImageSetSpec{Images: p.images}).DeepCopy().Images
		}
	}
	f.writing++
	return named, newPlans
}

// planOf is the plan rec's spec is written as, nil for no images: its own
// spec, once written, is shared with every node of the same plan. A plan
// the sweep deleted while rec held it is the fleet's again, to be made
// anew. The caller holds f.mu.
func (f *fleet) planOf(rec *nodeRec) *planRec {
	if rec.own != nil {
		if p := f.share(rec.own.Images); p != nil {
			rec.own, rec.plan = nil, p
		}
	}
	p := rec.plan
	if p == nil {
		return nil
	}
	if cur, ok := f.plans[p.name]; ok {
		rec.plan = cur
		return cur
	}
	f.plans[p.name] = p
	return p
}

// pending reports whether a spec change the agents must see is not
// written yet; tidy changes do not count.
func (f *fleet) pending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dirty > 0 || f.writing > 0
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
		if rec := f.nodes[n]; rec != nil {
			f.markDirty(rec)
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
	defer f.mu.Unlock()
	p := f.plans[name]
	if p == nil {
		// No node holds it any more: kept, made, for the sweep.
		p = &planRec{name: name, images: images}
		f.plans[name] = p
	}
	p.planned, p.seen = planned, f.clock.Now()
	return nil
}

// write makes node's NodeImageSet name plan ("" for no images): a merge
// patch of the whole spec (the controller is its only writer), or a
// create.
func (f *fleet) write(ctx context.Context, c client.Client, node, plan string, nodeUID func(string) (types.UID, bool)) error {
	f.mu.Lock()
	rec := f.nodes[node]
	exists := rec != nil && rec.exists
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
		f.setExists(node, true)
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
		f.setExists(node, false)
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
	if rec := f.nodes[node]; rec != nil {
		rec.exists, rec.written = true, plan
	}
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
		if p := f.plans[name]; p != nil {
			// A node that shares it from now on makes it again.
			p.planned = nil
			delete(f.plans, name)
		}
		f.mu.Unlock()
	}
}

// unused are the plans no node has named, or held, for grace. A write
// under way may name any plan: none is unused then.
func (f *fleet) unused(grace time.Duration) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock.Now()
	for _, rec := range f.nodes {
		if p := f.plans[rec.written]; p != nil {
			p.seen = now
		}
		if rec.plan != nil {
			rec.plan.seen = now
		}
	}
	if !f.loaded || f.writing > 0 || f.dirty > 0 || f.tidy > 0 {
		return nil
	}
	var out []string
	for name, p := range f.plans {
		if now.Sub(p.seen) >= grace {
			out = append(out, name)
		}
	}
	return out
}

// setExists records whether node's NodeImageSet exists.
func (f *fleet) setExists(node string, exists bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rec := f.nodes[node]; rec != nil {
		rec.exists = exists
	}
}
