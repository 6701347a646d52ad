package testground

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
)

// Containerd is a containerd with its own root, state directory and socket,
// its CRI plugin on and the overlayfs snapshotter.
type Containerd struct {
	// Socket is the path of its gRPC socket, for CRI and containerd's API.
	Socket string
	// Dir holds its root, state, configuration and log.
	Dir string

	t       testing.TB
	bin     string
	config  string
	logPath string
	proc    *process
	// Snapshotter, when set, is the CRI plugin's snapshotter (another than
	// overlayfs, e.g. Stargz.Config's): Clients' Store uses it.
	Snapshotter string
}

// StartContainerd starts a containerd for the test; it stops when the test
// ends. It needs root.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	return StartContainerdWith(t, nil)
}

// StartContainerdWith is StartContainerd with the configuration edit makes
// of the test ground's (ContainerdConfig); nil keeps it.
func StartContainerdWith(t testing.TB, edit func(config string) string) *Containerd {
	t.Helper()
	RequireRoot(t)
	c := &Containerd{t: t, bin: Binary(t, "containerd")}
	Binary(t, "containerd-shim-runc-v2")
	c.Dir = TempDir(t, "pp-ctd-")
	c.Socket = filepath.Join(c.Dir, "c.sock")
	c.config = filepath.Join(c.Dir, "config.toml")
	c.logPath = filepath.Join(c.Dir, "containerd.log")
	for _, d := range []string{"certs.d", "cni", "opt"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	text := c.configText()
	if edit != nil {
		text = edit(text)
	}
	if err := os.WriteFile(c.config, []byte(text), 0o600); err != nil {
		t.Fatalf("containerd config: %v", err)
	}
	c.Start()
	t.Cleanup(c.Stop)
	return c
}

// configText is this containerd's configuration.
func (c *Containerd) configText() string { return ContainerdConfig(c.Dir, "") }

// ContainerdConfig is a containerd configuration that touches nothing outside
// dir: no host configuration is imported, NRI is off, sockets, shims and
// network namespaces live in dir, registries are configured by hosts.toml
// files in dir/certs.d and CNI by dir/cni. A non-empty sandboxImage is the
// CRI plugin's pinned sandbox (pause) image.
func ContainerdConfig(dir, sandboxImage string) string {
	sandbox := ""
	if sandboxImage != "" {
		sandbox = fmt.Sprintf("    [plugins.'io.containerd.cri.v1.images'.pinned_images]\n      sandbox = '%s'\n", sandboxImage)
	}
	return fmt.Sprintf(`version = 4
root = '%[1]s/root'
state = '%[1]s/state'
temp = '%[1]s/tmp'
imports = []
disabled_plugins = [
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.mount-handler.v1.erofs',
  'io.containerd.nri.v1.nri',
]

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '%[1]s/c.sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '%[1]s/c.sock.ttrpc'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '%[1]s/s'
  [plugins.'io.containerd.internal.v1.opt']
    path = '%[1]s/opt'
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '%[1]s/opt/verifiers'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    stats_collect_period = 1
%[2]s    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '%[1]s/certs.d'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni', '/opt/cni/bin']
      conf_dir = '%[1]s/cni'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`, dir, sandbox)
}

// Start starts containerd, again after Stop, with the same root, and waits
// until its CRI image service answers.
func (c *Containerd) Start() {
	c.t.Helper()
	if c.proc != nil {
		if done, _ := c.proc.exited(); !done {
			return
		}
	}
	p, err := startProcess("containerd", c.logPath, c.bin, "--config", c.config)
	if err != nil {
		c.t.Fatalf("start containerd: %v", err)
	}
	c.proc = p
	r, err := cri.NewRemote(c.Socket, cri.WithCallTimeout(2*time.Second))
	if err != nil {
		c.t.Fatal(err)
	}
	defer r.Close()
	err = waitFor(p, c.logPath, 60*time.Second, func() error {
		if _, err := os.Stat(c.Socket); err != nil {
			return err
		}
		_, err := r.ImageFsInfo(context.Background())
		return err
	})
	if err != nil {
		c.t.Fatalf("start containerd: %v", err)
	}
}

// Stop stops containerd by its PID; its root stays for a later Start.
func (c *Containerd) Stop() {
	if c.proc == nil {
		return
	}
	if err := c.proc.stop(20 * time.Second); err != nil {
		c.t.Errorf("stop containerd: %v", err)
	}
}

// TrustRegistry writes the hosts.toml that lets this containerd pull from reg
// over plain HTTP.
func (c *Containerd) TrustRegistry(reg *Registry) { c.TrustHost(reg.Host) }

// TrustHost writes the hosts.toml that lets this containerd pull from host
// ("127.0.0.1:port") over plain HTTP.
func (c *Containerd) TrustHost(host string) { c.Mirror(host, host) }

// Mirror writes the hosts.toml that makes this containerd pull images named
// under name from host ("127.0.0.1:port") over plain HTTP: a registry that
// stands in for another.
func (c *Containerd) Mirror(name, host string) {
	c.t.Helper()
	dir := filepath.Join(c.Dir, "certs.d", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = 'http://%[1]s'\n\n[host.'http://%[1]s']\n  capabilities = ['pull', 'resolve']\n", host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// ConfigPath is the path of containerd's configuration file.
func (c *Containerd) ConfigPath() string { return c.config }

// Log returns the end of containerd's log, for failure messages.
func (c *Containerd) Log() string { return tail(c.logPath, 40) }

// Clients connects a CRI client and a containerd Store to c; both are closed
// when the test ends.
func (c *Containerd) Clients(t testing.TB) (*cri.Remote, *containerd.Store) {
	t.Helper()
	images, err := cri.NewRemote(c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close() })
	opts := []containerd.Option{containerd.WithRegistryHosts(filepath.Join(c.Dir, "certs.d"))}
	if c.Snapshotter != "" {
		opts = append(opts, containerd.WithSnapshotter(c.Snapshotter))
	}
	store, err := containerd.New(c.Socket, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return images, store
}
