package nodegate

import (
	"context"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// Book is what each gating list last observed of the nodes it selects:
// which of its images are missing where. The list reconciler publishes it
// (it alone decides what "present" means for a list); the gate reconciler
// reads it. It is memory only: after a restart every list publishes again
// at its first reconcile, and no gate opens on a list not yet published.
type Book struct {
	mu    sync.Mutex
	lists map[types.NamespacedName]*page
	// queue is the gate reconciler's, once it started; woken holds the
	// nodes to look at until then.
	queue workqueue.TypedRateLimitingInterface[reconcile.Request]
	woken map[string]bool
}

// page is one list's last publication.
type page struct {
	generation int64
	// missing are, for every node the list selects, the images not present
	// there; an empty slice means all are.
	missing map[string][]string
}

// NewBook returns an empty Book.
func NewBook() *Book {
	return &Book{lists: map[types.NamespacedName]*page{}, woken: map[string]bool{}}
}

// Publish records what the list key, at generation, observed: for each
// node it selects, the images missing there. The gate of every node whose
// entry changed is looked at again.
func (b *Book) Publish(key types.NamespacedName, generation int64, missing map[string][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.lists[key]
	b.lists[key] = &page{generation: generation, missing: missing}
	if old == nil {
		old = &page{}
	}
	for n, m := range missing {
		if was, ok := old.missing[n]; !ok || old.generation != generation || !slices.Equal(was, m) {
			b.wake(n)
		}
	}
	for n := range old.missing {
		if _, ok := missing[n]; !ok {
			b.wake(n)
		}
	}
}

// Drop forgets the list key: it gates no node any more.
func (b *Book) Drop(key types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.lists[key]
	if !ok {
		return
	}
	delete(b.lists, key)
	for n := range old.missing {
		b.wake(n)
	}
}

// Missing is what list key, seen at generation, last found missing on
// node: ok is false when the list has not published at that generation or
// a later one (the caller's cache may lag behind the list reconciler's), or
// did not select the node then.
func (b *Book) Missing(key types.NamespacedName, generation int64, node string) (missing []string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.lists[key]
	if p == nil || p.generation < generation {
		return nil, false
	}
	m, ok := p.missing[node]
	return slices.Clone(m), ok
}

// wake queues node for the gate reconciler; b.mu is held.
func (b *Book) wake(node string) {
	if b.queue != nil {
		b.queue.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: node}})
		return
	}
	b.woken[node] = true
}

// source feeds the nodes the Book wakes to the gate reconciler.
func (b *Book) source() source.Source {
	return source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.queue = q
		for n := range b.woken {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: n}})
		}
		b.woken = nil
		return nil
	})
}
