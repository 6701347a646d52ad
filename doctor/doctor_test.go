package doctor_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/doctor"
	"prepull.io/prepull/e2e/testground"
)

// mirrored is a registry name nothing listens on, which reaches the test's
// registry only through the hosts.toml that names it a mirror: a pull of it
// works exactly when containerd reads that file.
const mirrored = "localhost:5999"

// node starts a real containerd with the test ground's configuration as
// edit changes it, with a hosts.toml under its certs.d that makes the
// registry reg a mirror of mirrored.
func node(t *testing.T, reg *testground.Registry, edit func(string) string) (*testground.Containerd, doctor.Node) {
	t.Helper()
	ctd := testground.StartContainerdWith(t, edit)
	dir := filepath.Join(ctd.Dir, "certs.d", mirrored)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = 'http://%s'\n\n[host.'http://%s']\n  capabilities = ['pull', 'resolve']\n", mirrored, reg.Host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	images, store := ctd.Clients(t)
	runtime, err := images.RuntimeName(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ctd, doctor.Node{Images: images, Pins: store, Runtime: runtime, ContainerdConfig: ctd.ConfigPath()}
}

func result(t *testing.T, checks []prepullv1.RuntimeCheck, name string) prepullv1.RuntimeCheck {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %s in %+v", name, checks)
	return prepullv1.RuntimeCheck{}
}

func expect(t *testing.T, checks []prepullv1.RuntimeCheck, name string, want prepullv1.CheckResult, says ...string) {
	t.Helper()
	c := result(t, checks, name)
	if c.Result != want {
		t.Errorf("%s: %s (%s), want %s", name, c.Result, c.Message, want)
	}
	for _, s := range says {
		if !strings.Contains(c.Message+" "+c.Advice, s) {
			t.Errorf("%s does not say %q: %s / %s", name, s, c.Message, c.Advice)
		}
	}
	if want != prepullv1.CheckPass && c.Advice == "" {
		t.Errorf("%s is %s with no advice", name, want)
	}
}

// pullMirrored pulls an image by the mirrored name through CRI.
func pullMirrored(t *testing.T, n doctor.Node, repoTag string) error {
	t.Helper()
	_, err := n.Images.PullImage(context.Background(), mirrored+"/"+repoTag, nil)
	return err
}

func replace(old, new string) func(string) string {
	return func(s string) string {
		if !strings.Contains(s, old) {
			panic("the test ground's containerd configuration has no " + old)
		}
		return strings.Replace(s, old, new, 1)
	}
}

// TestContainerdConfigurations runs the doctor on real containerds started
// with configurations that pass and that fail each of its containerd checks,
// and shows the registry-hosts verdict is what containerd does: the pull of
// an image only its mirror serves works when the doctor passes it, and fails
// when the doctor fails it.
func TestContainerdConfigurations(t *testing.T) {
	reg := testground.StartRegistry(t)
	reg.MustPushRandom(t, "doctor/app:v1", 1<<20, 1)
	ctx := context.Background()

	t.Run("the test ground's configuration passes", func(t *testing.T) {
		_, n := node(t, reg, nil)
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckRuntime, prepullv1.CheckPass, "containerd v2.")
		expect(t, checks, doctor.CheckSnapshotter, prepullv1.CheckPass, "overlayfs")
		expect(t, checks, doctor.CheckDiscardLayers, prepullv1.CheckPass)
		expect(t, checks, doctor.CheckRegistryHosts, prepullv1.CheckPass, "transfer service")
		expect(t, checks, doctor.CheckDownloads, prepullv1.CheckPass)
		if err := pullMirrored(t, n, "doctor/app:v1"); err != nil {
			t.Errorf("pull through the mirror with the configuration the doctor passed: %v", err)
		}
	})

	t.Run("a list of config_path directories fails on the transfer service", func(t *testing.T) {
		var edit func(string) string
		edit = func(s string) string {
			dir := s[strings.Index(s, "config_path = '")+len("config_path = '"):]
			dir = dir[:strings.Index(dir, "'")]
			return replace("config_path = '"+dir+"'", "config_path = '"+dir+":/etc/docker/certs.d'")(s)
		}
		_, n := node(t, reg, edit)
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckRegistryHosts, prepullv1.CheckFail, "one directory", "use_local_image_pull")
		if err := pullMirrored(t, n, "doctor/app:v1"); err == nil {
			t.Error("the pull through the mirror worked with the configuration the doctor failed")
		}
	})

	t.Run("the same list on the local pull path passes", func(t *testing.T) {
		edit := func(s string) string {
			dir := s[strings.Index(s, "config_path = '")+len("config_path = '"):]
			dir = dir[:strings.Index(dir, "'")]
			s = replace("config_path = '"+dir+"'", "config_path = '"+dir+":/etc/docker/certs.d'")(s)
			return replace("    snapshotter = 'overlayfs'\n", "    snapshotter = 'overlayfs'\n    use_local_image_pull = true\n")(s)
		}
		_, n := node(t, reg, edit)
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckRegistryHosts, prepullv1.CheckPass, "local pull path", "use_local_image_pull = true")
		if err := pullMirrored(t, n, "doctor/app:v1"); err != nil {
			t.Errorf("pull through the mirror with the configuration the doctor passed: %v", err)
		}
	})

	t.Run("discarded layers warn", func(t *testing.T) {
		_, n := node(t, reg, replace("    snapshotter = 'overlayfs'\n", "    snapshotter = 'overlayfs'\n    discard_unpacked_layers = true\n"))
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckDiscardLayers, prepullv1.CheckWarn, "discard_unpacked_layers = true", "nothing is left to share")
		expect(t, checks, doctor.CheckRegistryHosts, prepullv1.CheckPass, "forced by discard_unpacked_layers")
	})

	t.Run("CRI max_concurrent_downloads warns", func(t *testing.T) {
		_, n := node(t, reg, replace("    snapshotter = 'overlayfs'\n", "    snapshotter = 'overlayfs'\n    max_concurrent_downloads = 8\n"))
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckDownloads, prepullv1.CheckWarn, "max_concurrent_downloads = 8", "io.containerd.transfer.v1.local")
	})

	t.Run("the native snapshotter warns", func(t *testing.T) {
		_, n := node(t, reg, replace("    snapshotter = 'overlayfs'\n", "    snapshotter = 'native'\n"))
		checks := n.Run(ctx)
		expect(t, checks, doctor.CheckSnapshotter, prepullv1.CheckWarn, "native", "overlayfs")
	})

	t.Run("imports are merged", func(t *testing.T) {
		var conf string
		ctd, _ := node(t, reg, func(s string) string { conf = s; return s })
		extra := filepath.Join(ctd.Dir, "conf.d", "discard.toml")
		if err := os.MkdirAll(filepath.Dir(extra), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(extra, []byte("version = 4\n[plugins.'io.containerd.cri.v1.images']\n  discard_unpacked_layers = true\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		main := filepath.Join(ctd.Dir, "with-imports.toml")
		conf = strings.Replace(conf, "imports = []", fmt.Sprintf("imports = ['%s/conf.d/*.toml']", ctd.Dir), 1)
		if err := os.WriteFile(main, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := doctor.ReadContainerdConfig(main)
		if err != nil {
			t.Fatal(err)
		}
		if !cfg.DiscardUnpackedLayers || cfg.Snapshotter != "overlayfs" || len(cfg.Files) != 2 {
			t.Errorf("imported setting not merged: %+v", cfg)
		}
	})

	t.Run("a missing configuration file is containerd's defaults", func(t *testing.T) {
		_, n := node(t, reg, nil)
		n.ContainerdConfig = filepath.Join(t.TempDir(), "config.toml")
		checks := n.Run(ctx)
		// The default config_path is a list, which the transfer service
		// reads as one directory.
		expect(t, checks, doctor.CheckRegistryHosts, prepullv1.CheckFail, doctor.DefaultConfigPath)
	})
}

// unpinnedLister claims refs are pinned by prepull, as a pin label that a
// runtime ignores would leave them.
type unpinnedLister []string

func (u unpinnedLister) PinnedRefs(context.Context) (map[string][]string, error) {
	m := map[string][]string{}
	for _, r := range u {
		m[r] = []string{"shop/web"}
	}
	return m, nil
}

func TestPins(t *testing.T) {
	reg := testground.StartRegistry(t)
	img := reg.MustPushRandom(t, "doctor/pinned:v1", 1<<20, 1)
	ctx := context.Background()
	ctd, n := node(t, reg, nil)
	ctd.TrustRegistry(reg)
	expect(t, n.Run(ctx), doctor.CheckPins, prepullv1.CheckPass, "no image pinned by prepull yet")

	if _, err := n.Images.PullImage(ctx, img.Digest, nil); err != nil {
		t.Fatal(err)
	}
	_, store := ctd.Clients(t)
	if err := store.Pin(ctx, img.Digest, "shop/web"); err != nil {
		t.Fatal(err)
	}
	if _, err := cri.StatusSoon(ctx, n.Images, img.Digest); err != nil {
		t.Fatal(err)
	}
	// CRI shows the pin a moment after containerd's API made it.
	testground.Eventually(t, 10*time.Second, "the pin reported by CRI", func() error {
		c := result(t, n.Run(ctx), doctor.CheckPins)
		if c.Result != prepullv1.CheckPass || !strings.Contains(c.Message, "all 1 images") {
			return fmt.Errorf("%s: %s", c.Result, c.Message)
		}
		return nil
	})

	other := reg.MustPushRandom(t, "doctor/unpinned:v1", 1<<20, 1)
	if _, err := n.Images.PullImage(ctx, other.Digest, nil); err != nil {
		t.Fatal(err)
	}
	n.Pins = unpinnedLister{img.Digest, other.Digest}
	expect(t, n.Run(ctx), doctor.CheckPins, prepullv1.CheckFail, "1 of 2", other.Digest)
}

func writeKubelet(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKubeletAndDisk(t *testing.T) {
	reg := testground.StartRegistry(t)
	ctx := context.Background()
	_, n := node(t, reg, nil)

	checks := n.Run(ctx)
	expect(t, checks, doctor.CheckCredentials, prepullv1.CheckWarn, "not given", "--kubelet-config")
	expect(t, checks, doctor.CheckGCThresholds, prepullv1.CheckWarn, "not given")

	for _, c := range []struct {
		name, body string
		want       prepullv1.CheckResult
		says       string
	}{
		{"the default policy", "", prepullv1.CheckPass, "NeverVerifyPreloadedImages"},
		{"AlwaysVerify", "imagePullCredentialsVerificationPolicy: AlwaysVerify\n", prepullv1.CheckWarn, "AlwaysVerify"},
		{"an allowlist", "imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\npreloadedImagesVerificationAllowlist: [\"127.0.0.1:5000/base/*\"]\n", prepullv1.CheckWarn, "127.0.0.1:5000/base/*"},
		{"the gate off", "imagePullCredentialsVerificationPolicy: AlwaysVerify\nfeatureGates: {KubeletEnsureSecretPulledImages: false}\n", prepullv1.CheckPass, "is off"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := n
			n.KubeletConfig = writeKubelet(t, c.body)
			expect(t, n.Run(ctx), doctor.CheckCredentials, c.want, c.says)
		})
	}

	t.Run("private images under a policy that lets any pod run them", func(t *testing.T) {
		n := n
		n.KubeletConfig = writeKubelet(t, "")
		n.PrivateImages = func() []string { return nil }
		expect(t, n.Run(ctx), doctor.CheckCredentials, prepullv1.CheckPass, "no image with pull secrets")
		n.PrivateImages = func() []string { return []string{"r.example.com/team/a:1", "r.example.com/team/b:1"} }
		expect(t, n.Run(ctx), doctor.CheckCredentials, prepullv1.CheckWarn, "any pod on this node may run the 2 private images", "r.example.com/team/a:1")
		n.KubeletConfig = writeKubelet(t, "imagePullCredentialsVerificationPolicy: AlwaysVerify\n")
		expect(t, n.Run(ctx), doctor.CheckCredentials, prepullv1.CheckWarn, "must present credentials")
	})

	t.Run("disk budget above the kubelet's GC threshold", func(t *testing.T) {
		n := n
		n.KubeletConfig, n.DiskBudget = writeKubelet(t, "imageGCHighThresholdPercent: 70\n"), 0.9
		expect(t, n.Run(ctx), doctor.CheckGCThresholds, prepullv1.CheckWarn, "90%", "70%")
		n.DiskBudget = 0.6
		expect(t, n.Run(ctx), doctor.CheckGCThresholds, prepullv1.CheckPass)
	})

	t.Run("the real image filesystem past a tiny budget", func(t *testing.T) {
		n := n
		n.DiskBudget = 1e-9
		expect(t, n.Run(ctx), doctor.CheckImageFilesystem, prepullv1.CheckFail, "past the agent's disk budget")
		n.DiskBudget = 1
		if c := result(t, n.Run(ctx), doctor.CheckImageFilesystem); c.Result == prepullv1.CheckFail {
			t.Errorf("image filesystem fails with a budget of 100%%: %s", c.Message)
		}
	})
}
