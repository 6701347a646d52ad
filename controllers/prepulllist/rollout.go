package prepulllist

import (
	"cmp"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/redact"
)

// target is one image of a list as nodes get it.
type target struct {
	want
	// digest is the resolved digest, "sha256:…", or empty while unresolved.
	digest string
	// probe marks a tag resolved on a node (resolution: Node).
	probe bool
	// resolveAfter asks the probe node to pull the tag again from then on.
	resolveAfter *metav1.Time
	// places, when set, says which nodes the target goes to (a discovered
	// image under placement WorkloadNodes); nil, every selected node.
	places func(*node) bool
	// digestRef and tags are ref() and the owner's tags, made once by share
	// and shared by every node's entry: a list's run asks for them on
	// every node.
	digestRef string
	tags      []string
}

// share makes the strings every node's entry of t holds, once, and
// interned: the entries' strings need no interning after a run.
func (t *target) share() {
	if t.digest != "" {
		t.digestRef = intern(digestRef(t.Repo, t.digest))
	}
	if t.Tag != "" {
		t.Tag = intern(t.Tag)
		t.tags = []string{t.Tag}
	}
}

// ref is the NodeImageSet entry of a resolved target.
func (t target) ref() string {
	if t.digestRef != "" {
		return t.digestRef
	}
	return digestRef(t.Repo, t.digest)
}

// plan is one list's rollout over every node.
type plan struct {
	// owner is the list as an owner, without tags: each entry gets its own.
	owner prepullv1.ImageOwner
	// archive is the list's archive source, or nil.
	archive *prepullv1.ArchiveSource
	// targets are the list's images; only resolved ones reach nodes.
	targets []target
	// probes are tags resolved on a node (resolution: Node), handed to
	// probeNode as tag entries.
	probes    []target
	probeNode string
	// maxConcurrent is how many nodes may be pulling a new digest at once.
	maxConcurrent int
	// deleting releases the list everywhere.
	deleting bool
	// gate is the list's nodeGate, or nil; now is the time its timeouts
	// are read at.
	gate *prepullv1.NodeGate
	now  time.Time
}

// outcome is what a plan observed and did.
type outcome struct {
	nodes    prepullv1.NodeCounts
	perImage map[string]*imageCounts // by want.image
	failures []prepullv1.NodeFailure
	// held counts the nodes on which the list still owns an entry, releasing
	// or not: a deleted list's finalizer waits for zero.
	held int
	// missing are, for a gating list, the images missing on each selected
	// node; gate counts its nodes.
	missing map[string][]string
	gated   bool
	gate    prepullv1.NodeGateStatus
}

// imageCounts counts the selected nodes by the state of one image.
type imageCounts struct{ ready, failed int32 }

