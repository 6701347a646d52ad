package prepulllist

import (
	"context"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// A flush that names a plan while the sweep is deleting it, as unused,
// must not leave the node naming a plan that is gone: the flush waits for
// the sweep, and then makes the plan again.
func TestSweepAndFlushNameNoDeletedPlan(t *testing.T) {
	cfg, _ := testground.StartAPIServer(t, "../../deploy/crd")
	api, err := client.NewWithWatch(cfg, client.Options{Scheme: testground.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	images := []prepullv1.NodeImage{{Image: "r/app@sha256:aa", Owners: []prepullv1.ImageOwner{{List: "ns/l", Tags: []string{"r/app:1"}}}}}
	name := prepullv1.ImagePlanName(images)
	if err := api.Create(ctx, &prepullv1.ImagePlan{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: prepullv1.ImagePlanSpec{Count: 1, Images: images}}); err != nil {
		t.Fatal(err)
	}
	// The sweep's delete of the plan waits until the test lets it go.
	deleting, proceed := make(chan struct{}), make(chan struct{})
	c := interceptor.NewClient(api, interceptor.Funcs{Delete: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
		if _, ok := obj.(*prepullv1.ImagePlan); ok {
			close(deleting)
			<-proceed
		}
		return cl.Delete(ctx, obj, opts...)
	}})

	now := time.Now()
	clock := clocktesting.NewFakeClock(now)
	f := newFleet(clock)
	f.loaded = true
	f.plans[name] = &planRec{name: name, images: images, planned: presentAsAsked(images), seen: now.Add(-time.Hour)}
	var wg sync.WaitGroup
	wg.Go(func() { f.sweepOnce(ctx, c, time.Minute) })
	<-deleting

	// While the plan is being deleted, a list hands node n1 exactly its
	// images, and the flush is due.
	f.mu.Lock()
	f.record("n1").own = &prepullv1.NodeImageSetSpec{Images: images}
	f.markDirty(f.nodes["n1"])
	f.mu.Unlock()
	clock.Step(flushMax)
	flushed := make(chan struct{})
	wg.Go(func() {
		defer close(flushed)
		f.flushOnce(ctx, c, func(string) (types.UID, bool) { return "uid-n1", true })
	})
	select {
	case <-flushed:
		// Without waiting for the sweep, the flush wrote n1 naming the plan
		// the sweep is about to delete.
	case <-time.After(200 * time.Millisecond):
	}
	close(proceed)
	wg.Wait()

	set := &prepullv1.NodeImageSet{}
	if err := c.Get(ctx, client.ObjectKey{Name: "n1"}, set); err != nil {
		t.Fatalf("n1 not written: %v", err)
	}
	if set.Spec.Plan != name {
		t.Fatalf("n1 names plan %q, want %q", set.Spec.Plan, name)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &prepullv1.ImagePlan{}); err != nil {
		t.Errorf("n1 names plan %s, which is gone: %v", name, err)
	}
}
