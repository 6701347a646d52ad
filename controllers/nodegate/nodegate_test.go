package nodegate

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// The gate's behaviour on a real API server is proven with the list
// reconciler, in controllers/prepulllist (TestNodeGate); these are the pure
// parts.

func TestCondition(t *testing.T) {
	now := time.Now()
	l := func(name string) *prepullv1.PrePullList {
		return &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	}
	tests := []struct {
		name        string
		gates       []gating
		only        bool
		wantNil     bool
		wantStatus  corev1.ConditionStatus
		wantReason  string
		wantMessage []string
	}{
		{name: "no gating list", wantNil: true},
		{name: "all present", gates: []gating{{list: l("a"), observed: true, due: now.Add(time.Hour)}},
			wantStatus: corev1.ConditionTrue, wantReason: prepullv1.ReasonImagesPresent},
		{name: "missing names list and image", gates: []gating{
			{list: l("a"), observed: true, due: now.Add(time.Hour)},
			{list: l("b"), observed: true, missing: []string{"reg/b:1"}, due: now.Add(time.Hour)},
		}, wantStatus: corev1.ConditionFalse, wantReason: prepullv1.ReasonImagesMissing, wantMessage: []string{"ns/b: reg/b:1"}},
		{name: "past the timeout", gates: []gating{{list: l("a"), observed: true, missing: []string{"reg/a:1"}, due: now.Add(-time.Second)}},
			wantStatus: corev1.ConditionFalse, wantReason: prepullv1.ReasonGateTimedOut, wantMessage: []string{"ns/a: reg/a:1"}},
		{name: "past the timeout, the condition alone holding the node", only: true,
			gates:      []gating{{list: l("a"), observed: true, missing: []string{"reg/a:1"}, due: now.Add(-time.Second)}},
			wantStatus: corev1.ConditionTrue, wantReason: prepullv1.ReasonGateTimedOut, wantMessage: []string{"ns/a: reg/a:1"}},
		{name: "missing, the condition alone holding the node", only: true,
			gates:      []gating{{list: l("a"), observed: true, missing: []string{"reg/a:1"}, due: now.Add(time.Hour)}},
			wantStatus: corev1.ConditionFalse, wantReason: prepullv1.ReasonImagesMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := condition(tt.gates, now, tt.only)
			if tt.wantNil {
				if c != nil {
					t.Fatalf("condition %+v, want none", c)
				}
				return
			}
			if c == nil || c.Status != tt.wantStatus || c.Reason != tt.wantReason {
				t.Fatalf("condition %+v, want %s %s", c, tt.wantStatus, tt.wantReason)
			}
			for _, m := range tt.wantMessage {
				if !strings.Contains(c.Message, m) {
					t.Errorf("message %q does not name %q", c.Message, m)
				}
			}
		})
	}
}

func TestBook(t *testing.T) {
	b := NewBook()
	key := types.NamespacedName{Namespace: "ns", Name: "a"}
	if _, ok := b.Missing(key, 1, "n1"); ok {
		t.Fatal("a list that never published reports a verdict")
	}
	b.Publish(key, 1, map[string][]string{"n1": {"reg/a:1"}, "n2": {}})
	if m, ok := b.Missing(key, 1, "n1"); !ok || len(m) != 1 {
		t.Errorf("n1: %v %v, want one image missing", m, ok)
	}
	if m, ok := b.Missing(key, 1, "n2"); !ok || len(m) != 0 {
		t.Errorf("n2: %v %v, want nothing missing", m, ok)
	}
	if _, ok := b.Missing(key, 2, "n1"); ok {
		t.Error("a verdict of generation 1 answers for generation 2")
	}
	if _, ok := b.Missing(key, 0, "n1"); !ok {
		t.Error("a verdict newer than the caller's view of the list does not answer")
	}
	if _, ok := b.Missing(key, 1, "n3"); ok {
		t.Error("a node the list did not select has a verdict")
	}
	if !b.woken["n1"] || !b.woken["n2"] {
		t.Errorf("woken %v, want both nodes of the first publication", b.woken)
	}
	b.woken = map[string]bool{}
	b.Publish(key, 1, map[string][]string{"n1": {}, "n2": {}})
	if !b.woken["n1"] || b.woken["n2"] {
		t.Errorf("woken %v, want only n1, whose verdict changed", b.woken)
	}
	b.woken = map[string]bool{}
	b.Drop(key)
	if _, ok := b.Missing(key, 1, "n1"); ok || !b.woken["n1"] || !b.woken["n2"] {
		t.Errorf("after Drop: verdict kept, or woken %v not both nodes", b.woken)
	}
}
