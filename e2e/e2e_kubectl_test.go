//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"prepull.io/prepull/e2e/cluster"
)

// TestKubectlPrepullShowsARollout runs the prepull binary as kubectl's
// plugin (kubectl-prepull on PATH) while a list's image comes over a slow
// link: `status --watch` draws the node's pull part way with its bytes, and
// returns once the list is Ready; `node` then shows the image present and
// pinned for the list, and `doctor` what the node's agent found of its
// runtime's and kubelet's configuration.
func TestKubectlPrepullShowsARollout(t *testing.T) {
	tag, digestRef := push(t, "e2e/progress:1.0", 48<<20)
	digest := digestRef[strings.LastIndex(digestRef, "@")+1:]
	via := shapedRegistryAt(t, "24mbit")
	tag = strings.Replace(tag, cluster.RegistryHost, via, 1)

	plugins := t.TempDir()
	if err := os.Symlink(filepath.Join(c.Bin, "prepull"), filepath.Join(plugins, "kubectl-prepull")); err != nil {
		t.Fatal(err)
	}
	// kubectl hands a plugin the arguments after its name, not its own
	// flags before it: the plugin finds the cluster through KUBECONFIG.
	kubectl := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "kubectl"), args...)
		cmd.Env = append(os.Environ(), "PATH="+plugins+":"+os.Getenv("PATH"), "KUBECONFIG="+c.Kubeconfig())
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
		}
		return out.String(), nil
	}
	if out, err := kubectl("plugin", "list"); err != nil || !strings.Contains(out, "kubectl-prepull") {
		t.Fatalf("kubectl plugin list does not find kubectl-prepull (%v):\n%s", err, out)
	}

	l := applyList(t, "progress", nil, tag)
	t.Cleanup(func() { deleteList(t, l) })
	start := time.Now()
	out, err := kubectl("prepull", "status", "progress", "-n", "e2e", "--watch", "--interval", "500ms")
	if err != nil {
		t.Fatalf("kubectl prepull status --watch: %v\n%s", err, out)
	}
	t.Logf("status --watch returned after %s", time.Since(start).Round(time.Millisecond))

	// A frame with the node's pull part way: its row names the node and the
	// image, a bar between 1 and 99 %, and its bytes of the image's total.
	row := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(c.NodeName) + `\s+` + regexp.QuoteMeta(tag) + `\s+\[[#-]+\]\s+(\d+)%\s+\S+ MiB/\S+ MiB`)
	partWay := 0
	for _, m := range row.FindAllStringSubmatch(out, -1) {
		if p, _ := strconv.Atoi(m[1]); p > 0 && p < 100 {
			partWay++
		}
	}
	if partWay == 0 {
		t.Errorf("no frame of status --watch shows %s pulling %s part way:\n%s", c.NodeName, tag, out)
	}
	frames := strings.Split(strings.TrimSpace(out), "\n\n")
	if last := frames[len(frames)-1]; !strings.Contains(last, "e2e/progress  Ready") || !strings.Contains(last, digest) {
		t.Errorf("the last frame is not the list Ready at %s:\n%s", digest, last)
	}

	out, err = kubectl("prepull", "node", c.NodeName)
	if err != nil {
		t.Fatalf("kubectl prepull node: %v\n%s", err, out)
	}
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "e2e/progress") && strings.Contains(l, digest) {
			line = l
		}
	}
	if !strings.Contains(line, "Present") || !strings.Contains(line, "yes (e2e/progress)") {
		t.Errorf("kubectl prepull node %s does not show the image Present and pinned for e2e/progress:\n%s", c.NodeName, out)
	}

	// The node's agent ran the doctor on the cluster's own containerd and
	// kubelet configuration: nothing there fails.
	out, err = kubectl("prepull", "doctor", c.NodeName)
	if err != nil {
		t.Fatalf("kubectl prepull doctor: %v\n%s", err, out)
	}
	for _, want := range []string{"PASS  runtime", "PASS  registry-hosts", "PASS  pins", "PASS  kubelet-credential-verification  imagePullCredentialsVerificationPolicy NeverVerifyPreloadedImages"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl prepull doctor %s does not show %q:\n%s", c.NodeName, want, out)
		}
	}
}
