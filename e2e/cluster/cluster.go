// Package cluster brings up, and tears down completely, a real Kubernetes
// cluster of one or several nodes on this machine from the binaries the
// project builds: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, and per node a kubelet and a containerd with runc and the
// CNI bridge plugin, plus a registry. It needs root. The processes outlive
// the command that started them (make demo leaves the cluster up); their
// PIDs are recorded in the cluster's directory, and Down stops exactly
// those, then undoes what the kubelets and containerds did to the machine:
// mounts, pod cgroups, bridges, network namespaces, iptables rules and
// sysctls.
//
// Node 1 runs in the host's namespaces, as a single-node cluster always
// did. Every further node (AddNode) is a network namespace on the nodes'
// bridge with its own address, and a private mount namespace in which the
// node's own containerd, kubelet, pod-log and CNI directories are
// bind-mounted over node 1's paths, so that the prepull DaemonSet's host
// paths name each node's own runtime. Inside a node, socat forwards
// 127.0.0.1's apiserver and registry ports to the host, so that every node
// reaches them at the same loopback addresses node 1 does.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"prepull.io/prepull/e2e/testground"
)

// Fixed addresses of the local cluster, all on loopback and below the
// kernel's ephemeral port range (32768 and up), so that no outgoing
// connection of another process can hold one of them.
const (
	APIServerPort = 16443
	EtcdPort      = 12379
	RegistryHost  = "127.0.0.1:15000"
	ServiceIP     = "10.96.0.1"
	// PodSubnet is node 1's; node i has 10.244.(i-1).0/24.
	PodSubnet  = "10.244.0.0/24"
	BridgeName = "cni-prepull0"
	PauseImage = RegistryHost + "/prepull/pause:3.10"
	// NodesBridge joins the nodes' network namespaces to the host; its
	// address, 10.98.0.1, is node 1's, and node i has 10.98.0.i.
	NodesBridge = "prepull-nodes"
	// MaxNodes bounds a cluster's nodes: every kubelet's token is made
	// before the apiserver starts.
	MaxNodes = 8
)

// Cluster is a local cluster's directory and what is known of it.
type Cluster struct {
	// Dir holds everything the cluster writes.
	Dir string
	// Bin holds the binaries.
	Bin string
	// NodeName is node 1's name.
	NodeName string
	// Nodes is how many nodes Start brings up; 0 means 1.
	Nodes int
	// Root is the prepull module's root, for building the pause program
	// and finding the deploy overlay.
	Root string

	pauseBin []byte
}

// New describes the cluster in dir with binaries in bin, for the module
// found from the working directory up, with nodes nodes.
func New(dir, bin string, nodes int) *Cluster {
	return &Cluster{Dir: dir, Bin: bin, NodeName: nodeName(1), Nodes: max(nodes, 1), Root: testground.ModuleRoot()}
}

// Install is how Deploy installs prepull on the cluster.
type Install string

const (
	// Kustomize applies the overlay in hack/cluster/overlay.
	Kustomize Install = "kustomize"
	// Helm installs the chart in deploy/chart/prepull with the values in
	// hack/cluster/values.yaml (a test in deploy/ holds the two equal).
	Helm Install = "helm"
)

// ParseInstall returns the install named s.
func ParseInstall(s string) (Install, error) {
	switch i := Install(s); i {
	case Kustomize, Helm:
		return i, nil
	}
	return "", fmt.Errorf("install %q: must be %s or %s", s, Kustomize, Helm)
}

// Kubeconfig is the admin kubeconfig.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.Dir, "admin.kubeconfig") }

// ContainerdSocket is the node runtime's socket.
func (c *Cluster) ContainerdSocket() string { return filepath.Join(c.Dir, "containerd", "c.sock") }

func (c *Cluster) path(p ...string) string { return filepath.Join(append([]string{c.Dir}, p...)...) }

