package prepulllist

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/imageref"
)

// +kubebuilder:rbac:groups=prepull.io,resources=imageroutes,verbs=get;list;watch;create;update;delete

// PeerRouting is how the controller routes images between nodes (--peers):
// which nodes fetch an image from its registry, and which serve it to the
// others.
type PeerRouting struct {
	// Seeds is how many nodes fetch an image that no node holds from its
	// registry at first; 0 means 1.
	Seeds int
	// Budgets are the registry budgets by host; Budget is a host's
	// without one there.
	Budgets map[string]RegistryBudget
	Budget  RegistryBudget
	// Interval is the time between two routing passes; 0 means half a
	// second.
	Interval time.Duration
}

// RegistryBudget bounds what the fleet fetches from one registry host:
// pulls at once, and pulls started within an hour; 0 is unbounded.
type RegistryBudget struct {
	Concurrent, PerHour int
}

// router is what routing keeps between passes.
type router struct {
	mu sync.Mutex
	// written are the routes' statuses as last written, by image.
	written map[string]prepullv1.ImageRouteStatus
	// grants are, by image, the nodes granted its registry and when.
	grants map[string]map[string]time.Time
	// started are, by registry host, the pulls started within the last
	// hour (grants, and the controller's reads of manifests); dirty says
	// they changed since they were saved (saveBudget).
	started map[string][]time.Time
	dirty   bool
	loaded  bool
}

// BudgetConfigMap, in the controller's namespace, keeps the registry
// budgets' pulls of the last hour (JSON under its key "started": by host,
// when each started), so that a new leader does not start a fresh hour.
const BudgetConfigMap = "prepull-registry-budget"

const budgetKey = "started"

// imageView is what the fleet says of one digest reference: who holds it
// (and serves peers), who still wants it, who found every holder failing.
type imageView struct {
	holders     []*prepullv1.Peer
	held        int
	waiting     []string
	unavailable []string
}

// routeView reads every node's entries and latest reports: for each
// digest reference a node's entry names with an owner that is not
// releasing, its view. Nodes are taken in name order.
func (f *fleet) routeView() map[string]*imageView {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.nodes))
	for n := range f.nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	out := map[string]*imageView{}
	for _, name := range names {
		rec := f.nodes[name]
		for i := range rec.images() {
			e := &rec.images()[i]
			if !strings.Contains(e.Image, "@") || len(e.ActiveOwners()) == 0 {
				continue
			}
			v := out[e.Image]
			if v == nil {
				v = &imageView{}
				out[e.Image] = v
			}
			rep := rec.report.find(e.Image)
			switch {
			case rep != nil && rep.phase == prepullv1.PhasePresent:
				v.held++
				if p := rec.report.peer; p != nil {
					v.holders = append(v.holders, p)
				}
			case rep != nil && (rep.phase == prepullv1.PhaseFailed || rep.phase == prepullv1.PhaseLazy || rep.phase == prepullv1.PhaseReleased):
			default:
				v.waiting = append(v.waiting, name)
				if rep != nil && rep.extra != nil && rep.extra.reason == prepullv1.ReasonPeersUnavailable {
					v.unavailable = append(v.unavailable, name)
				}
			}
		}
	}
	return out
}

// route runs routing passes every Interval until ctx ends (the leader's).
func (r *Reconciler) route(ctx context.Context) error {
	every := r.Peers.Interval
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.routeOnce(ctx); err != nil {
			ctrl.LoggerFrom(ctx).Info("Routing pass failed; trying again", "error", err.Error())
		}
	}, every)
	return nil
}

// routeOnce brings every ImageRoute up to what the fleet says, writing
// only those that changed, and deletes those of images no node wants.
func (r *Reconciler) routeOnce(ctx context.Context) error {
	rt := &r.router
	if err := r.loadRoutes(ctx); err != nil {
		return err
	}
	view := r.fleet.routeView()
	now := r.Clock.Now()
	rt.mu.Lock()
	want := make(map[string]prepullv1.ImageRouteStatus, len(view))
	for image, v := range view {
		want[image] = rt.decide(image, v, r.Peers, now, rt.written[image].Holders)
	}
	var gone []string
	for image := range rt.written {
		if _, ok := view[image]; !ok {
			gone = append(gone, image)
		}
	}
	rt.mu.Unlock()
	// A grant reaches a node only once the hour's pulls are saved.
	if err := r.saveBudget(ctx); err != nil {
		return err
	}
	for image, st := range want {
		rt.mu.Lock()
		old, ok := rt.written[image]
		rt.mu.Unlock()
		if ok && equality.Semantic.DeepEqual(old, st) {
			continue
		}
		if err := r.writeRoute(ctx, image, st); err != nil {
			return err
		}
		rt.mu.Lock()
		rt.written[image] = st
		rt.mu.Unlock()
	}
	for _, image := range gone {
		route := &prepullv1.ImageRoute{ObjectMeta: metav1.ObjectMeta{Name: prepullv1.ImageRouteName(image)}}
		if err := r.Delete(ctx, route); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		rt.mu.Lock()
		delete(rt.written, image)
		delete(rt.grants, image)
		rt.mu.Unlock()
	}
	return nil
}

