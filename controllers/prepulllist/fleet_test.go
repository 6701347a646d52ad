package prepulllist

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/imageref"
)

// The informer passes objects it already holds through its transform again
// (on a relist, and at the end of a streaming list): the fleet must keep
// what the agent reported, not read the stripped object as "no reports".
func TestObserveIsIdempotent(t *testing.T) {
	f := newFleet(clock.RealClock{})
	set := &prepullv1.NodeImageSet{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "7"},
		Status: prepullv1.NodeImageSetStatus{Images: []prepullv1.NodeImageStatus{
			{Image: "r/app@sha256:aa", Phase: prepullv1.PhasePresent, PinOwners: []string{"ns/l"}},
			{Image: "r/app:1", Phase: prepullv1.PhaseFailed, Reason: "NotFound"},
		}},
	}
	stripped := f.observe(set)
	if len(stripped.Status.Images) != 0 || stripped.ResourceVersion != "7" {
		t.Fatalf("stripped object: %+v", stripped)
	}
	again := f.observe(stripped)
	if again != stripped {
		t.Errorf("a stripped object came back changed: %+v", again)
	}
	rs := f.nodes["n1"].report
	if len(rs.listed) != 2 {
		t.Fatalf("reports after a second pass: %+v", rs)
	}
	if r := rs.find("r/app@sha256:aa"); r == nil || r.phase != prepullv1.PhasePresent {
		t.Errorf("report of the digest: %+v", r)
	}
	if r := rs.find("r/app:1"); r == nil || r.extra == nil || r.extra.reason != "NotFound" {
		t.Errorf("report of the failed tag: %+v", r)
	}
	// A new version of the object is observed anew.
	set.Status.Images = set.Status.Images[:1]
	f.observe(set.DeepCopy())
	if len(f.nodes["n1"].report.listed) != 1 {
		t.Errorf("reports of a new version: %+v", f.nodes["n1"].report)
	}
}

// A plan goes once no node has named it for the grace; one a node names,
// or one a write under way may name, stays.
func TestUnusedPlans(t *testing.T) {
	now := time.Now()
	c := clocktesting.NewFakeClock(now)
	f := newFleet(c)
	f.loaded = true
	for _, name := range []string{"plan-a", "plan-b", "plan-c"} {
		f.plans[name] = &planRec{name: name, seen: now}
	}
	f.nodes = map[string]*nodeRec{"n1": {written: "plan-a"}, "n2": {}}
	if got := f.unused(time.Minute); len(got) != 0 {
		t.Fatalf("unused at once: %v", got)
	}
	c.Step(time.Minute)
	got := f.unused(time.Minute)
	slices.Sort(got)
	if !slices.Equal(got, []string{"plan-b", "plan-c"}) {
		t.Errorf("unused after the grace: %v, want plan-b and plan-c", got)
	}
	f.writing = 1
	if got := f.unused(time.Minute); len(got) != 0 {
		t.Errorf("unused while a write is under way: %v", got)
	}
}

// Equal sets of images share a plan's name; any difference gives another.
func TestImagePlanName(t *testing.T) {
	a := []prepullv1.NodeImage{{Image: "r/app@sha256:aa", Owners: []prepullv1.ImageOwner{{List: "ns/l", Tags: []string{"r/app:1"}}}}}
	b := []prepullv1.NodeImage{{Image: "r/app@sha256:aa", Owners: []prepullv1.ImageOwner{{List: "ns/l", Tags: []string{"r/app:1"}}}}}
	if prepullv1.ImagePlanName(a) != prepullv1.ImagePlanName(b) {
		t.Error("equal images, two plan names")
	}
	b[0].Owners[0].Releasing = true
	if prepullv1.ImagePlanName(a) == prepullv1.ImagePlanName(b) {
		t.Error("a releasing owner did not change the plan's name")
	}
	if n := prepullv1.ImagePlanName(a); !regexp.MustCompile(`^plan-[0-9a-f]{32}$`).MatchString(n) {
		t.Errorf("plan name %q does not match the API's pattern", n)
	}
}

