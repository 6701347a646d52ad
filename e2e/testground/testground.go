// Package testground starts, for a test, the real parts prepull is proven on:
// a containerd with its own root, state and socket; a CNCF distribution
// registry on a free loopback port, with or without basic auth; and a
// kube-apiserver with etcd through envtest. It also makes and pushes test
// images with random, incompressible layers.
//
// The binaries come from the project's bin directory, which `make testground`
// fills (see hack/build-tool.sh and hack/install-deps.sh). Every process a
// test starts is stopped by its PID when the test ends, and its directories
// are removed; nothing is left running between tests.
//
// A test that lacks a part (not root, a binary not built) is skipped with a
// reason that says how to get it, except under CI=true, where it fails: CI
// must never pass by skipping what it is there to run.
package testground

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BinDir returns the directory of the test-ground binaries: $PREPULL_BIN, or
// bin/ at the root of the module.
func BinDir() string {
	if d := os.Getenv("PREPULL_BIN"); d != "" {
		return d
	}
	return filepath.Join(ModuleRoot(), "bin")
}

// ModuleRoot returns the root of the prepull module, found from the working
// directory up, or the working directory when there is none.
func ModuleRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.HasPrefix(string(data), "module prepull.io/prepull\n") {
			return dir
		}
		if dir == filepath.Dir(dir) {
			return wd
		}
	}
}

// Binary returns the path of a test-ground binary, looked up in BinDir and
// then in PATH, or stops the test when there is none.
func Binary(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(), name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	Unavailable(t, "%s is not built or installed: run `make testground`", name)
	return ""
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "this test runs a real containerd and needs root (run `make test` as root)")
	}
}

// Unavailable stops a test that cannot get a part of the test ground: a loud
// skip on a developer's machine, a failure under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "TEST GROUND UNAVAILABLE: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listened on a moment
// ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TempDir returns a new directory with a short path, removed when the test
// ends. Unix socket paths are limited to 108 bytes, which t.TempDir can pass.
func TempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatalf("make temp dir: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// process is a child process the test ground started and must stop.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	mu   sync.Mutex
	err  error
}

// startProcess starts bin with args, logging to logPath.
func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that a test's Ctrl-C reaches the test first
	// and the test stops the child itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := StartChild(cmd); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// stop ends the process by its PID: SIGTERM, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) error {
	defer p.log.Close()
	if done, _ := p.exited(); done {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) did not stop within %s and was killed", p.name, p.cmd.Process.Pid, grace)
}

// tail returns the last lines of the process's log, for failure messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls ready until it succeeds, the process exits, or timeout.
func waitFor(p *process, logPath string, timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if done, werr := p.exited(); done {
			return fmt.Errorf("%s exited (%v) before it was ready; its log ends:\n%s", p.name, werr, tail(logPath, 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w; its log ends:\n%s", p.name, timeout, err, tail(logPath, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
