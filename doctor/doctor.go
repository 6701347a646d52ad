// Package doctor checks a node for what silently defeats pre-pulling: the
// runtime and its version, containerd's CRI image configuration (the
// snapshotter, discarded layers, which pull path reads which hosts.toml,
// concurrent downloads), whether prepull's pins are seen by CRI, the image
// filesystem against the agent's disk budget and the kubelet's garbage
// collection, and the kubelet's credential verification policy. `prepull
// doctor` runs it on a node; the agent runs it and reports the checks in its
// NodeImageSet's status, where `kubectl prepull doctor NODE` reads them.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/version"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
)

// The checks' names.
const (
	CheckRuntime         = "runtime"
	CheckSnapshotter     = "snapshotter"
	CheckDiscardLayers   = "discard-unpacked-layers"
	CheckRegistryHosts   = "registry-hosts"
	CheckDownloads       = "concurrent-downloads"
	CheckPins            = "pins"
	CheckImageFilesystem = "image-filesystem"
	CheckGCThresholds    = "kubelet-image-gc"
	CheckCredentials     = "kubelet-credential-verification"
)

// Node is what the doctor examines on one node.
type Node struct {
	// Images is the runtime's CRI image service.
	Images cri.ImageService
	// Pins lists the references prepull pinned; nil skips the pin check.
	Pins cri.PinLister
	// Runtime is the runtime's name and version as CRI reports them,
	// "containerd v2.4.2".
	Runtime string
	// ContainerdConfig is containerd's configuration file; "" skips the
	// checks that read it.
	ContainerdConfig string
	// KubeletConfig is the kubelet's configuration file; "" skips the
	// checks that read it.
	KubeletConfig string
	// DiskBudget is the agent's disk budget (0 < f ≤ 1), 0 for none.
	DiskBudget float64
	// FsUsage reports a filesystem's used and total bytes; nil means
	// cri.Statfs.
	FsUsage func(path string) (used, total uint64, err error)
	// CredentialProviderConfig and CredentialProviderBinDir are the
	// kubelet's credential provider plugins' configuration and bin dir, as
	// the agent was given them; "" skips their check.
	CredentialProviderConfig, CredentialProviderBinDir string
	// PrivateImages, when set, are the images present on the node that
	// prepull pulled with pull secrets (the agent knows them); the check
	// of the kubelet's credential verification says who may run them.
	PrivateImages func() []string
}

// Run runs every check, in a fixed order.
func (n Node) Run(ctx context.Context) []prepullv1.RuntimeCheck {
	var out []prepullv1.RuntimeCheck
	add := func(name string, r prepullv1.CheckResult, msg, advice string) {
		if r == prepullv1.CheckPass {
			advice = ""
		}
		out = append(out, prepullv1.RuntimeCheck{Name: name, Result: r, Message: msg, Advice: advice})
	}
	name, ver := n.runtime(add)
	n.containerd(add, name, ver)
	n.pins(ctx, add)
	kc, kerr := n.kubelet()
	n.filesystem(ctx, add, kc)
	n.gc(add, kc, kerr)
	n.credentials(add, kc, kerr)
	n.providers(add)
	return out
}

type adder func(name string, r prepullv1.CheckResult, msg, advice string)

func (n Node) runtime(add adder) (string, *version.Version) {
	name, raw, _ := strings.Cut(n.Runtime, " ")
	if name == "" {
		add(CheckRuntime, prepullv1.CheckFail, "the runtime did not say its name over CRI", "check --cri-endpoint names the runtime's CRI socket")
		return "", nil
	}
	v, err := version.ParseGeneric(raw)
	if name != "containerd" {
		add(CheckRuntime, prepullv1.CheckWarn, fmt.Sprintf("%s %s: prepull pulls through CRI, but makes tags, pins and archive imports through containerd's own API", name, raw),
			"on this runtime, use retain: Pinned only where the runtime pins images itself (CRI-O: pinned_images), and no archive sources")
		return name, v
	}
	if err != nil {
		add(CheckRuntime, prepullv1.CheckWarn, fmt.Sprintf("containerd %q: not a version the doctor can compare, so the version-dependent checks assume 2.x", raw), "")
		return name, nil
	}
	if v.LessThan(version.MustParseGeneric("1.7.0")) {
		add(CheckRuntime, prepullv1.CheckFail, fmt.Sprintf("containerd %s: older than 1.7, whose CRI plugin ignores the pin label, so the kubelet's image GC may remove pinned images", raw),
			"upgrade containerd to 1.7 or later")
		return name, v
	}
	add(CheckRuntime, prepullv1.CheckPass, fmt.Sprintf("containerd %s: tags, pins and imports through containerd's API", raw), "")
	return name, v
}