// A status that names its plan lists only what differs; the images it
// leaves out are read as present as asked, pinned by their active owners.
func TestReportsOfAPlan(t *testing.T) {
	f := newFleet(clock.RealClock{})
	images := []prepullv1.NodeImage{
		{Image: "r/a@sha256:aa", Owners: []prepullv1.ImageOwner{{List: "ns/one"}, {List: "ns/two", Releasing: true}}},
		{Image: "r/b@sha256:bb", Owners: []prepullv1.ImageOwner{{List: "ns/one"}}},
	}
	name := prepullv1.ImagePlanName(images)
	// Observed before the fleet knows the plan (the informer starts before
	// the fleet is loaded): nothing is read as present yet.
	set := &prepullv1.NodeImageSet{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "1"},
		Status: prepullv1.NodeImageSetStatus{Plan: name, PlanPresent: 1, Images: []prepullv1.NodeImageStatus{
			{Image: "r/b@sha256:bb", Phase: prepullv1.PhaseFailed, Reason: "NotFound"},
		}},
	}
	f.observe(set.DeepCopy())
	if r := f.nodes["n1"].report.find("r/a@sha256:aa"); r != nil {
		t.Errorf("an image of an unknown plan reads %+v, want no report", r)
	}
	f.plans[name] = &planRec{name: name, images: images, planned: presentAsAsked(images)}
	set.ResourceVersion = "2"
	f.observe(set)
	rs := f.nodes["n1"].report
	if r := rs.find("r/a@sha256:aa"); r == nil || r.phase != prepullv1.PhasePresent || r.pins != "ns/one" {
		t.Errorf("the image left out reads %+v, want Present pinned by ns/one", r)
	}
	if r := rs.find("r/b@sha256:bb"); r == nil || r.phase != prepullv1.PhaseFailed {
		t.Errorf("the listed image reads %+v, want its Failed report", r)
	}
	if r := rs.find("r/c@sha256:cc"); r != nil {
		t.Errorf("an image of no plan reads %+v", r)
	}
}

// Nodes whose written specs are equal share one; a list that changes one
// node's spec changes a copy of it, and the others keep theirs.
func TestSharedSpecsAreCopiedOnChange(t *testing.T) {
	c := clocktesting.NewFakeClock(time.Now())
	f := newFleet(c)
	r := &Reconciler{fleet: f}
	nodes := func() []*node {
		return []*node{{name: "a", selected: true}, {name: "b", selected: false}, {name: "c", selected: true}}
	}
	app := target{want: want{image: "r/app:1", Ref: imageref.Ref{Repo: "r/app", Tag: "r/app:1"}}, digest: "sha256:aa"}
	app.share()
	first := &plan{owner: prepullv1.ImageOwner{List: "ns/first"}, targets: []target{app}, maxConcurrent: 10}
	for _, n := range []string{"a", "b", "c"} {
		// Every node selected by the first list.
		r.apply(first, []*node{{name: n, selected: true}})
	}
	c.Step(flushMax)
	named, _ := f.take()
	if len(named) != 3 || named["a"] != named["b"] || named["a"] == "" {
		t.Fatalf("plans named: %v", named)
	}
	if f.nodes["a"].plan == nil || f.nodes["a"].plan != f.nodes["b"].plan || f.nodes["b"].plan != f.nodes["c"].plan {
		t.Fatal("equal written specs are not shared")
	}
	f.writing--
	shared := f.nodes["a"].plan
	before := slices.Clone(shared.images)

	// A second list selects a and c only.
	web := target{want: want{image: "r/web:2", Ref: imageref.Ref{Repo: "r/web", Tag: "r/web:2"}}, digest: "sha256:bb"}
	web.share()
	second := &plan{owner: prepullv1.ImageOwner{List: "ns/second"}, targets: []target{web}, maxConcurrent: 10}
	r.apply(second, nodes())
	if f.nodes["b"].plan != shared {
		t.Error("b, which the second list does not select, lost its shared spec")
	}
	if f.nodes["a"].plan != nil || f.nodes["c"].plan != nil || f.nodes["a"].own == f.nodes["c"].own {
		t.Error("a changed node still holds a shared spec")
	}
	if !reflect.DeepEqual(shared.images, before) {
		t.Errorf("the shared spec changed: %+v, was %+v", shared.images, before)
	}
	if err := f.checkPlans(); err != nil {
		t.Error(err)
	}
	if a := f.nodes["a"].images(); len(a) != 2 || a[1].Image != web.ref() {
		t.Errorf("a's spec: %+v", a)
	}

	// The first list goes from a, which holds a copy of its own (its agent
	// never reported the image, so the entry goes at once): b's spec, shared,
	// is untouched.
	first.deleting = true
	r.apply(first, []*node{{name: "a", selected: true}})
	if got := f.nodes["a"].images(); len(got) != 1 || got[0].Image != web.ref() {
		t.Errorf("a's spec after the first list went: %+v", got)
	}
	if !reflect.DeepEqual(f.nodes["b"].images(), before) {
		t.Errorf("b's spec changed: %+v", f.nodes["b"].images())
	}
}

