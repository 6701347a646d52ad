//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"prepull.io/prepull/e2e/testground"
)

// link is a network namespace of a test's own, joined to the host by a veth
// pair: hostIP on the host's end, peerIP inside.
type link struct {
	ns, host, peer string
	hostIP, peerIP string
}

func sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// up creates the namespace and the veth pair, with a /30 between them;
// cleanup deletes both.
func (l link) up(t testing.TB) {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", l.ns).Run()
	_ = exec.Command("ip", "link", "del", l.host).Run()
	sh(t, "ip", "netns", "add", l.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.ns).Run() })
	sh(t, "ip", "link", "add", l.host, "type", "veth", "peer", "name", l.peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", l.host).Run() })
	sh(t, "ip", "link", "set", l.peer, "netns", l.ns)
	sh(t, "ip", "addr", "add", l.hostIP+"/30", "dev", l.host)
	sh(t, "ip", "link", "set", l.host, "up")
	sh(t, "ip", "netns", "exec", l.ns, "ip", "addr", "add", l.peerIP+"/30", "dev", l.peer)
	sh(t, "ip", "netns", "exec", l.ns, "ip", "link", "set", l.peer, "up")
	sh(t, "ip", "netns", "exec", l.ns, "ip", "link", "set", "lo", "up")
}

// registry starts a registry inside the namespace on peerIP:5000, storing
// in dataDir, makes the node's containerd reach it over plain HTTP, and
// returns its host:port once it answers.
func (l link) registry(t testing.TB, dataDir string) string {
	t.Helper()
	host := l.peerIP + ":5000"
	cfg := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(cfg, []byte(testground.RegistryConfig(dataDir, host)), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := exec.Command("ip", "netns", "exec", l.ns, "docker-registry", "serve", cfg)
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Process.Kill(); _ = reg.Wait() })
	dir := filepath.Join(c.Dir, "containerd", "certs.d", host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = 'http://%[1]s'\n\n[host.'http://%[1]s']\n  capabilities = ['pull', 'resolve']\n", host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return host
		}
		if i > 100 {
			t.Fatalf("registry in %s not up: %v", l.ns, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cut takes the host's address off the veth, and with it the route into
// the namespace, and puts an unreachable route in its place, so that no
// packet for the namespace leaves by another way (the default route). From
// then on nothing on the host reaches inside, though everything inside keeps
// running.
func (l link) cut(t testing.TB) {
	t.Helper()
	sh(t, "ip", "addr", "flush", "dev", l.host)
	sh(t, "ip", "route", "add", "unreachable", l.peerIP+"/32")
	t.Cleanup(func() { _ = exec.Command("ip", "route", "del", "unreachable", l.peerIP+"/32").Run() })
	out, err := exec.Command("ip", "route", "get", l.peerIP).CombinedOutput()
	if err == nil || !noRoute(string(out)) {
		t.Fatalf("the host still routes to %s: %s", l.peerIP, out)
	}
}

// noRoute reports whether msg says the network refused to route.
func noRoute(msg string) bool {
	msg = strings.ToLower(msg)
	return strings.Contains(msg, "no route to host") || strings.Contains(msg, "unreachable")
}