// maxConcurrentNodes scales rollout.maxConcurrentNodes to selected nodes:
// percentages round up, and the result is at least one.
func maxConcurrentNodes(v *intstr.IntOrString, selected int) int {
	if v == nil {
		v = &intstr.IntOrString{Type: intstr.String, StrVal: "25%"}
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(v, selected, true)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// run applies the plan to nodes, which it sorts by name, and reports.
func (p *plan) run(nodes []*node) outcome {
	slices.SortFunc(nodes, func(a, b *node) int { return cmp.Compare(a.name, b.name) })
	out := outcome{perImage: map[string]*imageCounts{}, gated: p.gate != nil && !p.deleting}
	for _, t := range p.targets {
		out.perImage[t.image] = &imageCounts{}
	}
	resolved := p.resolvedTargets()
	shares := p.shares(nodes, resolved)
	memo := p.memo()

	handed := make([]bool, len(nodes))
	for i, n := range nodes {
		handed[i] = n.selected && !p.deleting && memo.handed(n, shares[i].targets)
	}
	admit := p.turns(nodes, shares, handed)
	for i, n := range nodes {
		mine := shares[i].targets
		switch {
		case !n.selected || p.deleting:
			p.releaseAll(n, nil)
		case handed[i]:
			memo.hand(n, mine)
		case p.gate != nil && n.tainted:
			// A node held by the gate runs nothing yet: it takes no turn,
			// so that a pool scaling up many nodes warms them together.
			memo.hand(n, mine)
			handed[i] = true
		case admit[i]:
			memo.hand(n, mine)
			handed[i] = true
		}
		if n.selected && !p.deleting && n.name == p.probeNode {
			p.handProbes(n)
		}
		memo.collectReleased(n)
		p.observe(n, mine, handed[i], shares[i].wanted, &out)
		if memo.holds(n) {
			out.held++
		}
	}
	return out
}

// turns are the nodes (by index) that get the list's current digests now.
// Nodes that hold them but have not settled use up the rollout's budget;
// the others wait their turn. Those that other lists are rolling out to
// right now go first, then the rest in name order, so that lists selecting
// the same nodes hand them their images together: one spec write and one
// round of pulls per node, not one per list.
// handed says which nodes hold the list's current digests already.
func (p *plan) turns(nodes []*node, shares []share, handed []bool) map[int]bool {
	if p.deleting {
		return nil
	}
	inFlight := 0
	var waiting []int
	for i, n := range nodes {
		if !n.selected || (p.gate != nil && n.tainted) {
			continue
		}
		switch {
		case !handed[i]:
			waiting = append(waiting, i)
		case !p.settled(n, shares[i].targets):
			inFlight++
		}
	}
	free := min(p.maxConcurrent-inFlight, len(waiting))
	if free <= 0 {
		return nil
	}
	if free < len(waiting) {
		busy := make([]bool, len(nodes))
		for _, i := range waiting {
			busy[i] = p.othersPulling(nodes[i])
		}
		slices.SortStableFunc(waiting, func(a, b int) int {
			switch {
			case busy[a] == busy[b]:
				return 0
			case busy[a]:
				return -1
			}
			return 1
		})
	}
	admit := make(map[int]bool, free)
	for _, i := range waiting[:free] {
		admit[i] = true
	}
	return admit
}

// othersPulling reports whether another list's entry on n, not released,
// is not Present or Failed yet: n is in another list's rollout.
func (p *plan) othersPulling(n *node) bool {
	for i := range n.images() {
		e := &n.images()[i]
		for _, o := range e.Owners {
			if o.List == p.owner.List || o.Releasing {
				continue
			}
			if st := n.batched.find(e.Image); !st.settled() {
				return true
			}
			break
		}
	}
	return false
}

func (p *plan) resolvedTargets() []target {
	var out []target
	for _, t := range p.targets {
		if t.digest != "" {
			out = append(out, t)
		}
	}
	return out
}

// handed reports whether every resolved target is owned by the list on n.
func (p *plan) handed(n *node, targets []target) bool {
	for _, t := range targets {
		o := findOwner(n.images(), t.ref(), p.owner.List)
		if o == nil || o.Releasing {
			return false
		}
	}
	return true
}

// settled reports whether every resolved target is settled on n.
func (p *plan) settled(n *node, targets []target) bool {
	for _, t := range targets {
		if !n.batched.find(t.ref()).settled() {
			return false
		}
	}
	return true
}

// hand makes the list own exactly the targets on n, and releases whatever
// else it owned there. A tag is claimed by one entry of a node: the entry
// handed it last, which holds the tag's one digest for the cluster.
func (p *plan) hand(n *node, targets []target) {
	keep := map[string]bool{}
	for _, t := range targets {
		o, ref := p.owner, t.ref()
		if t.Tag != "" {
			o.Tags = t.tags
			if o.Tags == nil {
				o.Tags = []string{t.Tag}
			}
			unclaim(n, t.Repo, t.Tag, ref)
		}
		setOwner(n, ref, o, p.archive, nil)
		keep[ref] = true
	}
	if n.name == p.probeNode {
		for _, t := range p.probes {
			keep[t.Tag] = true
		}
	}
	p.releaseAll(n, keep)
}

// handProbes hands the probe node the tags it resolves.
func (p *plan) handProbes(n *node) {
	for _, t := range p.probes {
		setOwner(n, t.Tag, p.owner, p.archive, t.resolveAfter)
	}
}

// releaseAll marks the list releasing on every entry of n not in keep.
func (p *plan) releaseAll(n *node, keep map[string]bool) {
	for i := range n.images() {
		e := &n.images()[i]
		if o := findOwnerIn(e, p.owner.List); o != nil && !o.Releasing && !keep[e.Image] {
			findOwnerIn(n.editEntry(i), p.owner.List).Releasing = true
		}
	}
}

// collectReleased drops the list from entries where the agent confirmed the
// release: its pin is gone, and an entry no one else wants is Released.
func (p *plan) collectReleased(n *node) {
	var done []int
	for i := range n.images() {
		e := &n.images()[i]
		if o := findOwnerIn(e, p.owner.List); o != nil && o.Releasing && released(e, n.latest.find(e.Image), p.owner.List) {
			done = append(done, i)
		}
	}
	if len(done) == 0 {
		return
	}
	spec := n.tidy()
	for _, i := range slices.Backward(done) {
		e := &spec.Images[i]
		if e.Owners = slices.DeleteFunc(slices.Clone(e.Owners), func(o prepullv1.ImageOwner) bool { return o.List == p.owner.List }); len(e.Owners) == 0 {
			spec.Images = slices.Delete(spec.Images, i, i+1)
		}
	}
}

// released reports whether the agent has applied the release of list on e.
func released(e *prepullv1.NodeImage, st *report, list string) bool {
	if st == nil {
		// The agent never reported the image: it holds no pin of it. An
		// agent also takes off pins whose owner is not in its spec.
		return true
	}
	if st.pinnedBy(list) {
		return false
	}
	for _, o := range e.Owners {
		if !o.Releasing {
			// Others still want the image: the list's pin is gone, done.
			return true
		}
	}
	return st.phase == prepullv1.PhaseReleased
}

// holds reports whether the list owns any entry on n.
func (p *plan) holds(n *node) bool {
	for i := range n.images() {
		if findOwnerIn(&n.images()[i], p.owner.List) != nil {
			return true
		}
	}
	return false
}

// observe counts n's state for the list's status, and for a gating list
// the images missing on n.
// wanted counts the list's targets that go to n, resolved or not.
// handed says whether n holds the list's current digests.
func (p *plan) observe(n *node, targets []target, handed bool, wanted int, out *outcome) {
	if !n.selected || p.deleting {
		return
	}
	out.nodes.Selected++
	p.observeGate(n, targets, handed, out)
	if !handed {
		out.nodes.Waiting++
		return
	}
	ready, failed := len(targets) == wanted, false
	for _, t := range targets {
		st := n.batched.find(t.ref())
		res := out.perImage[t.image]
		switch {
		case st == nil:
			ready = false
		case st.phase == prepullv1.PhasePresent:
			res.ready++
		case st.phase == prepullv1.PhaseFailed || st.phase == prepullv1.PhaseLazy:
			// Lazy: listed, but its layers are fetched on first read.
			res.failed++
			failed, ready = true, false
			f := prepullv1.NodeFailure{Node: n.name, Image: t.image}
			if st.extra != nil {
				f.Reason, f.Message = st.extra.reason, redact.Text(st.extra.message)
			}
			out.failures = append(out.failures, f)
		default:
			ready = false
		}
	}
	switch {
	case failed:
		out.nodes.Failed++
	case ready:
		out.nodes.Ready++
	default:
		out.nodes.Pulling++
	}
}

// observeGate records, for a gating list, the images missing on n — not
// resolved yet, not handed, or not reported Present — and whether the gate
// holds n or its timeout let n through without them.
func (p *plan) observeGate(n *node, resolved []target, handed bool, out *outcome) {
	if p.gate == nil {
		return
	}
	if out.missing == nil {
		out.missing = map[string][]string{}
	}
	present := make(map[string]bool, len(resolved))
	for _, t := range resolved {
		if st := n.batched.find(t.ref()); handed && st != nil && st.phase == prepullv1.PhasePresent {
			present[t.image] = true
		}
	}
	images := []string{}
	for _, t := range p.targets {
		if !present[t.image] {
			images = append(images, t.image)
		}
	}
	out.missing[n.name] = images
	switch {
	case n.tainted:
		out.gate.Waiting++
	case len(images) > 0 && !p.now.Before(n.created.Add(p.gate.GateTimeout())):
		out.gate.TimedOut++
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