// A node whose only change is the drop of entries its agent released is
// written with its next change, or once the fleet wrote nothing else for
// tidyQuiet, and at the latest tidyMax after the first such mark.
func TestTidyWrites(t *testing.T) {
	c := clocktesting.NewFakeClock(time.Now())
	f := newFleet(c)
	for _, n := range []string{"a", "b", "c"} {
		f.record(n).own = &prepullv1.NodeImageSetSpec{}
	}
	taken := func() []string {
		named, _ := f.take()
		if named != nil {
			f.writing--
		}
		return slices.Sorted(maps.Keys(named))
	}
	write := func(node string) []string {
		f.markDirty(f.nodes[node])
		c.Step(flushMax)
		return taken()
	}
	if got := write("b"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("first write: %v", got)
	}
	f.markTidy(f.nodes["a"])
	c.Step(flushMax)
	if got := taken(); got != nil {
		t.Errorf("a tidy node was written %s after another write: %v", flushMax, got)
	}
	// Its next change carries it.
	if got := write("a"); !slices.Equal(got, []string{"a"}) || f.tidy != 0 {
		t.Errorf("a tidy node with a change: %v, tidy %v", got, f.tidy)
	}
	// Alone, it goes once nothing else was written for tidyQuiet.
	f.markTidy(f.nodes["a"])
	if got := write("b"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("a write of another node took the tidy one: %v", got)
	}
	c.Step(tidyQuiet - time.Millisecond)
	if got := taken(); got != nil {
		t.Errorf("%s after another write: %v", tidyQuiet-time.Millisecond, got)
	}
	c.Step(time.Millisecond)
	if got := taken(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("after %s with no other write: %v", tidyQuiet, got)
	}
	// A fleet that never stops writing writes tidy nodes after tidyMax.
	f.markTidy(f.nodes["a"])
	for i := 0; time.Duration(i+1)*flushMax < tidyMax; i++ {
		got := write("b")
		if slices.Contains(got, "a") {
			t.Fatalf("tidy node written %s after its mark", time.Duration(i+1)*flushMax)
		}
	}
	if got := write("c"); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("after %s: %v", tidyMax, got)
	}
	// A tidy node does not hold back a deleted list's finalizer.
	f.markTidy(f.nodes["a"])
	if f.pending() {
		t.Error("a tidy node counts as a pending change")
	}
}

// Many tidy nodes are written tidyBatch a flush, so that urgent writes
// never wait behind them.
func TestTidyWritesInBatches(t *testing.T) {
	c := clocktesting.NewFakeClock(time.Now())
	f := newFleet(c)
	n := 2*tidyBatch + 1
	for i := range n {
		node := fmt.Sprintf("n%04d", i)
		f.record(node).own = &prepullv1.NodeImageSetSpec{}
		f.markTidy(f.nodes[node])
	}
	c.Step(tidyQuiet)
	var sizes []int
	seen := map[string]bool{}
	for range 4 {
		named, _ := f.take()
		if named == nil {
			break
		}
		f.writing--
		sizes = append(sizes, len(named))
		for node := range named {
			if seen[node] {
				t.Errorf("%s written twice", node)
			}
			seen[node] = true
		}
	}
	if !slices.Equal(sizes, []int{tidyBatch, tidyBatch, 1}) {
		t.Errorf("tidy writes of %d nodes: %v, want %d, %d, 1", n, sizes, tidyBatch, tidyBatch)
	}
	// An urgent write takes a batch of tidy nodes along.
	for i := range tidyBatch + 1 {
		f.markTidy(f.nodes[fmt.Sprintf("n%04d", i)])
	}
	f.record("n9999").own = &prepullv1.NodeImageSetSpec{}
	f.markDirty(f.nodes["n9999"])
	c.Step(tidyMax)
	named, _ := f.take()
	if _, ok := named["n9999"]; !ok || len(named) != tidyBatch+1 || f.tidy != 1 {
		t.Errorf("urgent write with tidy nodes due: %d nodes, %d tidy left", len(named), f.tidy)
	}
}

