package testground

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Throttle is a reverse proxy on loopback in front of a registry that acts
// as a slow link: every request waits latency before it is forwarded, and all
// response bodies together share one bandwidth, so that a pull takes long
// enough to be watched, interrupted or measured, and parallel pulls gain only
// what a real link would give them.
type Throttle struct {
	// Host is "127.0.0.1:port"; name images through it.
	Host string

	mu        sync.Mutex
	blobs     map[string]int
	manifests int
	bytes     int64
}

// Blobs counts, by digest, the blob downloads the registry answered
// through the proxy (GET, 200).
func (th *Throttle) Blobs() map[string]int {
	th.mu.Lock()
	defer th.mu.Unlock()
	out := make(map[string]int, len(th.blobs))
	for d, n := range th.blobs {
		out[d] = n
	}
	return out
}

// Manifests counts the manifest requests (HEAD or GET, whatever the
// answer) the registry answered through the proxy.
func (th *Throttle) Manifests() int {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.manifests
}

// Bytes is what the registry sent through the proxy, in bodies.
func (th *Throttle) Bytes() int64 {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.bytes
}

// StartThrottle starts a proxy to reg that sends at most bytesPerSecond in
// all, after latency per request; it stops when the test ends.
func StartThrottle(t testing.TB, reg *Registry, bytesPerSecond int, latency time.Duration) *Throttle {
	t.Helper()
	return StartThrottleAt(t, "127.0.0.1", reg, bytesPerSecond, latency)
}

// StartThrottleAt is StartThrottle listening on ip (an address of this
// machine) instead of loopback, for clients in other network namespaces.
func StartThrottleAt(t testing.TB, ip string, reg *Registry, bytesPerSecond int, latency time.Duration) *Throttle {
	t.Helper()
	return StartThrottleOn(t, fmt.Sprintf("%s:%d", ip, FreePort(t)), reg, bytesPerSecond, latency)
}

// StartThrottleOn is StartThrottleAt on host ("ip:port").
func StartThrottleOn(t testing.TB, host string, reg *Registry, bytesPerSecond int, latency time.Duration) *Throttle {
	t.Helper()
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	link := &link{rate: bytesPerSecond}
	th := &Throttle{Host: host, blobs: map[string]int{}}
	rp.ModifyResponse = func(resp *http.Response) error {
		th.mu.Lock()
		if _, d, ok := strings.Cut(resp.Request.URL.Path, "/blobs/"); ok && resp.Request.Method == http.MethodGet && resp.StatusCode == http.StatusOK {
			th.blobs[d]++
		}
		if strings.Contains(resp.Request.URL.Path, "/manifests/") {
			th.manifests++
		}
		th.mu.Unlock()
		resp.Body = &slowBody{ReadCloser: resp.Body, link: link, th: th}
		return nil
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(latency)
		rp.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: th.Host, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	t.Cleanup(func() { srv.Close() })
	waitListening(t, "throttling proxy", th.Host, errc)
	return th
}

// waitListening waits until the registry proxy at host answers /v2/, or
// fails the test when its server ended (errc) or did not answer in time.
func waitListening(t testing.TB, name, host string, errc <-chan error) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-errc:
			t.Fatalf("%s: %v", name, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not up: %v", name, err)
		}
	}
}

// Ref returns ref, a reference into reg, named through the proxy instead.
func (th *Throttle) Ref(reg *Registry, ref string) string { return rehost(th.Host, reg, ref) }

// rehost is ref, a reference into reg, with host in place of reg's.
func rehost(host string, reg *Registry, ref string) string {
	if rest, ok := strings.CutPrefix(ref, reg.Host); ok && rest != "" {
		return host + rest
	}
	return ref
}

// link is the bandwidth every response shares: each chunk books the next
// free slot of the link and is released when its slot ends.
type link struct {
	rate int
	mu   sync.Mutex
	next time.Time
}

func (l *link) send(n int) {
	l.mu.Lock()
	now := time.Now()
	start := l.next
	if start.Before(now) {
		start = now
	}
	end := start.Add(time.Duration(float64(n) / float64(l.rate) * float64(time.Second)))
	l.next = end
	l.mu.Unlock()
	time.Sleep(time.Until(end))
}

type slowBody struct {
	io.ReadCloser
	link *link
	th   *Throttle
}

func (s *slowBody) Read(p []byte) (int, error) {
	chunk := max(s.link.rate/50, 1024)
	if len(p) > chunk {
		p = p[:chunk]
	}
	n, err := s.ReadCloser.Read(p)
	s.link.send(n)
	if s.th != nil {
		s.th.mu.Lock()
		s.th.bytes += int64(n)
		s.th.mu.Unlock()
	}
	return n, err
}
