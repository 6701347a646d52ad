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
	"strings"
	"sync"
	"testing"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/testground"
)

// counter is a mirror in front of a registry that records each request it
// passes on: method, path and the registry it was asked to stand for.
type counter struct {
	mu   sync.Mutex
	reqs []string
}

func (c *counter) serve(t *testing.T, reg *testground.Registry) string {
	target, _ := url.Parse("http://" + reg.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.reqs = append(c.reqs, fmt.Sprintf("%s %s ns=%s", r.Method, r.URL.Path, r.URL.Query().Get("ns")))
		c.mu.Unlock()
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
		if len(blobs) != 2 || blobs[0].Digest != p.ID || blobs[1].Size != p.Size {
			t.Errorf("blobs %+v: want the config %s and one layer of %d bytes", blobs, p.ID, p.Size)
		}
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
		if len(blobs) != 2 || blobs[0].Digest != p.ID || blobs[1].Size != p.Size {
			t.Errorf("blobs %+v: want the config %s and one layer of %d bytes", blobs, p.ID, p.Size)
		}
		want := "GET /v2/size/private/manifests/" + strings.SplitN(p.Digest, "@", 2)[1] + " ns="
		if reqs := front.take(); len(reqs) != 2 || reqs[0] != want || reqs[1] != want {
			t.Errorf("requests %q: want %q twice, the challenge and the read", reqs, want)
		}
		if _, err := store.PullBlobs(ctx, ref, &cri.Auth{Username: "puller", Password: "wrong"}); err == nil {
			t.Errorf("read with a wrong password: no error")
		}
	})
}
