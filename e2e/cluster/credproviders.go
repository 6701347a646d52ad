package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"prepull.io/prepull/e2e/testground"
)

// Credential provider plugins of the local cluster: hack/credplugin, a
// plugin speaking the kubelet's exec protocol, in the cluster directory's
// credential-providers/bin, with two configurations there: one the agents
// are given (the overlay and the Helm values of hack/cluster), one a test
// may give a node's kubelet (NodeHooks.KubeletArgs with
// KubeletCredentialArgs). The plugin matches the images of PluginRegistry
// (a registry with authentication a test starts there) and answers
// PluginUser and PluginPassword, kept an hour by registry; run by a
// kubelet, it appends each image it is asked about to PluginRuns (an
// agent counts its runs in its metrics). A second plugin, for
// garbage.example.com, answers what is not JSON.
const (
	PluginUser     = "plugin-user"
	PluginPassword = "plugin-pass"
)

// PluginRegistry is where the plugin's registry listens: node 1's address,
// a port of its own (the kubelet matches ports exactly).
var PluginRegistry = nodeIP(1) + ":15050"

// TokenRegistry is where the registry of the agents' token-mode plugin
// listens: that plugin (tokenAttributes, audience TokenAudience) answers
// TokenUser and TokenPassword only for a token of TokenServiceAccount
// ("namespace:name"), as a registry granting per workload would.
var TokenRegistry = nodeIP(1) + ":15051"

// The token-mode plugin's audience, account and answer.
const (
	TokenAudience       = "registry.test"
	TokenServiceAccount = "multi:puller"
	TokenUser           = "token-user"
	TokenPassword       = "token-pass"
)

// KubeletCredentialArgs are the kubelet flags that give it the plugins.
func (c *Cluster) KubeletCredentialArgs() []string {
	return []string{"--image-credential-provider-config=" + c.path("credential-providers", "kubelet.yaml"),
		"--image-credential-provider-bin-dir=" + c.path("credential-providers", "bin")}
}

// PluginRuns is the log of the plugin's runs by kubelets: one line per
// run, the image it was asked about.
func (c *Cluster) PluginRuns() string {
	return c.path("credential-providers", "kubelet-runs.log")
}

func (c *Cluster) writeCredentialProviders() error {
	bin := c.path("credential-providers", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	if err := testground.BuildCredentialPlugin(filepath.Join(bin, "credplugin")); err != nil {
		return err
	}
	for _, name := range []string{"credplugin-garbage", "credplugin-token"} {
		link := filepath.Join(bin, name)
		_ = os.Remove(link)
		if err := os.Link(filepath.Join(bin, "credplugin"), link); err != nil {
			return err
		}
	}
	// extraEnv ends the first plugin's env: a log of its runs, for a
	// kubelet (an agent counts its runs in its metrics).
	config := func(extraEnv string) string {
		return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: credplugin
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: [%q]
  defaultCacheDuration: 1m
  env:
  - {name: CREDPLUGIN_USER, value: %s}
  - {name: CREDPLUGIN_PASSWORD, value: %s}
  - {name: CREDPLUGIN_CACHE, value: 1h}
%s- name: credplugin-garbage
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: [garbage.example.com]
  defaultCacheDuration: 0s
  env: [{name: CREDPLUGIN_MODE, value: garbage}]
`, PluginRegistry, PluginUser, PluginPassword, extraEnv)
	}
	// The agents' alone also has the token-mode plugin.
	token := fmt.Sprintf(`- name: credplugin-token
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: [%[1]q]
  defaultCacheDuration: 1m
  tokenAttributes: {serviceAccountTokenAudience: %[2]s, cacheType: ServiceAccount, requireServiceAccount: true}
  env:
  - {name: CREDPLUGIN_USER, value: %[3]s}
  - {name: CREDPLUGIN_PASSWORD, value: %[4]s}
  - {name: CREDPLUGIN_WANT_SUB, value: "system:serviceaccount:%[5]s"}
  - {name: CREDPLUGIN_WANT_AUD, value: %[2]s}
`, TokenRegistry, TokenAudience, TokenUser, TokenPassword, TokenServiceAccount)
	return writeFiles(c.Dir, map[string]string{
		"credential-providers/agent.yaml":   config("") + token,
		"credential-providers/kubelet.yaml": config(fmt.Sprintf("  - {name: CREDPLUGIN_LOG, value: %q}\n", c.PluginRuns())),
	})
}
