package prepulllist

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// listBook is what the reconciler keeps of each list between its
// reconciles: a record per list, dropped when the list is gone.
type listBook struct {
	mu    sync.Mutex
	lists map[types.NamespacedName]*listRec
	// reported is set when agents reported since the last statusBatch:
	// the fleet takes a new view of the reports then.
	reported bool
}

// listRec is one list.
type listRec struct {
	// status is the status a reconcile last computed for the list of uid,
	// nil before one did. The cache a reconcile reads the list from can
	// lag behind the controller's own last write; resolutions and events
	// start from this instead, so that a tag is resolved once per refresh
	// and an event fires once per transition.
	uid    types.UID
	status *prepullv1.PrePullListStatus
	// due is set when the list is to be reconciled at the next statusBatch:
	// its nodes' agents reported, a tag it names moved, a Secret it pulls
	// with changed.
	due bool
}

// record is key's record, made empty. The caller holds b.mu.
func (b *listBook) record(key types.NamespacedName) *listRec {
	if b.lists == nil {
		b.lists = map[types.NamespacedName]*listRec{}
	}
	rec, ok := b.lists[key]
	if !ok {
		rec = &listRec{}
		b.lists[key] = rec
	}
	return rec
}

// previous is the status last computed for l, or l's status when none was
// since the controller started; a list made again under the same name
// starts anew.
func (b *listBook) previous(l *prepullv1.PrePullList) prepullv1.PrePullListStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rec := b.lists[client.ObjectKeyFromObject(l)]; rec != nil && rec.status != nil && rec.uid == l.UID {
		return *rec.status
	}
	return l.Status
}

// computed records st as the status computed for l.
func (b *listBook) computed(l *prepullv1.PrePullList, st prepullv1.PrePullListStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rec := b.record(client.ObjectKeyFromObject(l))
	rec.uid, rec.status = l.UID, st.DeepCopy()
}

// note marks lists to reconcile at the next statusBatch; reported says
// that agents reported.
func (b *listBook) note(lists []types.NamespacedName, reported bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reported = b.reported || reported
	for _, l := range lists {
		b.record(l).due = true
	}
}

// takeDue returns the lists due and whether agents reported, and clears
// both.
func (b *listBook) takeDue() (due []types.NamespacedName, reported bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for key, rec := range b.lists {
		if rec.due {
			rec.due = false
			due = append(due, key)
		}
	}
	reported, b.reported = b.reported, false
	return due, reported
}

// forget drops key's record.
func (b *listBook) forget(key types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.lists, key)
}