// Up starts the cluster and waits until the node is Ready. It fails if a
// cluster is already up in Dir.
func (c *Cluster) Up(ctx context.Context, logf func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root")
	}
	if _, err := os.Stat(c.path("pids")); err == nil {
		return fmt.Errorf("a cluster is already up in %s: run make demo-down first", c.Dir)
	}
	for _, d := range []string{"logs", "etcd", "containerd/certs.d", "containerd/cni", "cni-ipam", "kubelet/root", "kubelet/pki", "kubelet/plugins", "pod-logs", "registry", "kubeconfigs"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := c.saveHostState(); err != nil {
		return err
	}
	if err := pki(c.path("pki")); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if err := c.writeConfigs(); err != nil {
		return err
	}

	if err := c.upBridge(); err != nil {
		return err
	}

	start := time.Now()
	if err := c.StartRegistry(ctx); err != nil {
		return err
	}
	// The nodes' namespaces reach the apiserver and the registry through
	// the host's side of their bridge.
	for name, port := range map[string]int{"forward-apiserver": APIServerPort, "forward-registry": registryPort} {
		if err := c.startAs(name, "socat", c.lookPath("socat"), fmt.Sprintf("TCP-LISTEN:%d,bind=%s,fork,reuseaddr", port, nodeIP(1)), fmt.Sprintf("TCP:127.0.0.1:%d", port)); err != nil {
			return err
		}
	}
	if err := c.start("etcd", c.bin("etcd"), "--data-dir", c.path("etcd"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", EtcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", EtcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", EtcdPort+1),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", EtcdPort+1),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", EtcdPort+1),
		"--log-level", "warn"); err != nil {
		return err
	}
	pkiDir := c.path("pki")
	if err := c.start("kube-apiserver", c.bin("kube-apiserver"),
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", EtcdPort),
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(APIServerPort),
		"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--tls-cert-file", filepath.Join(pkiDir, "apiserver.crt"), "--tls-private-key-file", filepath.Join(pkiDir, "apiserver.key"),
		"--token-auth-file", c.path("tokens.csv"),
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		// kubectl logs and exec: the apiserver dials each kubelet at its
		// node's address, with a client certificate the kubelets trust.
		"--kubelet-preferred-address-types", "InternalIP",
		"--kubelet-client-certificate", filepath.Join(pkiDir, "kubelet-client.crt"), "--kubelet-client-key", filepath.Join(pkiDir, "kubelet-client.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(pkiDir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(pkiDir, "sa.key"),
		"--allow-privileged=true"); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "kube-apiserver", fmt.Sprintf("https://127.0.0.1:%d/readyz", APIServerPort), 90*time.Second); err != nil {
		return c.withLog(err, "kube-apiserver")
	}
	logf("kube-apiserver ready after %s", time.Since(start).Round(time.Millisecond))
	if err := c.start("kube-controller-manager", c.bin("kube-controller-manager"),
		"--kubeconfig", c.path("kcm.kubeconfig"), "--bind-address", "127.0.0.1", "--secure-port", "10357",
		"--service-account-private-key-file", filepath.Join(pkiDir, "sa.key"), "--root-ca-file", filepath.Join(pkiDir, "ca.crt"),
		"--use-service-account-credentials=false", "--leader-elect=false", "--controllers", "*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle"); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", c.bin("kube-scheduler"),
		"--kubeconfig", c.path("scheduler.kubeconfig"), "--bind-address", "127.0.0.1", "--secure-port", "10359", "--leader-elect=false"); err != nil {
		return err
	}
	if err := c.start("containerd", c.bin("containerd"), "--config", c.path("containerd", "config.toml")); err != nil {
		return err
	}
	if err := waitFile(ctx, c.ContainerdSocket(), 60*time.Second); err != nil {
		return c.withLog(err, "containerd")
	}
	if err := c.startKubelet(); err != nil {
		return err
	}
	logf("all processes started after %s", time.Since(start).Round(time.Millisecond))
	return nil
}

// startKubelet starts node 1's kubelet with its root, certificates and
// configuration inside Dir.
func (c *Cluster) startKubelet() error {
	return c.start("kubelet", c.bin("kubelet"), c.kubeletArgs(c.node(1))...)
}

// kubeletArgs are node n's kubelet's flags, with paths as the node sees
// them (its own directories bind-mounted over node 1's).
func (c *Cluster) kubeletArgs(n Node) []string {
	return []string{"--config", c.path("kubelet", "config.yaml"), "--kubeconfig", c.path("kubeconfigs", n.Name),
		"--root-dir", c.path("kubelet", "root"), "--cert-dir", c.path("kubelet", "pki"),
		"--hostname-override", n.Name, "--node-ip", n.IP, "--v", "1"}
}