func (n Node) containerd(add adder, name string, v *version.Version) {
	if name != "containerd" {
		return
	}
	if n.ContainerdConfig == "" {
		add(CheckRegistryHosts, prepullv1.CheckWarn, "containerd's configuration was not given, so its image settings are not checked",
			"run with --containerd-config naming containerd's config.toml (the agent: mount it, the chart's agent.containerdConfig)")
		return
	}
	cfg, err := ReadContainerdConfig(n.ContainerdConfig)
	if errors.Is(err, os.ErrNotExist) {
		// containerd runs on its defaults without a file.
		cfg, err = &ImageConfig{Path: n.ContainerdConfig, Version: 3, Section: criSectionV3, Snapshotter: "overlayfs"}, nil
	}
	if err != nil {
		add(CheckRegistryHosts, prepullv1.CheckWarn, "containerd's configuration cannot be read: "+err.Error(), "check --containerd-config")
		return
	}
	where := fmt.Sprintf("[plugins.%q] in %s", cfg.Section, strings.Join(cfg.Files, ", "))

	switch cfg.Snapshotter {
	case "native":
		add(CheckSnapshotter, prepullv1.CheckWarn, "snapshotter native: every layer is copied in full when unpacked, so each pre-pulled image costs its whole size again on disk and in time",
			"use overlayfs (snapshotter = \"overlayfs\" in "+where+")")
	case "stargz", "soci", "nydus", "overlaybd":
		add(CheckSnapshotter, prepullv1.CheckWarn, "snapshotter "+cfg.Snapshotter+" pulls lazily: an image published for it (eStargz, a SOCI index, …) is mounted from its registry and fetched on first read, so prepull reports such an image Lazy, not Present — pods of it need the registry until then; other images it unpacks in full",
			"for nodes that must start pods without a registry, publish their images without a lazy-loading index, or use overlayfs (snapshotter in "+where+")")
	default:
		add(CheckSnapshotter, prepullv1.CheckPass, "snapshotter "+cfg.Snapshotter, "")
	}

	if cfg.DiscardUnpackedLayers {
		add(CheckDiscardLayers, prepullv1.CheckWarn, "discard_unpacked_layers = true: containerd deletes each compressed layer once unpacked, so nothing is left to share: a peer mirror or a node-local registry cannot serve it, and it cannot be exported again; it also forces the local pull path",
			"set discard_unpacked_layers = false in "+where+" unless disk is tighter than registry traffic")
	} else {
		add(CheckDiscardLayers, prepullv1.CheckPass, "compressed layers are kept after unpacking", "")
	}

	transfer, why := pullPath(cfg, v)
	configPath := cfg.ConfigPath
	if configPath == "" && cfg.Mirrors == 0 {
		configPath = DefaultConfigPath
	}
	switch {
	case cfg.Mirrors > 0:
		add(CheckRegistryHosts, prepullv1.CheckWarn, fmt.Sprintf("%d registry mirrors in the deprecated registry.mirrors table: they force the local pull path and are gone in later containerd", cfg.Mirrors),
			"move them to hosts.toml files under one registry.config_path directory")
	case transfer && strings.Contains(configPath, ":"):
		add(CheckRegistryHosts, prepullv1.CheckFail, fmt.Sprintf("pulls go through the transfer service, which takes registry.config_path %q as one directory, not a list: no hosts.toml under it is read, so mirrors and registry settings are silently ignored", configPath),
			"set registry.config_path to one directory (e.g. /etc/containerd/certs.d) in "+where+", or use_local_image_pull = true")
	case transfer:
		add(CheckRegistryHosts, prepullv1.CheckPass, fmt.Sprintf("pulls go through the transfer service and read hosts.toml under %s", configPath), "")
	default:
		add(CheckRegistryHosts, prepullv1.CheckPass, fmt.Sprintf("pulls take the local pull path (%s) and read hosts.toml under %s", why, configPath), "")
	}

	switch {
	case transfer:
		add(CheckDownloads, prepullv1.CheckPass, "pulls go through the transfer service; its own max_concurrent_downloads applies", "")
	case cfg.MaxConcurrentDownloads != 0 && cfg.MaxConcurrentDownloads != 3 && v != nil && v.AtLeast(version.MustParseGeneric("2.1.0")):
		add(CheckDownloads, prepullv1.CheckWarn, fmt.Sprintf("max_concurrent_downloads = %d in the CRI image settings forces the old, local pull path on containerd 2.1 and later", cfg.MaxConcurrentDownloads),
			"remove it from "+where+" and set max_concurrent_downloads under [plugins.\"io.containerd.transfer.v1.local\"]")
	default:
		add(CheckDownloads, prepullv1.CheckPass, fmt.Sprintf("local pull path (%s), %d downloads at once", why, max(cfg.MaxConcurrentDownloads, 3)), "")
	}
}

