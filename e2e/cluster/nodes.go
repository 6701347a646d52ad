package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// registryPort is RegistryHost's port.
const registryPort = 15000

// nodeDirs are the directories each node has of its own: node i's are
// bind-mounted over node 1's in its mount namespace.
var nodeDirs = []string{"containerd", "kubelet", "pod-logs", "cni-ipam"}

// Node is one node of the cluster.
type Node struct {
	// Index is the node's number, from 1.
	Index int
	// Name is the node's name, prepull-node-<index>; for a node past the
	// first, also its network namespace's.
	Name string
	// IP is the node's address on the nodes' bridge.
	IP string
	// Dir holds the node's containerd, kubelet, pod-log and CNI
	// directories: the cluster's Dir for node 1.
	Dir string
}

// ContainerdSocket is the node's containerd socket, as the host reaches it.
func (n Node) ContainerdSocket() string { return filepath.Join(n.Dir, "containerd", "c.sock") }

func nodeName(i int) string { return fmt.Sprintf("prepull-node-%d", i) }

func nodeIP(i int) string { return fmt.Sprintf("10.98.0.%d", i) }

func (c *Cluster) node(i int) Node {
	n := Node{Index: i, Name: nodeName(i), IP: nodeIP(i), Dir: c.Dir}
	if i > 1 {
		n.Dir = c.path("nodes", n.Name)
	}
	return n
}

// Node returns node i (from 1).
func (c *Cluster) Node(i int) Node { return c.node(i) }

// RunningNodes are the nodes up now: node 1 and every added node not
// removed, by index.
func (c *Cluster) RunningNodes() []Node {
	out := []Node{c.node(1)}
	entries, _ := os.ReadDir(c.path("nodes"))
	for _, e := range entries {
		if i, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "prepull-node-")); err == nil && i > 1 {
			out = append(out, c.node(i))
		}
	}
	slices.SortFunc(out, func(a, b Node) int { return a.Index - b.Index })
	return out
}

// upBridge makes the bridge the nodes' network namespaces hang on, with
// node 1's address on the host's side.
func (c *Cluster) upBridge() error {
	return run("ip", "link", "add", NodesBridge, "type", "bridge").
		then("ip", "addr", "add", nodeIP(1)+"/24", "dev", NodesBridge).
		then("ip", "link", "set", NodesBridge, "up").err
}

// AddNode brings up the next node — its network namespace on the nodes'
// bridge, its mount namespace, forwarders, containerd and kubelet — and
// waits until it is Ready.
func (c *Cluster) AddNode(ctx context.Context, cs *kubernetes.Clientset) (Node, error) {
	return c.AddNodeWith(ctx, cs, NodeHooks{})
}

// NodeHooks run while a node comes up; each may be nil.
type NodeHooks struct {
	// Network runs once the node's network is up, before any of its
	// processes start (to shape its link, say).
	Network func(Node) error
	// Runtime runs once its containerd answers, before its kubelet starts
	// (to put images on it, as a node image built with them would).
	Runtime func(Node) error
	// KubeletConfig rewrites the node's kubelet configuration (YAML)
	// before its kubelet starts.
	KubeletConfig func(string) string
	// KubeletArgs are more flags of its kubelet.
	KubeletArgs []string
}

// AddNodeWith is AddNode with hooks.
func (c *Cluster) AddNodeWith(ctx context.Context, cs *kubernetes.Clientset, hooks NodeHooks) (Node, error) {
	i := 2
	for _, n := range c.RunningNodes() {
		i = max(i, n.Index+1)
	}
	if i > MaxNodes {
		return Node{}, fmt.Errorf("the cluster has tokens for %d nodes", MaxNodes)
	}
	n := c.node(i)
	if err := c.startNode(ctx, n, hooks); err != nil {
		return n, err
	}
	if err := WaitNodeReady(ctx, cs, n.Name, 2*time.Minute); err != nil {
		return n, c.withLog(err, "kubelet@"+n.Name)
	}
	return n, nil
}