// writeConfigs writes tokens, kubeconfigs and the configurations of the
// registry, containerd, the CNI bridge and the kubelet.
func (c *Cluster) writeConfigs() error {
	server := fmt.Sprintf("https://127.0.0.1:%d", APIServerPort)
	ca := c.path("pki", "ca.crt")
	users := []struct{ file, user, uid, groups string }{
		{"admin.kubeconfig", "admin", "1", "system:masters"},
		// A local test cluster: the controller manager acts with its own
		// credentials for every controller.
		{"kcm.kubeconfig", "system:kube-controller-manager", "3", "system:masters"},
		{"scheduler.kubeconfig", "system:kube-scheduler", "4", ""},
	}
	// Each kubelet has its own identity: the Node authorizer lets node i
	// read and write only what is node i's.
	for i := 1; i <= MaxNodes; i++ {
		users = append(users, struct{ file, user, uid, groups string }{
			filepath.Join("kubeconfigs", nodeName(i)), "system:node:" + nodeName(i), strconv.Itoa(100 + i), "system:nodes"})
	}
	var tokens strings.Builder
	for _, u := range users {
		tok := token()
		fmt.Fprintf(&tokens, "%s,%s,%s,%q\n", tok, u.user, u.uid, u.groups)
		if err := os.WriteFile(c.path(u.file), []byte(kubeconfig(server, ca, u.user, tok)), 0o600); err != nil {
			return err
		}
	}
	if err := writeFiles(c.Dir, map[string]string{
		"tokens.csv":          tokens.String(),
		"registry/config.yml": testground.RegistryConfig(c.path("registry", "data"), RegistryHost),
	}); err != nil {
		return err
	}
	if err := c.writeCredentialProviders(); err != nil {
		return err
	}
	return c.writeNodeConfigs(c.node(1))
}

// writeNodeConfigs writes node n's containerd, CNI and kubelet
// configurations into its directory, with the paths the node sees.
func (c *Cluster) writeNodeConfigs(n Node) error {
	subnet := fmt.Sprintf("10.244.%d.0/24", n.Index-1)
	kubeletAddr, kubeletPort, healthzPort, cgroupRoot := n.IP, 10250, 10248, "/"+n.Name
	if n.Index == 1 {
		// Node 1 shares the host's ports and cgroups with whatever runs there.
		kubeletPort, healthzPort, cgroupRoot = 10350, 10358, "/"
	}
	files := map[string]string{
		"containerd/config.toml": testground.ContainerdConfig(c.path("containerd"), PauseImage),
		"containerd/cni/10-prepull.conflist": fmt.Sprintf(`{"cniVersion":"1.0.0","name":"prepull","plugins":[{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q,"routes":[{"dst":"0.0.0.0/0"}]}}]}`,
			BridgeName, subnet, c.path("cni-ipam")),
		"kubelet/config.yaml": kubeletConfig(c.ContainerdSocket(), c.path("pod-logs"), c.path("kubelet", "plugins"), c.path("pki", "ca.crt"),
			kubeletAddr, kubeletPort, healthzPort, cgroupRoot),
	}
	for _, host := range c.trustedHosts() {
		files["containerd/certs.d/"+host+"/hosts.toml"] = hostsToml(host)
	}
	return writeFiles(n.Dir, files)
}

