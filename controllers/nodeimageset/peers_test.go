package nodeimageset_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/peer"
)

// TestAgentFetchesFromPeers: an agent with peers on fetches an image from
// the holders its ImageRoute lists, the registry stopped; a holder that
// dies in the middle of a blob is dropped for the next holder; with every
// holder failing it waits (PeersUnavailable) until it has another holder
// or a grant of the registry, the last resort; and its status says where
// each image came from, as does a new agent's on the same runtime.
func TestAgentFetchesFromPeers(t *testing.T) {
	e := setup(t)
	holderImages := e.images
	app := e.public.MustPushRandom(t, "peers/app:1", 512<<10, 2)
	tool := e.public.MustPushRandom(t, "peers/tool:1", 256<<10, 1)
	for _, img := range []testground.Pushed{app} {
		if _, err := holderImages.PullImage(ctx, img.Digest, nil); err != nil {
			t.Fatal(err)
		}
	}
	wants := func(context.Context, string, string) (bool, error) { return true, nil }
	srv := peer.NewServer(e.store, anyToken{}, wants, 4)
	good := servePeer(t, "good", srv)
	dying := servePeer(t, "dying", cutting{srv})

	fetcher := testground.StartContainerd(t)
	fetcher.TrustRegistry(e.public)
	images, store := fetcher.Clients(t)
	e.agent(t, "peer-node", func(r *nodeimageset.Reconciler) {
		r.Images, r.Store, r.Peers = images, store, fetchingPeers(t, e.c)
	})
	route := func(image string, st prepullv1.ImageRouteStatus) { e.route(t, image, st) }
	peerImages, peerBytes := fetchedMetric(t, prepullv1.FetchedFromPeer)
	registryImages, _ := fetchedMetric(t, prepullv1.FetchedFromRegistry)
	e.public.Stop()
	route(app.Digest, prepullv1.ImageRouteStatus{Holders: []prepullv1.Peer{dying}})
	e.setSpec(t, "peer-node", entry(app.Digest, owner("peers/list", app.Tag)))
	e.phase(t, "peer-node", app.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
		if st.Reason != prepullv1.ReasonPeersUnavailable || !strings.Contains(st.LastError, "dying") {
			return fmt.Errorf("reason %s: %s", st.Reason, st.LastError)
		}
		return nil
	})
	route(app.Digest, prepullv1.ImageRouteStatus{Holders: []prepullv1.Peer{dying, good}})
	e.phase(t, "peer-node", app.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if st.Source != prepullv1.FetchedFromPeer || st.FetchedFrom != "good" {
			return fmt.Errorf("source %s from %q", st.Source, st.FetchedFrom)
		}
		return nil
	})
	if got, err := images.ImageStatus(ctx, app.Tag); err != nil || got.ID != app.ID {
		t.Errorf("tag %s on the fetching node: %+v, %v; want image %s", app.Tag, got, err, app.ID)
	}
	if n, b := fetchedMetric(t, prepullv1.FetchedFromPeer); n-peerImages != 1 || b-peerBytes < 512<<10 {
		t.Errorf("metrics: %v images, %v bytes fetched from peers; want 1 image of at least 512 KiB", n-peerImages, b-peerBytes)
	}

	// The registry, the last resort: a grant, and the holder failing.
	e.public.Start()
	route(tool.Digest, prepullv1.ImageRouteStatus{Holders: []prepullv1.Peer{dying}, RegistryGrants: []string{"peer-node"}})
	e.setSpec(t, "peer-node", entry(app.Digest, owner("peers/list", app.Tag)), entry(tool.Digest, owner("peers/list", tool.Tag)))
	e.phase(t, "peer-node", tool.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if st.Source != prepullv1.FetchedFromRegistry {
			return fmt.Errorf("source %s", st.Source)
		}
		return nil
	})
	if n, _ := fetchedMetric(t, prepullv1.FetchedFromRegistry); n-registryImages != 1 {
		t.Errorf("metrics: %v images fetched from the registry, want 1", n-registryImages)
	}

	// An agent started afresh on that runtime, as after a restart, finds
	// both present and tells where they came from.
	e.agent(t, "peer-node-again", func(r *nodeimageset.Reconciler) { r.Images, r.Store = images, store })
	e.setSpec(t, "peer-node-again", entry(app.Digest, owner("peers/list", app.Tag)), entry(tool.Digest, owner("peers/list", tool.Tag)))
	for img, want := range map[string]prepullv1.ImageFetchSource{app.Digest: prepullv1.FetchedFromPeer, tool.Digest: prepullv1.FetchedFromRegistry} {
		e.phase(t, "peer-node-again", img, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if st.Source != want || (want == prepullv1.FetchedFromPeer) != (st.FetchedFrom == "good") {
				return fmt.Errorf("source %s from %q, want %s", st.Source, st.FetchedFrom, want)
			}
			return nil
		})
	}
}

