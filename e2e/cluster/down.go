package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sysctls the kubelet changes, saved before it starts and restored by Down.
var sysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// saveHostState records the sysctls and iptables rules that the kubelet and
// the CNI plugin change.
func (c *Cluster) saveHostState() error {
	var b strings.Builder
	for _, s := range sysctls {
		v, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s %s\n", s, strings.TrimSpace(string(v)))
	}
	if err := os.WriteFile(c.path("sysctls.saved"), []byte(b.String()), 0o600); err != nil {
		return err
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(tool + "-save").Output()
		if err != nil {
			return fmt.Errorf("%s-save (is iptables installed? make deps): %w", tool, err)
		}
		if err := os.WriteFile(c.path(tool+".saved"), out, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Down stops every recorded process by PID and undoes what the cluster did
// to the machine, then removes Dir. It goes on past errors and reports them
// all.
func (c *Cluster) Down(logf func(string, ...any)) error {
	if _, err := os.Stat(c.Dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	ps, _ := c.pids()
	byName := map[string]proc{}
	for _, p := range ps {
		byName[p.name] = p
	}
	stop := func(name string) {
		if p, ok := byName[name]; ok {
			if err := stopPID(p.exe, p.pid, 20*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The added nodes first, whole; then node 1's kubelet, so that it
	// restarts nothing; then every pod through the runtime, so that no
	// container, mount or network is left; then the rest.
	for _, n := range c.RunningNodes()[1:] {
		if err := c.stopNode(n, logf); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	stop("kubelet")
	if p, ok := byName["containerd"]; ok && alive(p.pid, p.exe) {
		if err := removePods(c.ContainerdSocket()); err != nil {
			errs = append(errs, fmt.Errorf("remove pods: %w", err))
		}
	}
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd", "containerd", "forward-apiserver", "forward-registry", "registry"} {
		stop(name)
	}
	c.killShims(logf)
	killForwarders(logf)
	errs = append(errs, c.unmountAll(), c.removeCgroups(), removeLink(BridgeName), removeLink(NodesBridge), c.restoreHostState(), c.removeLogLinks())
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removePods stops and removes every pod sandbox of the runtime at socket
// through CRI.
func removePods(socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range resp.GetItems() {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.GetId()}); err != nil {
			errs = append(errs, err)
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.GetId()}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killShims stops runtime shims whose sockets live in the cluster's
// directory, should any survive containerd.
func (c *Cluster) killShims(logf func(string, ...any)) {
	for _, p := range processes(c.Dir) {
		if p.exe == "containerd-shim-runc-v2" {
			logf("stopping leftover shim %d", p.pid)
			_ = stopPID(p.exe, p.pid, 5*time.Second)
		}
	}
}

// unmountAll unmounts every mount under Dir, deepest first.
func (c *Cluster) unmountAll() error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == c.Dir || strings.HasPrefix(fields[4], c.Dir+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, m := range mounts {
		if err := exec.Command("umount", "-l", m).Run(); err != nil {
			errs = append(errs, fmt.Errorf("umount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the kubelet's pod cgroups, deepest first.
func (c *Cluster) removeCgroups() error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods*")
	unified, _ := filepath.Glob("/sys/fs/cgroup/kubepods*")
	return removeTrees(append(roots, unified...))
}

// removeLink deletes the network link name (a bridge, or a veth pair by
// one end), unless it is gone already.
func removeLink(name string) error {
	if err := exec.Command("ip", "link", "show", name).Run(); err != nil {
		return nil
	}
	if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
		// The kernel may remove a veth pair between the two commands,
		// when the namespace holding its other end goes.
		if exec.Command("ip", "link", "show", name).Run() != nil {
			return nil
		}
		return fmt.Errorf("ip link del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// restoreHostState puts back the saved sysctls and iptables rules.
func (c *Cluster) restoreHostState() error {
	var errs []error
	if data, err := os.ReadFile(c.path("sysctls.saved")); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok {
				if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
					errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
				}
			}
		}
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		data, err := os.ReadFile(c.path(tool + ".saved"))
		if err != nil {
			continue
		}
		cmd := exec.Command(tool + "-restore")
		cmd.Stdin = strings.NewReader(string(data))
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("%s-restore: %v: %s", tool, err, out))
		}
		// iptables-nft-restore keeps chains the dump does not name: remove
		// the ones the kubelet added, and the rules that jump to them.
		if err := removeNewChains(tool, string(data)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNewChains deletes, table by table, every chain that the saved dump
// does not have, after deleting the rules that jump to it.
func removeNewChains(tool, saved string) error {
	now, err := exec.Command(tool + "-save").Output()
	if err != nil {
		return fmt.Errorf("%s-save: %w", tool, err)
	}
	old := chains(saved)
	var errs []error
	table := ""
	type rule struct{ table, spec string }
	var jumps []rule
	fresh := map[string][]string{}
	for _, line := range strings.Split(string(now), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			if !old[table+"/"+name] {
				fresh[table] = append(fresh[table], name)
			}
		case strings.HasPrefix(line, "-A "):
			jumps = append(jumps, rule{table, line})
		}
	}
	for _, j := range jumps {
		for _, c := range fresh[j.table] {
			if strings.Contains(j.spec, " -j "+c) || strings.HasPrefix(j.spec, "-A "+c+" ") {
				args := append([]string{"-t", j.table, "-D"}, splitRule(strings.TrimPrefix(j.spec, "-A "))...)
				if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("%s %s: %v: %s", tool, strings.Join(args, " "), err, out))
				}
				break
			}
		}
	}
	for t, cs := range fresh {
		for _, c := range cs {
			_ = exec.Command(tool, "-t", t, "-F", c).Run()
			if out, err := exec.Command(tool, "-t", t, "-X", c).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s -t %s -X %s: %v: %s", tool, t, c, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// chains lists "table/chain" of an iptables-save dump.
func chains(dump string) map[string]bool {
	out := map[string]bool{}
	table := ""
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			out[table+"/"+strings.Fields(line[1:])[0]] = true
		}
	}
	return out
}

// splitRule splits an iptables-save rule into arguments, keeping quoted
// comments whole.
func splitRule(spec string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range spec {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// removeLogLinks removes the kubelet's /var/log/containers links into Dir.
func (c *Cluster) removeLogLinks() error {
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, c.Dir) {
			_ = os.Remove(l)
		}
	}
	return nil
}

func insecureTransport() *http.Transport {
	return &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // a readiness probe of our own loopback apiserver
}
