package doctor

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pelletier/go-toml/v2"
)

// ImageConfig is what the doctor reads of containerd's CRI image
// configuration, in whichever version of containerd's configuration file it
// was written.
type ImageConfig struct {
	// Path is the file read, and Files every file merged into it (imports).
	Path  string
	Files []string
	// Version is the file's configuration version (1 and 2: containerd 1.x,
	// 3: 2.0, 4: 2.2 onwards).
	Version int
	// Section is the TOML table that holds the CRI image settings.
	Section string

	Snapshotter           string
	DiscardUnpackedLayers bool
	// ConfigPath is registry.config_path: the directory, or directories
	// separated by ':', of hosts.toml files. Empty when unset.
	ConfigPath string
	// Mirrors, Configs and Auths count the deprecated registry tables.
	Mirrors, Configs, Auths int
	// MaxConcurrentDownloads is 0 when unset.
	MaxConcurrentDownloads int
	// UseLocalImagePull is the CRI image plugin's use_local_image_pull.
	UseLocalImagePull bool
	// DisableSnapshotAnnotations is nil when unset.
	DisableSnapshotAnnotations *bool
	ImagePullWithSyncFs        bool
}

// The CRI image sections, by configuration version.
const (
	criSectionV2 = "io.containerd.grpc.v1.cri"
	criSectionV3 = "io.containerd.cri.v1.images"
)

// DefaultConfigPath is containerd's registry.config_path on Linux when the
// configuration sets none.
const DefaultConfigPath = "/etc/containerd/certs.d:/etc/docker/certs.d"

// ReadContainerdConfig reads containerd's configuration file at path, with
// the files its imports name merged in, a later file's keys over an earlier
// one's.
func ReadContainerdConfig(path string) (*ImageConfig, error) {
	root, err := readTOML(path)
	if err != nil {
		return nil, err
	}
	cfg := &ImageConfig{Path: path, Files: []string{path}, Version: 1}
	if v, ok := root["version"].(int64); ok {
		cfg.Version = int(v)
	}
	plugins := table(root, "plugins")
	for _, pattern := range stringsOf(root["imports"]) {
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(filepath.Dir(path), pattern)
		}
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			imp, err := readTOML(m)
			if err != nil {
				return nil, err
			}
			cfg.Files = append(cfg.Files, m)
			for name, t := range table(imp, "plugins") {
				merge(plugins, name, t)
			}
		}
	}
	if cfg.Version >= 3 {
		cfg.Section = criSectionV3
		images := table(plugins, criSectionV3)
		cfg.Snapshotter, _ = images["snapshotter"].(string)
		cfg.DiscardUnpackedLayers, _ = images["discard_unpacked_layers"].(bool)
		cfg.read(images, images)
	} else {
		cfg.Section = criSectionV2
		if cfg.Version < 2 {
			cfg.Section = "cri"
		}
		cri := table(plugins, cfg.Section)
		ctd := table(cri, "containerd")
		cfg.Snapshotter, _ = ctd["snapshotter"].(string)
		cfg.DiscardUnpackedLayers, _ = ctd["discard_unpacked_layers"].(bool)
		cfg.read(cri, ctd)
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	return cfg, nil
}

// read fills the settings that sit in the same place in every version:
// section holds registry and the download settings, snap the snapshot
// annotation switch.
func (c *ImageConfig) read(section, snap map[string]any) {
	reg := table(section, "registry")
	c.ConfigPath, _ = reg["config_path"].(string)
	c.Mirrors, c.Configs, c.Auths = len(table(reg, "mirrors")), len(table(reg, "configs")), len(table(reg, "auths"))
	if n, ok := section["max_concurrent_downloads"].(int64); ok {
		c.MaxConcurrentDownloads = int(n)
	}
	c.UseLocalImagePull, _ = section["use_local_image_pull"].(bool)
	c.ImagePullWithSyncFs, _ = section["image_pull_with_sync_fs"].(bool)
	if b, ok := snap["disable_snapshot_annotations"].(bool); ok {
		c.DisableSnapshotAnnotations = &b
	}
}

func readTOML(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// table is m's table key, empty when m has none.
func table(m map[string]any, key string) map[string]any {
	if t, ok := m[key].(map[string]any); ok {
		return t
	}
	return map[string]any{}
}

func merge(into map[string]any, key string, v any) {
	t, ok := v.(map[string]any)
	old, oldOK := into[key].(map[string]any)
	if !ok || !oldOK {
		into[key] = v
		return
	}
	for k, sub := range t {
		merge(old, k, sub)
	}
}

func stringsOf(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, e := range list {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