func (c *Cluster) startNode(ctx context.Context, n Node, hooks NodeHooks) error {
	for _, d := range []string{"containerd/certs.d", "containerd/cni", "kubelet/root", "kubelet/pki", "kubelet/plugins", "pod-logs", "cni-ipam"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := c.writeNodeConfigs(n); err != nil {
		return err
	}
	if hooks.KubeletConfig != nil {
		p := filepath.Join(n.Dir, "kubelet", "config.yaml")
		cfg, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(hooks.KubeletConfig(string(cfg))), 0o600); err != nil {
			return err
		}
	}
	netns, host := n.Name, "ppn"+strconv.Itoa(n.Index)
	if err := run("ip", "netns", "add", netns).
		then("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netns).
		then("ip", "link", "set", host, "master", NodesBridge, "up").
		then("ip", "-n", netns, "addr", "add", n.IP+"/24", "dev", "eth0").
		then("ip", "-n", netns, "link", "set", "eth0", "up").
		then("ip", "-n", netns, "link", "set", "lo", "up").
		then("ip", "-n", netns, "route", "add", "default", "via", nodeIP(1)).err; err != nil {
		return err
	}
	if hooks.Network != nil {
		if err := hooks.Network(n); err != nil {
			return err
		}
	}
	if err := makeCgroupRoot(n.Name); err != nil {
		return err
	}
	enter := "--net=/run/netns/" + netns
	for name, port := range map[string]int{"forward-apiserver@": APIServerPort, "forward-registry@": registryPort} {
		if err := c.startAs(name+n.Name, "socat", c.lookPath("nsenter"), enter, c.lookPath("socat"),
			fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr", port), fmt.Sprintf("TCP:%s:%d", nodeIP(1), port)); err != nil {
			return err
		}
	}
	// containerd makes the node's mount namespace; the kubelet joins it.
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range nodeDirs {
		fmt.Fprintf(&script, "mount --bind %s %s\n", filepath.Join(n.Dir, d), c.path(d))
	}
	fmt.Fprintf(&script, "exec %s %s %s --config %s\n", c.lookPath("nsenter"), enter, c.bin("containerd"), c.path("containerd", "config.toml"))
	if err := c.startAs("containerd@"+n.Name, "containerd", c.lookPath("unshare"), "--mount", "--propagation", "private", "sh", "-c", script.String()); err != nil {
		return err
	}
	if err := waitFile(ctx, n.ContainerdSocket(), 60*time.Second); err != nil {
		return c.withLog(err, "containerd@"+n.Name)
	}
	if hooks.Runtime != nil {
		if err := hooks.Runtime(n); err != nil {
			return err
		}
	}
	ctd, err := c.recorded("containerd@" + n.Name)
	if err != nil {
		return err
	}
	args := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", ctd.pid), enter, c.bin("kubelet")}, c.kubeletArgs(n)...)
	args = append(args, hooks.KubeletArgs...)
	return c.startAs("kubelet@"+n.Name, "kubelet", c.lookPath("nsenter"), args...)
}

// ShapeLink caps node n's link to the host at rate (tc's units, "100mbit")
// both ways, with a token bucket at each end of its veth pair.
func ShapeLink(n Node, rate string) error {
	if n.Index < 2 {
		return errors.New("node 1 is the host: it has no link of its own")
	}
	tbf := []string{"root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"}
	return run("tc", append([]string{"qdisc", "add", "dev", "ppn" + strconv.Itoa(n.Index)}, tbf...)...).
		then("ip", append([]string{"netns", "exec", n.Name, "tc", "qdisc", "add", "dev", "eth0"}, tbf...)...).err
}

// UnshapeLink takes ShapeLink's caps off node n's link.
func UnshapeLink(n Node) error {
	if n.Index < 2 {
		return errors.New("node 1 is the host: it has no link of its own")
	}
	return run("tc", "qdisc", "del", "dev", "ppn"+strconv.Itoa(n.Index), "root").
		then("ip", "netns", "exec", n.Name, "tc", "qdisc", "del", "dev", "eth0", "root").err
}

// RemoveNode plays node name's death: its kubelet, pods, containerd and
// forwarders stop, its Node object is deleted, and its namespaces, cgroups
// and directory go.
func (c *Cluster) RemoveNode(ctx context.Context, cs *kubernetes.Clientset, name string) error {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "prepull-node-"))
	if err != nil || i < 2 {
		return fmt.Errorf("node %s: only an added node can be removed", name)
	}
	errs := []error{c.stopNode(c.node(i), nil)}
	if err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete node %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// stopNode stops an added node's processes by PID, its pods first through
