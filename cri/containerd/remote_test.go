package containerd_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/testground"
)

// counter is a mirror in front of a registry that records each request it
// passes on: method, path and the registry it was asked to stand for. A
// picky one answers 404 to a GET of a manifest that accepts several types,
// as a registry that wants the manifest's own type alone would.
type counter struct {
	picky bool
	mu    sync.Mutex
	reqs  []string
}

func (c *counter) serve(t *testing.T, reg *testground.Registry) string {
	target, _ := url.Parse("http://" + reg.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.reqs = append(c.reqs, fmt.Sprintf("%s %s ns=%s", r.Method, r.URL.Path, r.URL.Query().Get("ns")))
		c.mu.Unlock()
		if c.picky && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && strings.Count(r.Header.Get("Accept"), ",") > 1 {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func (c *counter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.reqs
	c.reqs = nil
	return out
}

// TestPullBlobsReadsEachManifestOnce proves on a real containerd and a real
// registry that the disk budget's look at an image reads each of its
// manifests in one GET, without the HEAD a pull resolves with, through the
// mirrors and with the credentials the CRI plugin's pulls use.
func TestPullBlobsReadsEachManifestOnce(t *testing.T) {
	ctd := testground.StartContainerd(t)
	reg := testground.StartRegistry(t)
	_, store := ctd.Clients(t)
	ctx := context.Background()

	// The registry is reached only through a mirror, as hosts.toml says.
	mirror := &counter{}
	via := mirror.serve(t, reg)
	dir := filepath.Join(ctd.Dir, "certs.d", reg.Host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = 'http://%s'\n\n[host.'http://%s']\n  capabilities = ['pull', 'resolve']\n", reg.Host, via)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}

	check := func(t *testing.T, p testground.Pushed, blobs []cri.Blob, manifests int) {
		t.Helper()
		wantBlobs(t, p, blobs)
		reqs := mirror.take()
		if len(reqs) != manifests {
			t.Errorf("requests %q: want %d, one GET per manifest", reqs, manifests)
		}
		for _, r := range reqs {
			if !strings.HasPrefix(r, "GET ") || !strings.Contains(r, "/manifests/sha256:") || !strings.HasSuffix(r, "ns="+reg.Host) {
				t.Errorf("request %q: want a GET of a manifest, for %s", r, reg.Host)
			}
		}
	}

	t.Run("an image", func(t *testing.T) {
		p := reg.MustPushRandom(t, "size/one:v1", 4096, 1)
		blobs, err := store.PullBlobs(ctx, p.Digest, nil)
		if err != nil {
			t.Fatal(err)
		}
		check(t, p, blobs, 1)
	})

	t.Run("an index: the index, then the node's manifest", func(t *testing.T) {
		idx, err := testground.RandomIndex(4096, 1, testground.Linux(runtime.GOARCH), testground.Linux("s390x"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := reg.PushIndex("size/multi:v1", idx, runtime.GOARCH)
		if err != nil {
			t.Fatal(err)
		}
		blobs, err := store.PullBlobs(ctx, p.Digest, nil)
		if err != nil {
			t.Fatal(err)
		}
		check(t, p, blobs, 2)
	})

	t.Run("a registry that asks for credentials: its challenge answered once", func(t *testing.T) {
		private := testground.StartRegistry(t, testground.WithBasicAuth("puller", "s3cret"))
		front := &counter{}
		host := front.serve(t, private)
		ctd.TrustHost(host)
		p := private.MustPushRandom(t, "size/private:v1", 4096, 1)
		ref := strings.Replace(p.Digest, private.Host, host, 1)
		blobs, err := store.PullBlobs(ctx, ref, &cri.Auth{Username: "puller", Password: "s3cret"})
		if err != nil {
			t.Fatal(err)
		}
		wantBlobs(t, p, blobs)
		want := "GET " + manifestPath(p) + " ns="
		if reqs := front.take(); len(reqs) != 2 || reqs[0] != want || reqs[1] != want {
			t.Errorf("requests %q: want %q twice, the challenge and the read", reqs, want)
		}
		// Refused credentials are not tried again another way: GETs only,
		// the challenge and the refusal from each host hosts.toml lists.
		if _, err := store.PullBlobs(ctx, ref, &cri.Auth{Username: "puller", Password: "wrong"}); err == nil {
			t.Errorf("read with a wrong password: no error")
		}
		if reqs := front.take(); len(reqs) == 0 || slices.ContainsFunc(reqs, func(r string) bool { return r != want }) {
			t.Errorf("requests with a wrong password %q: want only %q", reqs, want)
		}
	})

	t.Run("a registry that wants a manifest's own type alone: asked again as a pull asks", func(t *testing.T) {
		picky := &counter{picky: true}
		host := picky.serve(t, reg)
		ctd.TrustHost(host)
		p := reg.MustPushRandom(t, "size/picky:v1", 4096, 1)
		blobs, err := store.PullBlobs(ctx, strings.Replace(p.Digest, reg.Host, host, 1), nil)
		if err != nil {
			t.Fatal(err)
		}
		wantBlobs(t, p, blobs)
		// A refused GET from each host hosts.toml lists, then the
		// resolver's HEAD and GET.
		path := manifestPath(p) + " ns="
		reqs := picky.take()
		head := slices.Index(reqs, "HEAD "+path)
		if head < 1 || slices.ContainsFunc(reqs[:head], func(r string) bool { return r != "GET "+path }) || !slices.Equal(reqs[head:], []string{"HEAD " + path, "GET " + path}) {
			t.Errorf("requests %q: want refused GETs, then the resolver's HEAD and GET", reqs)
		}
	})
}

// wantBlobs checks that blobs are p's config and its one layer.
func wantBlobs(t *testing.T, p testground.Pushed, blobs []cri.Blob) {
	t.Helper()
	if len(blobs) != 2 || blobs[0].Digest != p.ID || blobs[1].Size != p.Size {
		t.Errorf("blobs %+v: want the config %s and one layer of %d bytes", blobs, p.ID, p.Size)
	}
}

// manifestPath is the registry path of p's manifest by digest.
func manifestPath(p testground.Pushed) string {
	repo, dgst, _ := strings.Cut(p.Digest, "@")
	return "/v2/" + repo[strings.Index(repo, "/")+1:] + "/manifests/" + dgst
}
