package testground

import (
	"fmt"
	"os"
	"os/exec"
)

// BuildCredentialPlugin builds hack/credplugin, the kubelet credential
// provider plugin written for the tests, to out.
func BuildCredentialPlugin(out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./hack/credplugin")
	cmd.Dir = ModuleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build hack/credplugin: %v: %s", err, b)
	}
	return nil
}