// TrustHost lets every node, and every node added later, pull from host
// ("ip:port") over plain HTTP.
func (c *Cluster) TrustHost(host string) error {
	f, err := os.OpenFile(c.path("trusted-hosts"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, host)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range c.RunningNodes() {
		if err := writeFiles(n.Dir, map[string]string{"containerd/certs.d/" + host + "/hosts.toml": hostsToml(host)}); err != nil {
			return err
		}
	}
	return nil
}

// trustedHosts are the registry's host and those TrustHost added.
func (c *Cluster) trustedHosts() []string {
	hosts := []string{RegistryHost}
	if data, err := os.ReadFile(c.path("trusted-hosts")); err == nil {
		hosts = append(hosts, strings.Fields(string(data))...)
	}
	return hosts
}

func hostsToml(host string) string {
	return fmt.Sprintf("server = 'http://%[1]s'\n\n[host.'http://%[1]s']\n  capabilities = ['pull', 'resolve']\n", host)
}

func writeFiles(dir string, files map[string]string) error {
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func kubeletConfig(socket, podLogs, plugins, clientCA, address string, port, healthzPort int, cgroupRoot string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[6]s
containerRuntimeEndpoint: unix://%[1]s
address: %[4]s
port: %[5]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[7]d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[8]s}
authorization: {mode: AlwaysAllow}
oomScoreAdj: 0
failSwapOn: false
podLogsDir: %[2]s
volumePluginDir: %[3]s
resolvConf: /etc/resolv.conf
enforceNodeAllocatable: []
serializeImagePulls: false
imageMinimumGCAge: 0s
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
`, socket, podLogs, plugins, address, port, cgroupRoot, healthzPort, clientCA)
}

// bin is a project-built binary.
func (c *Cluster) bin(name string) string { return filepath.Join(c.Bin, name) }

// lookPath finds a system binary.
func (c *Cluster) lookPath(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}

// start starts a detached process logging to logs/name.log and records its
// PID; the process's program is name.
func (c *Cluster) start(name, bin string, args ...string) error {
	return c.startAs(name, name, bin, args...)
}

// startAs is start for a process recorded as name whose program ends up
// being exe: bin may be a wrapper (unshare, nsenter) that executes it.
func (c *Cluster) startAs(name, exe, bin string, args ...string) error {
	log, err := os.OpenFile(c.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "PATH="+c.Bin+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	f, err := os.OpenFile(c.path("pids"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s %d %s\n", name, cmd.Process.Pid, exe)
	_ = cmd.Process.Release()
	return err
}

// withLog adds the end of a process's log to err.
func (c *Cluster) withLog(err error, name string) error {
	data, _ := os.ReadFile(c.path("logs", name+".log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return fmt.Errorf("%w; %s log ends:\n%s", err, name, strings.Join(lines, "\n"))
}

// proc is one recorded process.
type proc struct {
	name string
	pid  int
	// exe is its program's name, by which stopPID tells it from another
	// process that came to have its PID.
	exe string
}

// pids reads the recorded processes, in start order.
func (c *Cluster) pids() ([]proc, error) {
	f, err := os.Open(c.path("pids"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []proc
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		p := proc{name: fields[0], exe: fields[0]}
		p.pid, _ = strconv.Atoi(fields[1])
		if len(fields) > 2 {
			p.exe = fields[2]
		}
		out = append(out, p)
	}
	return out, sc.Err()
}

// recorded is the last process recorded as name.
func (c *Cluster) recorded(name string) (proc, error) {
	ps, err := c.pids()
	if err != nil {
		return proc{}, err
	}
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].name == name {
			return ps[i], nil
		}
	}
	return proc{}, fmt.Errorf("no %s recorded in %s", name, c.path("pids"))
}

// Stop stops one recorded process by its PID (the registry, to show that
// pods start without it).
func (c *Cluster) Stop(name string) error {
	p, err := c.recorded(name)
	if err != nil {
		return err
	}
	return stopPID(p.exe, p.pid, 20*time.Second)
}

// stopPID sends SIGTERM and waits, then SIGKILL. A process that is already
// gone, or whose PID now names another program, is left alone.
func stopPID(name string, pid int, grace time.Duration) error {
	if !alive(pid, name) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if !alive(pid, name) {
			return nil
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 50 {
		if !alive(pid, name) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s (pid %d) did not stop", name, pid)
}

// alive reports whether pid runs the binary name.
func alive(pid int, name string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil && strings.Contains(string(stat), ") Z ") {
		return false
	}
	base := filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
	return base == name || (name == "registry" && base == "docker-registry")
}

func waitHTTP(ctx context.Context, what, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: insecureTransport()}
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return true, nil
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		last = err
		return false, nil
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%s not ready after %s: %v", what, timeout, last)
}

func waitFile(ctx context.Context, path string, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		_, err := os.Stat(path)
		return err == nil, nil
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%s did not appear within %s", path, timeout)
}
