package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildPause compiles hack/pause, statically, from the module at root.
func BuildPause(root string) ([]byte, error) {
	out := filepath.Join(os.TempDir(), fmt.Sprintf("prepull-pause-%d", os.Getpid()))
	defer os.Remove(out)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./hack/pause")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %v: %s", err, b)
	}
	return os.ReadFile(out)
}
