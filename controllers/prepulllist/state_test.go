package prepulllist

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/verify"
)

// Every record the controller keeps goes with its subject.
func TestStateShrinks(t *testing.T) {
	t.Run("a node forgotten leaves nothing, and no mark counted", func(t *testing.T) {
		f := newFleet(clock.RealClock{})
		for _, n := range []string{"a", "b"} {
			f.observe(&prepullv1.NodeImageSet{ObjectMeta: metav1.ObjectMeta{Name: n}})
			f.record(n).own = &prepullv1.NodeImageSetSpec{}
		}
		f.markDirty(f.nodes["a"])
		f.markTidy(f.nodes["b"])
		f.forget("a")
		f.forget("b")
		if _, ok := f.nodes["a"]; ok || f.dirty != 0 || f.tidy != 0 {
			t.Errorf("after forgetting: %d records, %d dirty, %d tidy", len(f.nodes), f.dirty, f.tidy)
		}
	})
	t.Run("a list forgotten leaves nothing", func(t *testing.T) {
		var b listBook
		key := types.NamespacedName{Namespace: "ns", Name: "l"}
		b.note([]types.NamespacedName{key}, true)
		if due, reported := b.takeDue(); len(due) != 1 || !reported {
			t.Errorf("due %v, reported %v", due, reported)
		}
		b.forget(key)
		if len(b.lists) != 0 {
			t.Errorf("records after forgetting: %v", b.lists)
		}
	})
	t.Run("a signature check no one asks for goes", func(t *testing.T) {
		now := time.Now()
		var b signatureBook
		b.checked = map[string]*checkedDigest{
			"old": {res: verify.Result{Verified: true}, at: now, used: now},
			"new": {res: verify.Result{Verified: true}, at: now, used: now},
		}
		b.swept = now
		if _, ok := b.known("new", now.Add(signatureKeep/2)); !ok {
			t.Fatal("a verified check is not known")
		}
		if _, ok := b.known("new", now.Add(signatureKeep)); !ok {
			t.Fatal("a check asked for within signatureKeep is not known")
		}
		if _, ok := b.checked["old"]; ok {
			t.Error("a check no one asked for in signatureKeep is kept")
		}
	})
}
