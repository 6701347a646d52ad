package testground

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what a FaultProxy does to the requests it is given.
type Fault int32

const (
	// NoFault forwards every request to the registry.
	NoFault Fault = iota
	// Fault500 answers every request 500 Internal Server Error.
	Fault500
	// FaultHang accepts every request and never answers it, until the
	// fault changes or the test ends.
	FaultHang
	// FaultCutBody forwards requests, and cuts every blob's body half-way:
	// the connection is closed after half of its bytes.
	FaultCutBody
)

func (f Fault) String() string {
	return [...]string{"none", "500", "hang", "cut body"}[f]
}

// FaultProxy is a reverse proxy on loopback in front of a registry that
// fails as a registry or the network in front of it fails, one Fault at a
// time, set while it runs.
type FaultProxy struct {
	// Host is "127.0.0.1:port"; name images through it.
	Host  string
	fault atomic.Int32
	// release ends the requests FaultHang holds.
	mu      sync.Mutex
	release chan struct{}
}

// Set makes the proxy do f from now on. Requests held by FaultHang are let
// go (and answered 503) when the fault changes.
func (p *FaultProxy) Set(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if Fault(p.fault.Swap(int32(f))) == FaultHang {
		close(p.release)
		p.release = make(chan struct{})
	}
}

// StartFaultProxy starts a proxy to reg with no fault; it stops when the
// test ends.
func StartFaultProxy(t testing.TB, reg *Registry) *FaultProxy {
	t.Helper()
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	// The cut bodies are the point: not worth a line each in the test log.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p := &FaultProxy{release: make(chan struct{})}
	rp.ModifyResponse = func(resp *http.Response) error {
		if Fault(p.fault.Load()) == FaultCutBody && resp.Request.Method == http.MethodGet &&
			strings.Contains(resp.Request.URL.Path, "/blobs/") && resp.ContentLength > 1 {
			resp.Body = &cutBody{ReadCloser: resp.Body, left: resp.ContentLength / 2}
		}
		return nil
	}
	// A cut body ends the reverse proxy's copy with an error, and it then
	// aborts the connection: the client reads half and an early EOF.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch Fault(p.fault.Load()) {
		case Fault500:
			http.Error(w, "injected fault", http.StatusInternalServerError)
			return
		case FaultHang:
			p.mu.Lock()
			release := p.release
			p.mu.Unlock()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			http.Error(w, "injected hang ended", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	})
	p.Host = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	srv := &http.Server{Addr: p.Host, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	t.Cleanup(func() {
		p.Set(NoFault)
		srv.Close()
	})
	waitListening(t, "fault proxy", p.Host, errc)
	return p
}

// Ref returns ref, a reference into reg, named through the proxy instead.
func (p *FaultProxy) Ref(reg *Registry, ref string) string { return rehost(p.Host, reg, ref) }

// cutBody ends with an error after left bytes.
type cutBody struct {
	io.ReadCloser
	left int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("injected fault: body cut")
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
