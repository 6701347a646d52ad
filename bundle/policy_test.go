package bundle_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"prepull.io/prepull/bundle"
)

// Downloads of archives given by URL hold to the agent's policy: https to
// a public address on the URL's own host, unless the operator lists a host;
// bounded in size and time; their errors show neither the URL's query nor
// the server's answer nor the SHA-256 of what it sent.
func TestFetchPolicy(t *testing.T) {
	ctx := context.Background()
	payload := []byte("an archive's bytes")
	sum := sha256.Sum256(payload)
	good := hex.EncodeToString(sum[:])
	var elsewhereHits atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhereHits.Add(1)
		_, _ = w.Write(payload)
	}))
	t.Cleanup(elsewhere.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bundle.tar":
			_, _ = w.Write(payload)
		case "/moved":
			http.Redirect(w, r, "/bundle.tar", http.StatusFound)
		case "/elsewhere":
			http.Redirect(w, r, elsewhere.URL+"/bundle.tar", http.StatusFound)
		case "/metadata":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
		case "/endless":
			chunk := make([]byte, 64<<10)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte("<Error>the-servers-own-words</Error>"))
		}
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	listed := bundle.FetchPolicy{Hosts: []string{host}, MaxBytes: 1 << 20, Timeout: 20 * time.Second}

	tests := []struct {
		name    string
		policy  bundle.FetchPolicy
		url     string
		sha     string
		wantErr []string // "" parts of the error; none: the download works
		never   []string
	}{
		{name: "a listed host over http", policy: listed, url: srv.URL + "/bundle.tar", sha: good},
		{name: "a redirect on the same host", policy: listed, url: srv.URL + "/moved", sha: good},
		{name: "plain http to a host not listed", url: srv.URL + "/bundle.tar?X-Amz-Signature=sig-never-shown", sha: good,
			wantErr: []string{"plain http", host, "--archive-hosts"}, never: []string{"sig-never-shown"}},
		{name: "https to a loopback address", url: "https://" + host + "/bundle.tar", sha: good,
			wantErr: []string{"loopback address"}},
		{name: "a link-local address (cloud metadata)", url: "https://169.254.169.254/latest/meta-data/", sha: good,
			wantErr: []string{"169.254.169.254", "link-local"}},
		{name: "a redirect to another host", policy: listed, url: srv.URL + "/elsewhere", sha: good,
			wantErr: []string{"a redirect to another host", strings.TrimPrefix(elsewhere.URL, "http://")}},
		{name: "a redirect to the metadata address", policy: listed, url: srv.URL + "/metadata", sha: good,
			wantErr: []string{"a redirect to another host", "169.254.169.254"}},
		{name: "an endless download", policy: listed, url: srv.URL + "/endless", sha: good,
			wantErr: []string{"more than the 1048576 bytes", "--archive-max-bytes"}},
		{name: "an answer that is not 200", policy: listed, url: srv.URL + "/missing?token=tok-never-shown", sha: good,
			wantErr: []string{"the server answered 404 Not Found", srv.URL + "/missing"}, never: []string{"the-servers-own-words", "tok-never-shown"}},
		{name: "bytes of another sha256", policy: listed, url: srv.URL + "/bundle.tar", sha: strings.Repeat("0", 64),
			wantErr: []string{"does not have the sha256"}, never: []string{good}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, release, err := bundle.Fetch(ctx, bundle.Source{URL: tt.url, SHA256: tt.sha}, tt.policy, t.TempDir())
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				release()
				if path == "" {
					t.Error("no file")
				}
				return
			}
			if err == nil {
				release()
				t.Fatalf("fetched %s: want a refusal", tt.url)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to say %q", err, w)
				}
			}
			for _, s := range tt.never {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows %q", err, s)
				}
			}
		})
	}
	if n := elsewhereHits.Load(); n != 0 {
		t.Errorf("the host no one listed was asked %d times", n)
	}
	var refused error = bundle.ErrRefused
	if _, _, err := bundle.Fetch(ctx, bundle.Source{URL: "http://" + host + "/bundle.tar"}, bundle.FetchPolicy{}, t.TempDir()); !errors.Is(err, refused) {
		t.Errorf("a refusal is not ErrRefused: %v", err)
	}
}
