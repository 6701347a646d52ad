package containerd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"prepull.io/prepull/cri"
)

func writeHosts(t *testing.T, root, host, server string) {
	t.Helper()
	dir := filepath.Join(root, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "server = '" + server + "'\n\n[host.'" + server + "']\n  capabilities = ['pull', 'resolve']\n"
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHostsAreKeptUntilHostsTomlChanges(t *testing.T) {
	root := t.TempDir()
	const host = "registry.test:5000"
	writeHosts(t, root, host, "http://mirror-a.test:5000")
	var c hostsCache
	ctx := context.Background()
	get := func(auth cri.Auth) string {
		t.Helper()
		hosts, err := c.get(ctx, hostsKey{host: host, auth: auth}, root)
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) == 0 {
			t.Fatal("no hosts")
		}
		return hosts[0].Scheme + "://" + hosts[0].Host
	}
	first, _ := c.get(ctx, hostsKey{host: host}, root)
	again, _ := c.get(ctx, hostsKey{host: host}, root)
	if first[0].Client != again[0].Client {
		t.Error("a second read of an unchanged host made a new HTTP client: its connections are not reused")
	}
	if got := get(cri.Auth{}); got != "http://mirror-a.test:5000" {
		t.Errorf("host from hosts.toml: %s", got)
	}
	other, _ := c.get(ctx, hostsKey{host: host, auth: cri.Auth{Username: "u", Password: "p"}}, root)
	if other[0].Authorizer == first[0].Authorizer {
		t.Error("other credentials share the anonymous authorizer")
	}

	writeHosts(t, root, host, "http://mirror-bb.test:5000")
	if got := get(cri.Auth{}); got != "http://mirror-bb.test:5000" {
		t.Errorf("after hosts.toml changed, host %s: want the new mirror", got)
	}

	if err := os.RemoveAll(filepath.Join(root, host)); err != nil {
		t.Fatal(err)
	}
	if got := get(cri.Auth{}); got != "https://"+host {
		t.Errorf("after the host's directory went, host %s: want the registry itself over HTTPS", got)
	}
}
