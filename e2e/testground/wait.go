package testground

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// Eventually polls cond every 100ms until it returns nil, or fails the test
// after timeout with what and cond's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: not after %s: %v", what, timeout, err)
}

// HTTPGet is the status code and body of GET path on a loopback port,
// once the port answers at all (within 20s). With wantOK, it waits for 200.
func HTTPGet(t testing.TB, port int, path string, wantOK bool) (int, string) {
	t.Helper()
	var code int
	var body string
	Eventually(t, 20*time.Second, "GET "+path, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(data)
		if wantOK && code != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return nil
	})
	return code, body
}

// Logger returns a logger that writes to the test's log.
func Logger(t testing.TB) logr.Logger {
	return zap.New(zap.WriteTo(testWriter{t}), zap.UseDevMode(true))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Median is the median of ds.
func Median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Millis is ds in whole milliseconds, for printing.
func Millis(ds []time.Duration) []int64 {
	out := make([]int64, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Milliseconds())
	}
	return out
}
