package doctor

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
)

// kubeletConfig is what the doctor reads of a KubeletConfiguration file.
type kubeletConfig struct {
	ImageGCHighThresholdPercent            *int32            `json:"imageGCHighThresholdPercent,omitempty"`
	ImageGCLowThresholdPercent             *int32            `json:"imageGCLowThresholdPercent,omitempty"`
	ImagePullCredentialsVerificationPolicy string            `json:"imagePullCredentialsVerificationPolicy,omitempty"`
	PreloadedImagesVerificationAllowlist   []string          `json:"preloadedImagesVerificationAllowlist,omitempty"`
	FeatureGates                           map[string]bool   `json:"featureGates,omitempty"`
	EvictionHard                           map[string]string `json:"evictionHard,omitempty"`
	EvictionSoft                           map[string]string `json:"evictionSoft,omitempty"`
}

// The kubelet's defaults.
const (
	defaultGCHigh = 85
	defaultGCLow  = 80
	// credentialGate is the feature gate of KEP-2535, beta and on by
	// default from Kubernetes 1.35.
	credentialGate = "KubeletEnsureSecretPulledImages"
)

// errNotGiven is why a check that needs the kubelet's configuration did not
// read it.
type errNotGiven struct{}

func (errNotGiven) Error() string { return "the kubelet's configuration file was not given" }

func (n Node) kubelet() (*kubeletConfig, error) {
	if n.KubeletConfig == "" {
		return nil, errNotGiven{}
	}
	return readKubeletConfig(n.KubeletConfig)
}