// loadRoutes reads the routes a previous leader wrote, once, so that they
// are not written again unchanged, and those of images gone are deleted.
func (r *Reconciler) loadRoutes(ctx context.Context) error {
	rt := &r.router
	rt.mu.Lock()
	loaded := rt.loaded
	rt.mu.Unlock()
	if loaded {
		return nil
	}
	var routes prepullv1.ImageRouteList
	if err := r.APIReader.List(ctx, &routes); err != nil {
		return fmt.Errorf("list ImageRoutes: %w", err)
	}
	saved, err := r.loadBudget(ctx)
	if err != nil {
		return err
	}
	now := r.Clock.Now()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.written = map[string]prepullv1.ImageRouteStatus{}
	rt.grants = map[string]map[string]time.Time{}
	// Reads of manifests may have been charged already (charge).
	for host, times := range saved {
		rt.started[host] = append(rt.lastHour(host, now), times...)
		slices.SortFunc(rt.started[host], time.Time.Compare)
		rt.lastHour(host, now)
	}
	for _, route := range routes.Items {
		rt.written[route.Spec.Image] = route.Status
		// Grants of the previous leader still in flight: counted at once
		// by the budget (their start is in the saved hour).
		if len(route.Status.RegistryGrants) > 0 {
			rt.grants[route.Spec.Image] = map[string]time.Time{}
			for _, node := range route.Status.RegistryGrants {
				rt.grants[route.Spec.Image][node] = now
			}
		}
	}
	rt.loaded = true
	return nil
}

// loadBudget reads the hour's pulls a previous leader saved.
func (r *Reconciler) loadBudget(ctx context.Context) (map[string][]time.Time, error) {
	cm := &corev1.ConfigMap{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: BudgetConfigMap}, cm)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ConfigMap %s/%s: %w", r.Namespace, BudgetConfigMap, err)
	}
	var saved map[string][]time.Time
	if err := json.Unmarshal([]byte(cm.Data[budgetKey]), &saved); err != nil {
		ctrl.LoggerFrom(ctx).Info("The registry budgets' saved hour does not parse; starting a fresh hour", "configMap", BudgetConfigMap, "error", err.Error())
		return nil, nil
	}
	return saved, nil
}

// saveBudget writes the hour's pulls, when they changed, to BudgetConfigMap.
func (r *Reconciler) saveBudget(ctx context.Context) error {
	rt := &r.router
	now := r.Clock.Now()
	rt.mu.Lock()
	if !rt.dirty {
		rt.mu.Unlock()
		return nil
	}
	for host := range rt.started {
		rt.lastHour(host, now)
	}
	data, err := json.Marshal(rt.started)
	rt.dirty = false
	rt.mu.Unlock()
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{}
	key := client.ObjectKey{Namespace: r.Namespace, Name: BudgetConfigMap}
	err = r.APIReader.Get(ctx, key, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
			Labels: map[string]string{"app.kubernetes.io/part-of": "prepull"}}, Data: map[string]string{budgetKey: string(data)}}
		err = r.Create(ctx, cm)
	case err == nil:
		cm.Data = map[string]string{budgetKey: string(data)}
		err = r.Update(ctx, cm)
	}
	if err != nil {
		rt.mu.Lock()
		rt.dirty = true
		rt.mu.Unlock()
		return fmt.Errorf("save the registry budgets' hour in ConfigMap %s/%s: %w", key.Namespace, key.Name, err)
	}
	return nil
}

// writeRoute creates or updates image's ImageRoute with st.
func (r *Reconciler) writeRoute(ctx context.Context, image string, st prepullv1.ImageRouteStatus) error {
	route := &prepullv1.ImageRoute{}
	name := prepullv1.ImageRouteName(image)
	routeWrites.Inc()
	err := r.APIReader.Get(ctx, client.ObjectKey{Name: name}, route)
	if apierrors.IsNotFound(err) {
		route = &prepullv1.ImageRoute{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "prepull"}},
			Spec: prepullv1.ImageRouteSpec{Image: image}, Status: st}
		return r.Create(ctx, route)
	}
	if err != nil {
		return err
	}
	route.Spec.Image, route.Status = image, st
	return r.Update(ctx, route)
}