// fetchedMetric is what the agents' metrics say they made present from
// source: images, and their bytes.
func fetchedMetric(t *testing.T, source prepullv1.ImageFetchSource) (images, bytes float64) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "source" && l.GetValue() == string(source) }) {
				continue
			}
			switch f.GetName() {
			case "prepull_agent_images_fetched_total":
				images = m.GetCounter().GetValue()
			case "prepull_agent_image_bytes_fetched_total":
				bytes = m.GetCounter().GetValue()
			}
		}
	}
	return images, bytes
}

// route writes image's ImageRoute with status st, as the controller does.
func (e *env) route(t *testing.T, image string, st prepullv1.ImageRouteStatus) {
	t.Helper()
	r := &prepullv1.ImageRoute{}
	err := e.c.Get(ctx, client.ObjectKey{Name: prepullv1.ImageRouteName(image)}, r)
	if err != nil {
		r = &prepullv1.ImageRoute{ObjectMeta: metav1.ObjectMeta{Name: prepullv1.ImageRouteName(image)}, Spec: prepullv1.ImageRouteSpec{Image: image}, Status: st}
		if err := e.c.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		return
	}
	r.Status = st
	if err := e.c.Update(ctx, r); err != nil {
		t.Fatal(err)
	}
}

// TestAFetchFromPeersWaitsForTheDiskBudget: a fetch from a peer is held to
// the agent's disk budget as a pull is: on a real 32 MiB filesystem with a
// budget of 80%, a 14 MiB image (at least 28 MiB written) waits Pending,
// DiskBudgetExceeded, with none of its layers fetched and its holder not
// dropped; once the filesystem has room, it is fetched from that holder.
func TestAFetchFromPeersWaitsForTheDiskBudget(t *testing.T) {
	e := setup(t)
	big, holder := e.heldByAPeer(t, "peers/big:1", 14<<20)
	root, images, store := e.containerdOnTmpfs(t, 32<<20)
	e.agent(t, "peer-node", func(r *nodeimageset.Reconciler) {
		r.Images, r.Store, r.DiskBudget, r.Peers = images, store, 0.8, fetchingPeers(t, e.c)
	})
	e.public.Stop()
	e.route(t, big.Digest, prepullv1.ImageRouteStatus{Holders: []prepullv1.Peer{holder}})
	e.setSpec(t, "peer-node", entry(big.Digest, owner("peers/list", big.Tag)))
	st := e.phase(t, "peer-node", big.Digest, prepullv1.PhasePending, func(st *prepullv1.NodeImageStatus) error {
		if st.Reason != nodeimageset.ReasonDiskBudget {
			return fmt.Errorf("reason %s, error %q", st.Reason, st.LastError)
		}
		return nil
	})
	for _, want := range []string{"the fetch from peers writes at least 28 MiB", "past the agent's disk budget of 80.0%"} {
		if !strings.Contains(st.LastError, want) {
			t.Errorf("message %q: want %q", st.LastError, want)
		}
	}
	if st.Attempts != 0 {
		t.Errorf("%d attempts counted past the budget", st.Attempts)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(root, &fs); err != nil {
		t.Fatal(err)
	}
	if used := int64(fs.Blocks-fs.Bfree) * fs.Bsize; used > 8<<20 {
		t.Errorf("%d MiB written on the fetching node's filesystem: the layer was fetched past the budget", used>>20)
	}
	if err := syscall.Mount("tmpfs", root, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
		t.Fatalf("grow the tmpfs: %v", err)
	}
	e.phase(t, "peer-node", big.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if st.Source != prepullv1.FetchedFromPeer || st.FetchedFrom != "holder" {
			return fmt.Errorf("source %s from %q", st.Source, st.FetchedFrom)
		}
		return nil
	})
}

