package nodeimageset

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/peer"
)

// +kubebuilder:rbac:groups=prepull.io,resources=imageroutes,verbs=get;list;watch
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create

// Peers makes an agent fetch its images from peer agents first, and serve
// its node's to them (package peer).
type Peers struct {
	// Self is where this agent serves, as its status publishes it.
	Self prepullv1.Peer
	// Client fetches from holders.
	Client *peer.Client
	// Routes reads ImageRoutes by name: a cache the agent's watch of
	// ImageRoutes fills, so that an image waiting for holders looks every
	// second without asking the API server.
	Routes client.Reader

	mu       sync.Mutex
	wants    map[string]wanted
	unrouted map[string]time.Time
	// routed are the images whose routes changed since an image waiting
	// for its source last looked.
	routed map[string]bool
}

// routeChanged records that image's route changed.
func (p *Peers) routeChanged(image string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.routed == nil || len(p.routed) >= 4096 {
		p.routed = map[string]bool{}
	}
	p.routed[image] = true
}

// takeRouted reports whether image's route changed since the last call.
func (p *Peers) takeRouted(image string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := p.routed[image]
	delete(p.routed, image)
	return changed
}

// waitsForSource says a pending image's reason is a wait for holders or a
// registry grant, which its route's change may end.
func waitsForSource(reason string) bool {
	switch reason {
	case prepullv1.ReasonWaitingForPeers, prepullv1.ReasonPeersUnavailable, prepullv1.ReasonWaitingForRegistryBudget:
		return true
	}
	return false
}

// unroutedGrace is how long an agent waits for the controller to route an
// image before it fetches it from its registry.
const unroutedGrace = 30 * time.Second

// unroutedFor is how long image has been found not routed, now included.
func (p *Peers) unroutedFor(image string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unrouted == nil || len(p.unrouted) > 4096 {
		p.unrouted = map[string]time.Time{}
	}
	since, ok := p.unrouted[image]
	if !ok {
		p.unrouted[image], since = now, now
	}
	return now.Sub(since)
}

// self is where the agent serves peers, for its status; nil when peers
// are off.
func (p *Peers) self() *prepullv1.Peer {
	if p == nil {
		return nil
	}
	s := p.Self
	return &s
}

// wanted is the images a peer's plan names with an active owner, read at
// at and kept for wantsTTL: one read of its NodeImageSet answers all the
// requests a peer makes of this holder meanwhile.
type wanted struct {
	images map[string]bool
	at     time.Time
}

const wantsTTL = 10 * time.Second

// maxWanted bounds the peers whose plans a holder keeps.
const maxWanted = 256

// waitError says an image waits for a source: not an attempt at it.
type waitError struct{ reason, msg string }

func (e *waitError) Error() string { return e.msg }

// errPeersFailed means every holder failed; the controller then grants
// the registry.
var errPeersFailed = errors.New("every peer holding the image failed")

// fromPeers fetches e from the holders its ImageRoute lists, in random
// order, dropping each that fails (gone, slow, refusing, corrupt bytes)
// for the next. It returns the holder it fetched from; "" with nil when
// the node may fetch from the registry or archive itself (peers are off,
// the image is not routed, or the node holds a grant); a waitError when
// it must wait for holders or the registry budget.
func (r *Reconciler) fromPeers(ctx context.Context, e *entry) (string, error) {
	ps, ok := r.Store.(cri.PeerStore)
	if r.Peers == nil || !ok || !strings.Contains(e.Image, "@") {
		return "", nil
	}
	local := e.Archive != nil && r.archiveHere(e)
	if local {
		// Its own copy of the archive: nothing to wait for.
		return "", nil
	}
	route := &prepullv1.ImageRoute{}
	err := r.Peers.Routes.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(e.Image)}, route)
	if apierrors.IsNotFound(err) || (err == nil && route.Spec.Image != e.Image) {
		// The controller routes each image it hands within a moment; one
		// still not routed after unroutedGrace (its peers are off) comes
		// from the registry.
		if r.Peers.unroutedFor(e.Image, r.Clock.Now()) < unroutedGrace {
			return "", &waitError{reason: prepullv1.ReasonWaitingForPeers, msg: "the controller has not routed the image yet"}
		}
		return "", nil
	}
	if err != nil {
		return "", err
	}
	holders := slices.DeleteFunc(slices.Clone(route.Status.Holders), func(h prepullv1.Peer) bool { return h.Node == r.NodeName })
	rand.Shuffle(len(holders), func(i, j int) { holders[i], holders[j] = holders[j], holders[i] })
	log := ctrl.LoggerFrom(ctx).WithValues("image", e.Image)
	var errs []error
	for _, h := range holders {
		err := ps.FetchImage(ctx, e.Image, r.Peers.Client.Fetcher(h, e.Image), r.admit("the fetch from peers"))
		if err == nil {
			return h.Node, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if errors.As(err, new(*budgetError)) {
			// The node's disk, not the peer: wait for room.
			return "", err
		}
		log.Info("Peer failed; trying the next", "peer", h.Node, "error", err.Error())
		errs = append(errs, fmt.Errorf("%s: %w", h.Node, err))
	}
	switch {
	case e.Archive != nil:
		return "", &waitError{reason: prepullv1.ReasonWaitingForPeers, msg: "the archive is not on this node: waiting for a node that imported it"}
	case slices.Contains(route.Status.RegistryGrants, r.NodeName):
		return "", nil
	}
	switch {
	case len(errs) > 0:
		return "", &waitError{reason: prepullv1.ReasonPeersUnavailable, msg: fmt.Sprintf("%s: %v; waiting for the controller to grant the registry", errPeersFailed, errors.Join(errs...))}
	case route.Status.Waiting != "":
		return "", &waitError{reason: prepullv1.ReasonWaitingForRegistryBudget, msg: route.Status.Waiting}
	}
	return "", &waitError{reason: prepullv1.ReasonWaitingForPeers, msg: "no node holds the image yet; seed nodes are fetching it from its registry"}
}

// PeerWants is peer.Server's Wants: whether node's NodeImageSet (with its
// plan) names image with an owner that is not releasing.
func (r *Reconciler) PeerWants(ctx context.Context, node, image string) (bool, error) {
	now := r.Clock.Now()
	p := r.Peers
	p.mu.Lock()
	if w, ok := p.wants[node]; ok && now.Sub(w.at) < wantsTTL {
		p.mu.Unlock()
		return w.images[image], nil
	}
	p.mu.Unlock()
	set := &prepullv1.NodeImageSet{}
	images := map[string]bool{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Name: node}, set)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, err
	default:
		if err := r.plans.Spec(ctx, set); err != nil {
			return false, err
		}
		for _, e := range set.Spec.Images {
			if len(e.ActiveOwners()) > 0 {
				images[e.Image] = true
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wants == nil || len(p.wants) >= maxWanted {
		p.wants = map[string]wanted{}
	}
	p.wants[node] = wanted{images: images, at: now}
	return images[image], nil
}