// A run over nodes that share their specs works out what a shared spec
// alone decides once, for all the nodes that hold it: it must leave every
// node, and report, exactly what a run over private copies of the same
// specs does.
func TestRunOverSharedSpecs(t *testing.T) {
	const list, other = "ns/a", "ns/b"
	tag := func(repo string) string { return repo + ":v1" }
	ref := func(repo, d string) string { return repo + "@sha256:" + d }
	owner := func(l string, releasing bool, tags ...string) prepullv1.ImageOwner {
		return prepullv1.ImageOwner{List: l, Releasing: releasing, Tags: tags}
	}
	// The list wants r/app:v1 (moved to digest 2) and r/web:v1 (digest 9).
	var targets []target
	for _, tg := range []struct{ repo, digest string }{{"r/app", "2"}, {"r/web", "9"}} {
		w, err := parseWant(tag(tg.repo))
		if err != nil {
			t.Fatal(err)
		}
		tt := target{want: w, digest: "sha256:" + tg.digest}
		tt.share()
		targets = append(targets, tt)
	}
	specs := []*prepullv1.NodeImageSetSpec{
		// Handed already: nothing to change.
		{Images: []prepullv1.NodeImage{
			{Image: ref("r/app", "2"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/app"))}},
			{Image: ref("r/web", "9"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/web")), owner(other, false, tag("r/web"))}},
		}},
		// The old digest: the tag moves, the old entry is released.
		{Images: []prepullv1.NodeImage{
			{Image: ref("r/app", "1"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/app")), owner(other, false, tag("r/app"))}},
			{Image: ref("r/web", "9"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/web"))}},
		}},
		// Handed, with the old digest releasing: dropped where the agent
		// confirmed it, kept where it did not.
		{Images: []prepullv1.NodeImage{
			{Image: ref("r/app", "1"), Owners: []prepullv1.ImageOwner{owner(list, true)}},
			{Image: ref("r/app", "2"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/app"))}},
			{Image: ref("r/web", "9"), Owners: []prepullv1.ImageOwner{owner(list, false, tag("r/web"))}},
		}},
		// Another list's only.
		{Images: []prepullv1.NodeImage{{Image: ref("r/db", "5"), Owners: []prepullv1.ImageOwner{owner(other, false, tag("r/db"))}}}},
		// Nothing yet.
		{},
	}
	plans := make([]*planRec, len(specs))
	for i, s := range specs {
		plans[i] = &planRec{images: s.Images}
	}
	build := func(shared bool) []*node {
		var nodes []*node
		for i := range 60 {
			n := &node{name: fmt.Sprintf("n%02d", i), selected: i%7 != 3, spec: spec{plan: plans[i%len(specs)]}}
			if !shared {
				n.own, n.plan = specs[i%len(specs)].DeepCopy(), nil
			}
			// Agents at every stage: nothing reported, pulling, present,
			// the old digest's pin gone or not.
			var rs []report
			switch i % 4 {
			case 1:
				rs = []report{{image: ref("r/app", "2"), phase: prepullv1.PhasePulling}}
			case 2:
				rs = []report{{image: ref("r/app", "1"), phase: prepullv1.PhasePresent, pins: list},
					{image: ref("r/app", "2"), phase: prepullv1.PhasePresent, pins: list},
					{image: ref("r/web", "9"), phase: prepullv1.PhasePresent, pins: list}}
			case 3:
				rs = []report{{image: ref("r/app", "1"), phase: prepullv1.PhaseReleased},
					{image: ref("r/app", "2"), phase: prepullv1.PhasePresent, pins: list},
					{image: ref("r/web", "9"), phase: prepullv1.PhaseFailed}}
			}
			n.batched, n.latest = reports{listed: rs}, reports{listed: rs}
			nodes = append(nodes, n)
		}
		return nodes
	}
	before := make([]*prepullv1.NodeImageSetSpec, len(specs))
	for i, s := range specs {
		before[i] = s.DeepCopy()
	}
	for _, c := range []struct {
		deleting      bool
		maxConcurrent int
	}{{false, 9}, {false, 60}, {true, 9}} {
		deleting := c.deleting
		p := func() *plan {
			return &plan{owner: prepullv1.ImageOwner{List: list}, targets: targets, maxConcurrent: c.maxConcurrent, deleting: deleting}
		}
		sharedNodes, privateNodes := build(true), build(false)
		got, want := p().run(sharedNodes), p().run(privateNodes)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("deleting %v: outcome over shared specs %+v, over private copies %+v", deleting, got, want)
		}
		changed := 0
		for i := range sharedNodes {
			s, q := sharedNodes[i], privateNodes[i]
			if !reflect.DeepEqual(s.images(), q.images()) || s.changed != q.changed || s.urgent != q.urgent {
				t.Errorf("deleting %v: node %s over a shared spec: %+v (changed %v, urgent %v); over a private copy: %+v (changed %v, urgent %v)",
					deleting, s.name, s.images(), s.changed, s.urgent, q.images(), q.changed, q.urgent)
			}
			if q.changed {
				changed++
			}
		}
		t.Logf("case %+v: %d changed", c, changed)
		if changed == 0 || changed == len(privateNodes) {
			t.Errorf("deleting %v: %d of %d nodes changed: the case tests nothing", deleting, changed, len(privateNodes))
		}
	}
	for i := range specs {
		if !reflect.DeepEqual(specs[i], before[i]) {
			t.Errorf("shared spec %d changed in place: %+v", i, specs[i])
		}
	}
}

// A node whose agent reports an image Lazy (its layers left remote by a
// lazy-pulling snapshotter) is settled for the rollout and counted as that
// image's failure with the agent's reason, never ready.
func TestALazyImageIsANodesFailureNotReady(t *testing.T) {
	const list = "ns/a"
	w, err := parseWant("r/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	tt := target{want: w, digest: "sha256:2"}
	tt.share()
	image := tt.ref()
	handed := &prepullv1.NodeImageSetSpec{Images: []prepullv1.NodeImage{
		{Image: image, Owners: []prepullv1.ImageOwner{{List: list, Tags: tt.tags}}},
	}}
	rs := reports{listed: []report{{image: image, phase: prepullv1.PhaseLazy,
		extra: &reportExtra{reason: "LazySnapshotter", message: "1 of the image's 1 layers are remote snapshots"}}}}
	n := &node{name: "n1", selected: true, spec: spec{own: handed}, batched: rs, latest: rs}
	p := &plan{owner: prepullv1.ImageOwner{List: list}, targets: []target{tt}, maxConcurrent: 1}
	if !p.settled(n, p.targets) {
		t.Errorf("a Lazy image is not settled: the rollout would wait on it for ever")
	}
	out := p.run([]*node{n})
	if out.nodes.Ready != 0 || out.nodes.Failed != 1 || len(out.failures) != 1 || out.failures[0].Reason != "LazySnapshotter" {
		t.Errorf("outcome %+v, failures %+v: want the node failed with LazySnapshotter", out.nodes, out.failures)
	}
}

// A route keeps the holders it lists while they hold the image, and adds
// others only to fill its MaxHolders: its writes grow with its holders,
// not with the nodes that come to hold the image.
func TestRoutesKeepTheirHolders(t *testing.T) {
	peer := func(i int) *prepullv1.Peer {
		return &prepullv1.Peer{Node: fmt.Sprintf("n%04d", i), Address: fmt.Sprintf("10.0.%d.%d:8085", i/256, i%256), CertSHA256: "c"}
	}
	var listed []prepullv1.Peer
	changes := 0
	// Nodes come to hold the image in an order unrelated to their names.
	var holders []*prepullv1.Peer
	for i := range 5000 {
		holders = append(holders, peer((i*7919)%5000))
		slices.SortFunc(holders, func(a, b *prepullv1.Peer) int { return strings.Compare(a.Node, b.Node) })
		next := keepHolders(listed, holders)
		if !reflect.DeepEqual(next, listed) {
			changes++
		}
		listed = next
	}
	if len(listed) != prepullv1.MaxHolders || changes != prepullv1.MaxHolders {
		t.Errorf("%d holders listed after %d changes; want %d and %d", len(listed), changes, prepullv1.MaxHolders, prepullv1.MaxHolders)
	}
	// A listed holder gone is replaced, and only it.
	gone := listed[3].Node
	holders = slices.DeleteFunc(holders, func(p *prepullv1.Peer) bool { return p.Node == gone })
	next := keepHolders(listed, holders)
	kept := 0
	for _, l := range listed {
		if slices.Contains(next, l) {
			kept++
		}
	}
	if len(next) != prepullv1.MaxHolders || slices.ContainsFunc(next, func(p prepullv1.Peer) bool { return p.Node == gone }) || kept != prepullv1.MaxHolders-1 {
		t.Errorf("after %s left: %+v", gone, next)
	}
}
