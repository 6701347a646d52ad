package testground

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Registry is a CNCF distribution registry serving plain HTTP on a loopback
// port, with its own storage directory.
type Registry struct {
	// Host is "127.0.0.1:port", the registry part of image references.
	Host string
	// Username and Password are the basic-auth credentials it requires, or
	// empty when it requires none.
	Username, Password string

	t       testing.TB
	bin     string
	dir     string
	logPath string
	proc    *process
}

// RegistryOption configures a Registry.
type RegistryOption func(*Registry)

// WithBasicAuth makes the registry require the given credentials.
func WithBasicAuth(username, password string) RegistryOption {
	return func(r *Registry) { r.Username, r.Password = username, password }
}

// StartRegistry starts a registry for the test; it stops when the test ends.
func StartRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	r := &Registry{t: t, bin: Binary(t, "docker-registry")}
	for _, o := range opts {
		o(r)
	}
	r.dir = TempDir(t, "pp-reg-")
	r.Host = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	r.logPath = filepath.Join(r.dir, "registry.log")
	if err := r.writeConfig(); err != nil {
		t.Fatalf("registry config: %v", err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func (r *Registry) writeConfig() error {
	auth := ""
	if r.Username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			return err
		}
		htpasswd := filepath.Join(r.dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(r.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return err
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: prepull-test\n    path: %s\n", htpasswd)
	}
	cfg := RegistryConfig(filepath.Join(r.dir, "data"), r.Host) + auth
	return os.WriteFile(filepath.Join(r.dir, "config.yml"), []byte(cfg), 0o600)
}

// RegistryConfig is the configuration of a distribution registry that
// stores in dataDir, serves plain HTTP on addr, logs only warnings, and
// allows deletes.
func RegistryConfig(dataDir, addr string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, dataDir, addr)
}

// Start starts the registry, again after Stop, on the same port and storage.
func (r *Registry) Start() {
	r.t.Helper()
	if r.proc != nil {
		if done, _ := r.proc.exited(); !done {
			return
		}
	}
	p, err := startProcess("registry", r.logPath, r.bin, "serve", filepath.Join(r.dir, "config.yml"))
	if err != nil {
		r.t.Fatalf("start registry: %v", err)
	}
	r.proc = p
	client := &http.Client{Timeout: time.Second}
	err = waitFor(p, r.logPath, 30*time.Second, func() error {
		resp, err := client.Get("http://" + r.Host + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		r.t.Fatalf("start registry: %v", err)
	}
}

// Stop stops the registry; its storage stays for a later Start.
func (r *Registry) Stop() {
	if r.proc == nil {
		return
	}
	if err := r.proc.stop(10 * time.Second); err != nil {
		r.t.Errorf("stop registry: %v", err)
	}
}

// Repo returns the full repository name of repo in this registry.
func (r *Registry) Repo(repo string) string { return r.Host + "/" + repo }
