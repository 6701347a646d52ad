package peer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/peer"
)

// tokens is an Authenticator for the test: a bearer token names a node.
type tokens map[string]string

func (t tokens) Node(_ context.Context, r *http.Request) (string, error) {
	if node, ok := t[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]; ok {
		return node, nil
	}
	return "", errors.New("no such token")
}

// TestAPeerServesWhatItsNodeHoldsToPeersOnly: on two real containerds,
// the registry stopped once the holder pulled, the other node makes the
// image present from the holder's content store alone; a request without
// a node's token is refused (401), one from a node whose plan does not
// name the image too (403), a holder showing another certificate than the
// one it published is not trusted, and bytes that do not match their
// digest are refused and leave nothing behind.
func TestAPeerServesWhatItsNodeHoldsToPeersOnly(t *testing.T) {
	ctx := context.Background()
	reg := testground.StartRegistry(t)
	holder := testground.StartContainerd(t)
	holder.TrustRegistry(reg)
	holderImages, holderStore := holder.Clients(t)
	img := reg.MustPushRandom(t, "peer/app:1", 256<<10, 3)
	if _, err := holderImages.PullImage(ctx, img.Digest, nil); err != nil {
		t.Fatal(err)
	}
	reg.Stop()

	wants := func(_ context.Context, node, image string) (bool, error) {
		return node == "node-b" && image == img.Digest, nil
	}
	srv := peer.NewServer(holderStore, tokens{"token-b": "node-b", "token-c": "node-c"}, wants, 2)
	h := serve(t, srv)

	fetcher := testground.StartContainerd(t)
	images, store := fetcher.Clients(t)
	client := func(token string) *peer.Client {
		p := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		return &peer.Client{TokenPath: p}
	}

	for _, c := range []struct {
		name, token string
		holder      prepullv1.Peer
		want        string
	}{
		{"no node's token", "nobody", h, "401 Unauthorized"},
		{"a node whose plan does not name the image", "token-c", h, "403 Forbidden"},
		{"another certificate than the published one", "token-b", prepullv1.Peer{Node: h.Node, Address: h.Address, CertSHA256: strings.Repeat("0", 64)}, "another certificate"},
	} {
		err := store.FetchImage(ctx, img.Digest, client(c.token).Fetcher(c.holder, img.Digest), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := images.ImageStatus(ctx, img.Digest); !errors.Is(err, cri.ErrNotFound) {
		t.Fatalf("the image is on the fetching node after refusals: %v", err)
	}

	// A holder that flips a byte of every layer it serves.
	bad := serve(t, corrupting{srv})
	err := store.FetchImage(ctx, img.Digest, client("token-b").Fetcher(bad, img.Digest), nil)
	if !errors.Is(err, cri.ErrCorrupt) {
		t.Errorf("corrupt bytes: %v, want ErrCorrupt", err)
	}
	if _, err := images.ImageStatus(ctx, img.Digest); !errors.Is(err, cri.ErrNotFound) {
		t.Fatalf("the image is on the fetching node after corrupt bytes: %v", err)
	}

	if err := store.FetchImage(ctx, img.Digest, client("token-b").Fetcher(h, img.Digest), nil); err != nil {
		t.Fatalf("fetch from the holder: %v", err)
	}
	got, err := images.ImageStatus(ctx, img.Digest)
	if err != nil || got.ID != img.ID {
		t.Fatalf("after the fetch the node shows %+v, %v; want image %s", got, err, img.ID)
	}
}

// serve serves h over TLS on loopback for the test and returns the holder
// as an ImageRoute lists it.
func serve(t *testing.T, h http.Handler) prepullv1.Peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	id, err := peer.NewIdentity(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- peer.Serve(ctx, addr, id, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	testground.Eventually(t, 10*time.Second, "the peer server listening", func() error {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		return c.Close()
	})
	return prepullv1.Peer{Node: "holder", Address: addr, CertSHA256: id.SHA256}
}

// corrupting serves what its server serves with the last byte of every
// body of more than a kilobyte (the layers) changed.
type corrupting struct{ h http.Handler }

func (c corrupting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	c.h.ServeHTTP(rec, r)
	body := rec.body.Bytes()
	if len(body) > 1024 {
		body[len(body)-1] ^= 0xff
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.code)
	_, _ = io.Copy(w, bytes.NewReader(body))
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *recorder) WriteHeader(code int)        { r.code = code }