// readKubeletConfig reads the KubeletConfiguration file at path.
func readKubeletConfig(path string) (*kubeletConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kc := &kubeletConfig{}
	if err := yaml.Unmarshal(data, kc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return kc, nil
}

func (kc *kubeletConfig) gcHigh() int32 {
	if kc == nil || kc.ImageGCHighThresholdPercent == nil {
		return defaultGCHigh
	}
	return *kc.ImageGCHighThresholdPercent
}

func (kc *kubeletConfig) gcLow() int32 {
	if kc == nil || kc.ImageGCLowThresholdPercent == nil {
		return defaultGCLow
	}
	return *kc.ImageGCLowThresholdPercent
}

const kubeletAdvice = "run with --kubelet-config naming the kubelet's configuration file (the agent: the chart's agent.kubeletConfig)"

func (n Node) filesystem(ctx context.Context, add adder, kc *kubeletConfig) {
	fs, err := n.Images.ImageFsInfo(ctx)
	if err != nil || len(fs) == 0 {
		add(CheckImageFilesystem, prepullv1.CheckWarn, fmt.Sprintf("the runtime reports no image filesystem (%v)", err), "")
		return
	}
	mount := fs[0].Mountpoint
	usage := n.FsUsage
	if usage == nil {
		usage = cri.Statfs
	}
	used, total, err := usage(mount)
	if err != nil || total == 0 {
		add(CheckImageFilesystem, prepullv1.CheckWarn, fmt.Sprintf("the image filesystem %s cannot be measured: %v", mount, err),
			"the agent measures the filesystem at the path the runtime reports: mount it into the agent (the chart's agent.imageFilesystem)")
		return
	}
	pct := 100 * float64(used) / float64(total)
	switch {
	case n.DiskBudget > 0 && pct >= 100*n.DiskBudget:
		add(CheckImageFilesystem, prepullv1.CheckFail, fmt.Sprintf("the image filesystem %s is %.1f%% full, past the agent's disk budget of %.0f%%: no pull starts", mount, pct, 100*n.DiskBudget),
			"free space on the image filesystem, or raise --disk-budget")
	case pct >= float64(kc.gcHigh()):
		add(CheckImageFilesystem, prepullv1.CheckWarn, fmt.Sprintf("the image filesystem %s is %.1f%% full, past the kubelet's image GC high threshold of %d%%: the kubelet is removing unpinned images", mount, pct, kc.gcHigh()),
			"pin what must stay (retain: Pinned) and free space")
	default:
		budget := "no disk budget"
		if n.DiskBudget > 0 {
			budget = fmt.Sprintf("disk budget %.0f%%", 100*n.DiskBudget)
		}
		add(CheckImageFilesystem, prepullv1.CheckPass, fmt.Sprintf("the image filesystem %s is %.1f%% full (%s, kubelet image GC at %d%%)", mount, pct, budget, kc.gcHigh()), "")
	}
}

func (n Node) gc(add adder, kc *kubeletConfig, kerr error) {
	if kerr != nil {
		add(CheckGCThresholds, prepullv1.CheckWarn, "the kubelet's image GC thresholds are not checked: "+kerr.Error(), kubeletAdvice)
		return
	}
	high := kc.gcHigh()
	if n.DiskBudget > 0 && 100*n.DiskBudget > float64(high) {
		add(CheckGCThresholds, prepullv1.CheckWarn, fmt.Sprintf("the agent's disk budget (%.0f%%) is above the kubelet's image GC high threshold (%d%%): between the two the kubelet removes unpinned images the agent just pulled (pinned images stay)", 100*n.DiskBudget, high),
			fmt.Sprintf("set --disk-budget at or below %.2f, or pin the lists' images (retain: Pinned)", float64(kc.gcLow())/100))
		return
	}
	add(CheckGCThresholds, prepullv1.CheckPass, fmt.Sprintf("the kubelet's image GC runs from %d%% down to %d%%; pinned images are never removed", high, kc.gcLow()), "")
}

// CredentialVerification is the kubelet's image pull credential
// verification policy, as NodeImageSetStatus.CredentialVerification
// names it; "" when the kubelet's configuration is not read.
func (n Node) CredentialVerification() string {
	kc, err := n.kubelet()
	if err != nil {
		return ""
	}
	if on, set := kc.FeatureGates[credentialGate]; set && !on {
		return "Off"
	}
	return cmp.Or(kc.ImagePullCredentialsVerificationPolicy, "NeverVerifyPreloadedImages")
}

func (n Node) credentials(add adder, kc *kubeletConfig, kerr error) {
	if kerr != nil {
		add(CheckCredentials, prepullv1.CheckWarn, "the kubelet's image pull credential verification is not checked: "+kerr.Error(), kubeletAdvice)
		return
	}
	if on, set := kc.FeatureGates[credentialGate]; set && !on {
		add(CheckCredentials, prepullv1.CheckPass, credentialGate+" is off: the kubelet lets any pod use an image present on the node", "")
		return
	}
	gate := ""
	if _, set := kc.FeatureGates[credentialGate]; !set {
		gate = " (when " + credentialGate + " is on, its default from Kubernetes 1.35)"
	}
	policy := kc.ImagePullCredentialsVerificationPolicy
	switch policy {
	case "", "NeverVerifyPreloadedImages":
		n.openPrivate(add, "imagePullCredentialsVerificationPolicy NeverVerifyPreloadedImages"+gate+": images prepull pulled count as preloaded, and pods start on them without credentials")
	case "NeverVerify":
		n.openPrivate(add, "imagePullCredentialsVerificationPolicy NeverVerify: the kubelet lets any pod use an image present on the node")
	case "NeverVerifyAllowlistedImages":
		add(CheckCredentials, prepullv1.CheckWarn, fmt.Sprintf("imagePullCredentialsVerificationPolicy NeverVerifyAllowlistedImages%s: a pod of a private image prepull pulled must present credentials the kubelet verifies with the registry, unless the image is in preloadedImagesVerificationAllowlist (%s); without the registry in reach it does not start", gate, strings.Join(kc.PreloadedImagesVerificationAllowlist, ", ")),
			"add the private images of your lists to preloadedImagesVerificationAllowlist, or use NeverVerifyPreloadedImages")
	case "AlwaysVerify":
		add(CheckCredentials, prepullv1.CheckWarn, "imagePullCredentialsVerificationPolicy AlwaysVerify"+gate+": every pod of a private image must present credentials the kubelet verifies with the registry, so pre-pulled private images need the registry in reach at pod start",
			"use NeverVerifyPreloadedImages where nodes must start pods without a registry")
	default:
		add(CheckCredentials, prepullv1.CheckWarn, fmt.Sprintf("imagePullCredentialsVerificationPolicy %q is not a policy the doctor knows", policy), "")
	}
}

// openPrivate adds the credential check of a policy (what says) under which
// any pod of the node may run any image present: a warning when prepull
// pulled private images there, which every pod may then run without their
// credentials; a pass when it did not, or when that is not known.
func (n Node) openPrivate(add adder, says string) {
	var private []string
	if n.PrivateImages != nil {
		private = n.PrivateImages()
	}
	if len(private) == 0 {
		if n.PrivateImages != nil {
			says += "; prepull pulled no image with pull secrets here"
		} else {
			says += ", private ones included"
		}
		add(CheckCredentials, prepullv1.CheckPass, says, "")
		return
	}
	shown := private[:min(len(private), 5)]
	more := ""
	if len(private) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(private)-len(shown))
	}
	add(CheckCredentials, prepullv1.CheckWarn, fmt.Sprintf("%s: so any pod on this node may run the %d private images prepull pulled here with pull secrets (%s%s), without those credentials", says, len(private), strings.Join(shown, ", "), more),
		"in a shared cluster, keep a namespace's private images on nodes only its pods run on (its PrePullPolicy's nodeSelector, and a node pool that only it schedules to), or set imagePullCredentialsVerificationPolicy: AlwaysVerify (a pod of a private image then needs its credentials, checked with the registry at start)")
}
