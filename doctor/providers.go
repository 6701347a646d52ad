package doctor

import (
	"fmt"
	"strings"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/credprovider"
)

// CheckCredentialProviders is the check of the node's kubelet credential
// provider plugins, as the agent runs them.
const CheckCredentialProviders = "credential-providers"

// providers checks the CredentialProviderConfig the node was given: it
// parses, and each plugin's executable is in the bin dir; it says which
// images each matches. No check without a config.
func (n Node) providers(add adder) {
	if n.CredentialProviderConfig == "" {
		return
	}
	p, err := credprovider.Load(n.CredentialProviderConfig, n.CredentialProviderBinDir)
	if err != nil {
		add(CheckCredentialProviders, prepullv1.CheckFail, err.Error(), "give the agent the kubelet's --image-credential-provider-config and --image-credential-provider-bin-dir (the chart's agent.credentialProviders)")
		return
	}
	var ok, bad []string
	for _, d := range p.Describe() {
		switch {
		case d.Problem != "":
			bad = append(bad, fmt.Sprintf("%s: %s", d.Name, d.Problem))
		case d.Audience != "":
			ok = append(ok, fmt.Sprintf("%s for %s (with a token of the lists' spec.serviceAccountName for audience %s, which the controller's --token-audiences must allow)", d.Name, strings.Join(d.MatchImages, ", "), d.Audience))
		default:
			ok = append(ok, fmt.Sprintf("%s for %s", d.Name, strings.Join(d.MatchImages, ", ")))
		}
	}
	msg := fmt.Sprintf("%d credential provider plugins in %s", len(ok)+len(bad), n.CredentialProviderConfig)
	if len(ok) > 0 {
		msg += "; run: " + strings.Join(ok, "; ")
	}
	if len(bad) > 0 {
		add(CheckCredentialProviders, prepullv1.CheckFail, msg+"; cannot run: "+strings.Join(bad, "; "),
			"install the plugins in "+n.CredentialProviderBinDir+", executable, as the kubelet's --image-credential-provider-bin-dir has them")
		return
	}
	add(CheckCredentialProviders, prepullv1.CheckPass, msg, "")
}