// its runtime, then removes its network namespace, cgroups and directory.
func (c *Cluster) stopNode(n Node, logf func(string, ...any)) error {
	var errs []error
	stop := func(name string) {
		if p, err := c.recorded(name); err == nil {
			if err := stopPID(p.exe, p.pid, 20*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	stop("kubelet@" + n.Name)
	if p, err := c.recorded("containerd@" + n.Name); err == nil && alive(p.pid, p.exe) {
		if err := removePods(n.ContainerdSocket()); err != nil {
			errs = append(errs, fmt.Errorf("remove pods of %s: %w", n.Name, err))
		}
	}
	stop("containerd@" + n.Name)
	stop("forward-apiserver@" + n.Name)
	stop("forward-registry@" + n.Name)
	killInNetns(n.Name, logf)
	if err := exec.Command("ip", "netns", "del", n.Name).Run(); err != nil && netnsExists(n.Name) {
		errs = append(errs, fmt.Errorf("ip netns del %s: %w", n.Name, err))
	}
	// The kernel may keep the namespace a while after its name is gone
	// (its TCP connections in TIME_WAIT), and with it the node's end of
	// the veth pair and so the host's: the host's end goes now, and the
	// pair with it.
	errs = append(errs, removeLink("ppn"+strconv.Itoa(n.Index)), removeCgroupTree(n.Name))
	if err := os.RemoveAll(n.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// makeCgroupRoot makes node name's cgroup root in every hierarchy: this
// machine's cgroups are v1, and two kubelets under one root would clean up
// each other's pod cgroups.
func makeCgroupRoot(name string) error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		if st, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil || st.IsDir() {
			continue
		}
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup root %s: %w", dir, err)
		}
		// A new cpuset has no CPUs or memory nodes until given its parent's.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				_ = os.WriteFile(filepath.Join(dir, f), v, 0o644)
			}
		}
	}
	return nil
}

// removeCgroupTree removes node name's cgroup root in every hierarchy,
// deepest first.
func removeCgroupTree(name string) error {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	return removeTrees(roots)
}

// removeTrees removes the directory trees under roots, deepest first, as
// cgroups must be: each directory once empty of directories.
func removeTrees(roots []string) error {
	var dirs []string
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// process is one process of the machine, as /proc shows it.
type process struct {
	pid int
	// exe is its program's name; cmdline its arguments, space-separated.
	exe, cmdline string
}

// processes lists the machine's processes whose command line contains
// substr ("" for every one).
func processes(substr string) []process {
	var out []process
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))
		if err != nil || !strings.Contains(cmdline, substr) {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		out = append(out, process{pid: pid, exe: filepath.Base(strings.TrimSuffix(exe, " (deleted)")), cmdline: cmdline})
	}
	return out
}

// killInNetns stops every process left in network namespace name (shims
// that outlived their containerd).
func killInNetns(name string, logf func(string, ...any)) {
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+name, &want); err != nil {
		return
	}
	for _, p := range processes("") {
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", p.pid), &st); err != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if logf != nil {
			logf("stopping %s (pid %d), left in %s", p.exe, p.pid, name)
		}
		_ = stopPID(p.exe, p.pid, 5*time.Second)
	}
}

// killForwarders stops the host's forwarders' children, which socat forks
// per connection and which outlive their parent.
func killForwarders(logf func(string, ...any)) {
	for _, p := range forwarders() {
		if logf != nil {
			logf("stopping socat (pid %d), a forwarder's child", p.pid)
		}
		_ = stopPID(p.exe, p.pid, 5*time.Second)
	}
}

// forwarders are the socat processes that forward the nodes' bridge.
func forwarders() []process {
	return slices.DeleteFunc(processes("bind="+nodeIP(1)), func(p process) bool { return p.exe != "socat" })
}

func netnsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// runner runs commands one after the other until one fails.
type runner struct{ err error }

func run(name string, args ...string) runner { return runner{}.then(name, args...) }

func (r runner) then(name string, args ...string) runner {
	if r.err != nil {
		return r
	}
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		r.err = fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return r
}

// Leftovers lists what a cluster that is down left on the machine: its
// directory, recorded processes still running, network namespaces, links,
// mounts under its directory, and pod or node cgroups. Empty means the
// machine is as it was.
func (c *Cluster) Leftovers() []string {
	var out []string
	if _, err := os.Stat(c.Dir); err == nil {
		out = append(out, "directory "+c.Dir)
	}
	for i := 1; i <= MaxNodes; i++ {
		if netnsExists(nodeName(i)) {
			out = append(out, "network namespace "+nodeName(i))
		}
		if i > 1 && exec.Command("ip", "link", "show", "ppn"+strconv.Itoa(i)).Run() == nil {
			out = append(out, "link ppn"+strconv.Itoa(i))
		}
		if dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", nodeName(i))); len(dirs) > 0 {
			out = append(out, "cgroups "+strings.Join(dirs, " "))
		}
	}
	for _, l := range []string{NodesBridge, BridgeName} {
		if exec.Command("ip", "link", "show", l).Run() == nil {
			out = append(out, "link "+l)
		}
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4]+"/", c.Dir+"/") {
				out = append(out, "mount "+f[4])
			}
		}
	}
	for _, p := range forwarders() {
		out = append(out, fmt.Sprintf("process %d: a forwarder (socat)", p.pid))
	}
	if dirs, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods*"); len(dirs) > 0 {
		out = append(out, "cgroups "+strings.Join(dirs, " "))
	}
	for _, p := range processes(c.Dir + "/") {
		out = append(out, fmt.Sprintf("process %d: %s", p.pid, p.cmdline))
	}
	return out
}