// pullPath says whether containerd's CRI plugin pulls through the transfer
// service, and otherwise why not: containerd 2.1 made it the default, and
// falls back to the local pull for any setting the transfer service does not
// support.
func pullPath(cfg *ImageConfig, v *version.Version) (transfer bool, why string) {
	switch {
	case v != nil && v.LessThan(version.MustParseGeneric("2.1.0")):
		return false, "containerd before 2.1"
	case cfg.UseLocalImagePull:
		return false, "use_local_image_pull = true"
	case cfg.DiscardUnpackedLayers:
		return false, "forced by discard_unpacked_layers"
	case cfg.Mirrors+cfg.Configs+cfg.Auths > 0:
		return false, "forced by the deprecated registry tables"
	case cfg.MaxConcurrentDownloads != 0 && cfg.MaxConcurrentDownloads != 3:
		return false, "forced by max_concurrent_downloads"
	case cfg.ImagePullWithSyncFs:
		return false, "forced by image_pull_with_sync_fs"
	case cfg.DisableSnapshotAnnotations != nil && !*cfg.DisableSnapshotAnnotations:
		return false, "forced by disable_snapshot_annotations = false"
	}
	return true, ""
}

func (n Node) pins(ctx context.Context, add adder) {
	if n.Pins == nil {
		return
	}
	refs, err := n.Pins.PinnedRefs(ctx)
	if err != nil {
		add(CheckPins, prepullv1.CheckWarn, "cannot list the images prepull pinned: "+err.Error(), "")
		return
	}
	if len(refs) == 0 {
		add(CheckPins, prepullv1.CheckPass, "no image pinned by prepull yet: nothing to compare", "")
		return
	}
	var unpinned []string
	for ref := range refs {
		img, err := n.Images.ImageStatus(ctx, ref)
		if err != nil {
			continue // gone since it was listed
		}
		if !img.Pinned {
			unpinned = append(unpinned, ref)
		}
	}
	sort.Strings(unpinned)
	if len(unpinned) > 0 {
		add(CheckPins, prepullv1.CheckFail, fmt.Sprintf("%d of %d images prepull pinned are not reported pinned by CRI (%s): the kubelet's image GC may remove them", len(unpinned), len(refs), strings.Join(first(unpinned, 3), ", ")),
			"upgrade containerd to 1.7 or later, whose CRI plugin honours the pin label")
		return
	}
	add(CheckPins, prepullv1.CheckPass, fmt.Sprintf("all %d images prepull pinned are reported pinned by CRI", len(refs)), "")
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }
