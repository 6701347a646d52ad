package testground

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"
)

// Throttle is a reverse proxy on loopback in front of a registry that sends
// response bodies at a bounded rate, so that a pull takes long enough to be
// watched, interrupted or measured.
type Throttle struct {
	// Host is "127.0.0.1:port"; name images through it.
	Host string
}

// StartThrottle starts a proxy to reg that sends at most bytesPerSecond; it
// stops when the test ends.
func StartThrottle(t testing.TB, reg *Registry, bytesPerSecond int) *Throttle {
	t.Helper()
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &slowBody{ReadCloser: resp.Body, rate: bytesPerSecond}
		return nil
	}
	th := &Throttle{Host: fmt.Sprintf("127.0.0.1:%d", FreePort(t))}
	srv := &http.Server{Addr: th.Host, Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	t.Cleanup(func() { srv.Close() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + th.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return th
		}
		select {
		case err := <-errc:
			t.Fatalf("throttling proxy: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("throttling proxy not up: %v", err)
		}
	}
}

// Ref returns ref, a reference into reg, named through the proxy instead.
func (th *Throttle) Ref(reg *Registry, ref string) string {
	if len(ref) > len(reg.Host) && ref[:len(reg.Host)] == reg.Host {
		return th.Host + ref[len(reg.Host):]
	}
	return ref
}

type slowBody struct {
	io.ReadCloser
	rate int
}

func (s *slowBody) Read(p []byte) (int, error) {
	chunk := max(s.rate/20, 1024)
	if len(p) > chunk {
		p = p[:chunk]
	}
	n, err := s.ReadCloser.Read(p)
	time.Sleep(time.Duration(float64(n) / float64(s.rate) * float64(time.Second)))
	return n, err
}