// keepHolders lists at most MaxHolders of holders: those of listed that
// still hold the image, in place, then others in name order. A route so
// changes once per holder added (or lost), however many nodes come to
// hold the image.
func keepHolders(listed []prepullv1.Peer, holders []*prepullv1.Peer) []prepullv1.Peer {
	byNode := make(map[string]*prepullv1.Peer, len(holders))
	for _, h := range holders {
		byNode[h.Node] = h
	}
	var out []prepullv1.Peer
	for _, l := range listed {
		if h, ok := byNode[l.Node]; ok {
			out = append(out, *h)
			delete(byNode, l.Node)
		}
	}
	for _, h := range holders {
		if len(out) >= prepullv1.MaxHolders {
			break
		}
		if _, ok := byNode[h.Node]; ok {
			out = append(out, *h)
		}
	}
	return out
}

// decide is image's route: its holders (keepHolders); its grants — those still
// waiting keep theirs, the first waiting nodes get one while no node holds
// it and fewer than Seeds are granted, and a node whose holders all
// failed gets one — each new grant within the budget of the image's host;
// and why the others wait when that budget is spent. The caller holds
// rt.mu.
func (rt *router) decide(image string, v *imageView, p *PeerRouting, now time.Time, listed []prepullv1.Peer) prepullv1.ImageRouteStatus {
	st := prepullv1.ImageRouteStatus{Holders: keepHolders(listed, v.holders)}
	granted := rt.grants[image]
	if granted == nil {
		granted = map[string]time.Time{}
		rt.grants[image] = granted
	}
	for node := range granted {
		if !slices.Contains(v.waiting, node) {
			delete(granted, node)
		}
	}
	seeds := max(p.Seeds, 1)
	var asks []string
	for _, node := range v.waiting {
		if _, ok := granted[node]; ok {
			continue
		}
		if (v.held == 0 && len(granted)+len(asks) < seeds) || slices.Contains(v.unavailable, node) {
			asks = append(asks, node)
		}
	}
	host := registryHost(image)
	budget := p.budgetOf(host)
	rt.lastHour(host, now)
	for _, node := range asks {
		if msg := budget.spent(host, rt.inFlight(host), rt.started[host], now); msg != "" {
			st.Waiting = msg
			break
		}
		granted[node] = now
		rt.start(host, 1, now)
	}
	for node := range granted {
		st.RegistryGrants = append(st.RegistryGrants, node)
	}
	slices.Sort(st.RegistryGrants)
	return st
}

// budgetOf is host's registry budget.
func (p *PeerRouting) budgetOf(host string) RegistryBudget {
	if b, ok := p.Budgets[host]; ok {
		return b
	}
	return p.Budget
}

// lastHour drops host's pulls started an hour or more before now, and
// returns those left. The caller holds rt.mu.
func (rt *router) lastHour(host string, now time.Time) []time.Time {
	if rt.started == nil {
		rt.started = map[string][]time.Time{}
	}
	rt.started[host] = slices.DeleteFunc(rt.started[host], func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	return rt.started[host]
}

// start records n pulls of host started at now. The caller holds rt.mu.
func (rt *router) start(host string, n int, now time.Time) {
	for range n {
		rt.started[host] = append(rt.lastHour(host, now), now)
	}
	rt.dirty = rt.dirty || n > 0
}

// charge records a pull of host started now by the controller's read of a
// manifest, if budget b's pulls an hour allow one more; else it says why
// not.
func (rt *router) charge(host string, b RegistryBudget, now time.Time) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if msg := (RegistryBudget{PerHour: b.PerHour}).spent(host, 0, rt.lastHour(host, now), now); msg != "" {
		return msg
	}
	rt.start(host, 1, now)
	return ""
}

// count records n more pulls of host started now, whatever the budget
// says: the reads were made.
func (rt *router) count(host string, n int, now time.Time) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.start(host, n, now)
}

// inFlight counts the grants of images of host. The caller holds rt.mu.
func (rt *router) inFlight(host string) int {
	n := 0
	for image, granted := range rt.grants {
		if registryHost(image) == host {
			n += len(granted)
		}
	}
	return n
}

// spent says why a new pull from host may not start now, or "".
func (b RegistryBudget) spent(host string, inFlight int, hour []time.Time, now time.Time) string {
	switch {
	case b.Concurrent > 0 && inFlight >= b.Concurrent:
		return fmt.Sprintf("the registry budget of %s is spent: %d pulls at once (%d allowed)", host, inFlight, b.Concurrent)
	case b.PerHour > 0 && len(hour) >= b.PerHour:
		return fmt.Sprintf("the registry budget of %s is spent: %d pulls started within the hour (%d allowed); the next may start at %s",
			host, len(hour), b.PerHour, hour[0].Add(time.Hour).UTC().Format(time.RFC3339))
	}
	return ""
}

// registryHost is the registry host of image, "" when it does not parse.
func registryHost(image string) string {
	host, err := imageref.Host(image)
	if err != nil {
		return ""
	}
	return host
}