// TestAHolderReadsACallersPlanOnce: a holder answers whether a peer's plan
// names an image from one read of the peer's NodeImageSet, for every
// image the peer asks within 10 s; an image only a releasing list owns, or
// not named, is refused; 10 s later the plan is read again.
func TestAHolderReadsACallersPlanOnce(t *testing.T) {
	e := setup(t)
	clock := clocktesting.NewFakeClock(time.Now())
	reads := &countingReader{node: "caller"}
	var holder *nodeimageset.Reconciler
	e.agent(t, "holder", func(r *nodeimageset.Reconciler) {
		reads.Reader, r.APIReader, r.Clock = r.APIReader, reads, clock
		r.Peers = &nodeimageset.Peers{Self: prepullv1.Peer{Node: "holder", Address: "127.0.0.1:1", CertSHA256: strings.Repeat("b", 64)},
			Client: &peer.Client{}, Routes: e.c}
		holder = r
	})
	image := func(c byte) string { return "r.example/app@sha256:" + strings.Repeat(string(c), 64) }
	releasing := entry(image('c'), owner("peers/gone"))
	releasing.Owners[0].Releasing = true
	e.setSpec(t, "caller", entry(image('a'), owner("peers/list")), entry(image('b'), owner("peers/list")), releasing)
	ask := func(c byte, want bool) {
		t.Helper()
		got, err := holder.PeerWants(ctx, "caller", image(c))
		if err != nil || got != want {
			t.Errorf("image %c: wants %v, %v; want %v", c, got, err, want)
		}
	}
	ask('a', true)
	ask('b', true)
	ask('c', false)
	ask('d', false)
	if n := reads.gets.Load(); n != 1 {
		t.Errorf("%d reads of the caller's NodeImageSet for four images, want 1", n)
	}
	e.setSpec(t, "caller", entry(image('a'), owner("peers/list")))
	ask('b', true)
	clock.Step(11 * time.Second)
	ask('b', false)
	ask('a', true)
	if n := reads.gets.Load(); n != 2 {
		t.Errorf("%d reads of the caller's NodeImageSet, want 2", n)
	}
}

