package prepulllist

import (
	"slices"
)

// specFacts are what a plan's run finds of one shared spec, the same for
// every node that holds it: whether the list's targets are handed there,
// whether handing them changes nothing, whether the list has an entry
// releasing there, and whether it owns any.
type specFacts struct {
	handed                     *bool // nil until asked
	handIdle, releasing, holds bool
}

// specMemo works out specFacts once per shared spec in a run, so that a run
// over thousands of nodes that share a few dozen specs looks at each of
// those once. It serves only where a node's spec alone decides: the node
// holds a shared spec, every node gets the same targets (no placement),
// and the node is not the probe node, whose spec also gets the probes.
// Each of its methods is the plan's own where the facts do not serve.
type specMemo struct {
	p     *plan
	on    bool
	facts map[*planRec]*specFacts
}

func (p *plan) memo() *specMemo {
	placing := slices.ContainsFunc(p.targets, func(t target) bool { return t.places != nil })
	return &specMemo{p: p, on: !placing && !p.deleting, facts: map[*planRec]*specFacts{}}
}

// of is the facts of n's spec, or nil where they do not serve.
func (m *specMemo) of(n *node) *specFacts {
	if !m.on || n.plan == nil || n.name == m.p.probeNode {
		return nil
	}
	f, ok := m.facts[n.plan]
	if !ok {
		f = &specFacts{}
		for i := range n.images() {
			if o := findOwnerIn(&n.images()[i], m.p.owner.List); o != nil {
				f.holds, f.releasing = true, f.releasing || o.Releasing
			}
		}
		m.facts[n.plan] = f
	}
	return f
}

// handed, for targets every node gets alike (there is no placement).
func (m *specMemo) handed(n *node, targets []target) bool {
	f := m.of(n)
	if f == nil {
		return m.p.handed(n, targets)
	}
	if f.handed == nil {
		h := m.p.handed(n, targets)
		f.handed = &h
	}
	return *f.handed
}

// hand hands n the list's targets, unless another node holding n's shared
// spec found that handing them changes nothing.
func (m *specMemo) hand(n *node, targets []target) {
	f := m.of(n)
	if f != nil && f.handIdle {
		return
	}
	before := n.plan
	m.p.hand(n, targets)
	if f != nil && n.plan != nil && n.plan == before {
		f.handIdle = true
	}
}

func (m *specMemo) collectReleased(n *node) {
	if f := m.of(n); f == nil || f.releasing {
		m.p.collectReleased(n)
	}
}

func (m *specMemo) holds(n *node) bool {
	if f := m.of(n); f != nil {
		return f.holds
	}
	return m.p.holds(n)
}
