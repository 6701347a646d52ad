package testground

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// StartChild starts cmd so that it is killed if the test process dies
// before stopping it. The kernel sends a child its parent-death signal when
// the thread that forked it ends, not the process, and the Go runtime may
// end threads while the test runs; so the fork happens on a thread locked
// to a goroutine that stays until the child has exited. The caller still
// waits for the child (cmd.Wait) and stops it by its PID.
func StartChild(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			// Unlocked: the thread did not fork anything.
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		// The thread is kept while the child lives: it blocks until the
		// child has exited, without reaping it (WNOWAIT), so that the
		// caller's cmd.Wait still collects it.
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
	}()
	return <-started
}

// StartBinary starts bin with args, KUBECONFIG pointing at a file that holds
// kubeconfig, and its output in logPath; it is killed by its PID when the
// test ends.
func StartBinary(t testing.TB, bin string, kubeconfig []byte, logPath string, args ...string) *exec.Cmd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+path)
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := StartChild(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
	})
	return cmd
}