// TestAWaitingImageLooksWhenItsRouteChanges: an image waiting for holders
// is fetched as soon as its route lists one, not at its next look: the
// agent's clock does not move in this test, so its next look never comes.
func TestAWaitingImageLooksWhenItsRouteChanges(t *testing.T) {
	e := setup(t)
	app, holder := e.heldByAPeer(t, "peers/woken:1", 256<<10)
	fetcher := testground.StartContainerd(t)
	images, store := fetcher.Clients(t)
	routes := &countingReader{Reader: e.c, route: prepullv1.ImageRouteName(app.Digest)}
	e.agent(t, "peer-node", func(r *nodeimageset.Reconciler) {
		r.Images, r.Store, r.Clock, r.Peers = images, store, clocktesting.NewFakeClock(time.Now()), fetchingPeers(t, routes)
	})
	e.route(t, app.Digest, prepullv1.ImageRouteStatus{Waiting: "no node holds the image yet"})
	e.setSpec(t, "peer-node", entry(app.Digest, owner("peers/list", app.Tag)))
	testground.Eventually(t, time.Minute, "the agent looked at the route", func() error {
		if routes.gets.Load() == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	e.route(t, app.Digest, prepullv1.ImageRouteStatus{Holders: []prepullv1.Peer{holder}})
	e.phase(t, "peer-node", app.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
		if st.Source != prepullv1.FetchedFromPeer {
			return fmt.Errorf("source %s", st.Source)
		}
		return nil
	})
}

// countingReader counts the reads of node's NodeImageSet, or of the
// ImageRoute route.
type countingReader struct {
	client.Reader
	node, route string
	gets        atomic.Int32
}

func (c *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	switch obj.(type) {
	case *prepullv1.NodeImageSet:
		if key.Name == c.node {
			c.gets.Add(1)
		}
	case *prepullv1.ImageRoute:
		if key.Name == c.route {
			c.gets.Add(1)
		}
	}
	return c.Reader.Get(ctx, key, obj, opts...)
}

// heldByAPeer pushes a random image of size bytes as repoTag, pulls it on
// the test's containerd and serves that containerd as the peer "holder"
// (answering any agent whose plan names anything).
func (e *env) heldByAPeer(t *testing.T, repoTag string, size int64) (testground.Pushed, prepullv1.Peer) {
	t.Helper()
	img := e.public.MustPushRandom(t, repoTag, size, 1)
	if _, err := e.images.PullImage(ctx, img.Digest, nil); err != nil {
		t.Fatal(err)
	}
	wants := func(context.Context, string, string) (bool, error) { return true, nil }
	return img, servePeer(t, "holder", peer.NewServer(e.store, anyToken{}, wants, 4))
}

// fetchingPeers are the peers of the fetching agent "peer-node": its
// token in a file of the test, routes read with routes.
func fetchingPeers(t *testing.T, routes client.Reader) *nodeimageset.Peers {
	t.Helper()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("agent"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &nodeimageset.Peers{Self: prepullv1.Peer{Node: "peer-node", Address: "127.0.0.1:1", CertSHA256: strings.Repeat("b", 64)},
		Client: &peer.Client{TokenPath: token, Stall: 2 * time.Second}, Routes: routes}
}

// anyToken takes any bearer token as the fetching node's.
type anyToken struct{}

func (anyToken) Node(_ context.Context, r *http.Request) (string, error) {
	if r.Header.Get("Authorization") == "" {
		return "", errors.New("no token")
	}
	return "peer-node", nil
}

// cutting serves half of each blob of more than a kilobyte and then drops
// the connection: a holder killed in the middle of a transfer.
type cutting struct{ h http.Handler }

func (c cutting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &capture{header: http.Header{}, code: http.StatusOK}
	c.h.ServeHTTP(rec, r)
	body := rec.body
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.code)
	if len(body) <= 1024 {
		_, _ = w.Write(body)
		return
	}
	_, _ = w.Write(body[:len(body)/2])
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
		}
	}
}

type capture struct {
	header http.Header
	code   int
	body   []byte
}

func (c *capture) Header() http.Header         { return c.header }
func (c *capture) Write(p []byte) (int, error) { c.body = append(c.body, p...); return len(p), nil }
func (c *capture) WriteHeader(code int)        { c.code = code }

// servePeer serves h over TLS on loopback as holder node; it stops with
// the test.
func servePeer(t *testing.T, node string, h http.Handler) prepullv1.Peer {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testground.FreePort(t))
	id, err := peer.NewIdentity(addr)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- peer.Serve(sctx, addr, id, h) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	testground.Eventually(t, 10*time.Second, "peer "+node+" listening", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return prepullv1.Peer{Node: node, Address: addr, CertSHA256: id.SHA256}
}
