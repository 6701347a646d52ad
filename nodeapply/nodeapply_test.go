package nodeapply_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/nodeapply"
	"prepull.io/prepull/verify"
)

func list(name string, retain prepullv1.RetainPolicy, images ...string) prepullv1.PrePullList {
	l := prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: "boot", Name: name}}
	l.Spec.Retain = retain
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	return l
}

func TestApplyOnContainerd(t *testing.T) {
	ctx := context.Background()
	reg, images, store := onContainerd(t)
	opts := nodeapply.Options{Images: images, Store: store, PullTimeout: time.Minute, ArchiveDir: t.TempDir()}

	byResult := func(results []nodeapply.Result) map[string]nodeapply.Result {
		out := map[string]nodeapply.Result{}
		for _, r := range results {
			out[r.Image] = r
		}
		return out
	}

	t.Run("from an archive: imported, tagged, pinned; again: nothing to do", func(t *testing.T) {
		app := reg.MustPushRandom(t, "boot/app:v1", 64<<10, 2)
		pinned := reg.MustPushRandom(t, "boot/pinned:v1", 64<<10, 1)
		loose := reg.MustPushRandom(t, "boot/loose:v1", 64<<10, 1)
		_, pinnedDigest := cut(pinned.Digest)
		withDigest := pinned.Tag + "@" + pinnedDigest
		archive := filepath.Join(t.TempDir(), "bundle.tar")
		if _, err := bundle.Write(ctx, archive, []string{app.Tag, withDigest, loose.Tag}, bundle.Options{}); err != nil {
			t.Fatalf("bundle: %v", err)
		}
		sum, err := bundle.SumFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		reg.Stop()
		defer reg.Start()
		missing := reg.Repo("boot/missing:v1")
		lists := []prepullv1.PrePullList{
			list("base", "", app.Tag, withDigest, missing),
			list("extra", prepullv1.RetainUnpinned, loose.Tag),
		}
		o := opts
		o.Archive, o.ArchiveSHA256 = archive, sum
		got := byResult(nodeapply.Apply(ctx, lists, o))
		for _, img := range []string{app.Tag, withDigest, loose.Tag} {
			r := got[img]
			if r.Err != nil || r.How != nodeapply.HowImported {
				t.Errorf("%s: %+v, want imported", img, r)
			}
		}
		if r := got[missing]; !errors.Is(r.Err, cri.ErrNotFound) || !strings.Contains(r.Err.Error(), "does not hold") {
			t.Errorf("%s: %+v, want an error saying the archive does not hold it", missing, r)
		}
		if r := got[app.Tag]; !r.Pinned || r.Digest != digestOf(app.Digest) {
			t.Errorf("%s: %+v, want pinned at %s", app.Tag, r, digestOf(app.Digest))
		}
		if r := got[loose.Tag]; r.Pinned {
			t.Errorf("%s of an Unpinned list: %+v, want not pinned", loose.Tag, r)
		}
		for _, ref := range []string{app.Tag, pinned.Tag, pinned.Digest} {
			st, err := images.ImageStatus(ctx, ref)
			if err != nil || !st.Pinned {
				t.Errorf("CRI status of %s: %+v, %v; want present and pinned", ref, st, err)
			}
		}
		if owners, err := store.Owners(ctx, app.Tag); err != nil || len(owners) != 1 || owners[0] != "boot/base" {
			t.Errorf("owners of %s: %v, %v; want [boot/base]", app.Tag, owners, err)
		}
		// What node apply imported is prepull's: an agent's onDelete:
		// Remove may remove it, and its status says it came from an
		// archive.
		for _, ref := range []string{app.Tag, pinned.Digest} {
			if brought, err := store.Brought(ctx, ref); err != nil || !brought {
				t.Errorf("%s imported by node apply: brought %v, %v; want it recorded", ref, brought, err)
			}
			if source, _, err := store.Source(ctx, ref); err != nil || source != string(prepullv1.FetchedFromArchive) {
				t.Errorf("%s imported by node apply: source %q, %v; want Archive recorded", ref, source, err)
			}
		}

		again := byResult(nodeapply.Apply(ctx, lists, o))
		for _, img := range []string{app.Tag, withDigest, loose.Tag} {
			if r := again[img]; r.Err != nil || r.How != nodeapply.HowPresent || r.Digest != got[img].Digest {
				t.Errorf("second apply of %s: %+v, want present at %s and nothing done", img, r, got[img].Digest)
			}
		}
	})

	t.Run("archives as users have them: docker save, gzip and zstd bundles, found by their content", func(t *testing.T) {
		dir := t.TempDir()
		// docker save's format, as go-containerregistry writes it.
		saved := reg.Repo("boot/saved:v1")
		img, err := testground.RandomImage(64<<10, 2, testground.Linux(runtime.GOARCH))
		if err != nil {
			t.Fatal(err)
		}
		tag, err := name.NewTag(saved, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		dockerSave := filepath.Join(dir, "images.docker")
		if err := tarball.WriteToFile(dockerSave, tag, img); err != nil {
			t.Fatal(err)
		}
		forms := map[string]string{dockerSave: saved}
		for _, c := range []string{"gzip", "zstd"} {
			pushed := reg.MustPushRandom(t, "boot/"+c+":v1", 64<<10, 2)
			out := filepath.Join(dir, "bundle-"+c+".bin")
			if _, err := bundle.Write(ctx, out, []string{pushed.Tag}, bundle.Options{Compress: c}); err != nil {
				t.Fatalf("bundle with %s: %v", c, err)
			}
			if _, err := bundle.Verify(out); err != nil {
				t.Errorf("verify the %s bundle: %v", c, err)
			}
			forms[out] = pushed.Tag
		}
		for file, ref := range forms {
			sum, err := bundle.SumFile(file)
			if err != nil {
				t.Fatal(err)
			}
			o := opts
			o.Archive, o.ArchiveSHA256 = file, sum
			r := nodeapply.Apply(ctx, []prepullv1.PrePullList{list("forms", "", ref)}, o)[0]
			if r.Err != nil || r.How != nodeapply.HowImported || !r.Pinned {
				t.Errorf("%s from %s: %+v, want imported and pinned", ref, filepath.Base(file), r)
				continue
			}
			if st, err := images.ImageStatus(ctx, ref); err != nil || !st.Pinned {
				t.Errorf("CRI status of %s from %s: %+v, %v; want present and pinned", ref, filepath.Base(file), st, err)
			}
		}
	})

	t.Run("a wrong sha256 imports and pins nothing", func(t *testing.T) {
		img := reg.MustPushRandom(t, "boot/checked:v1", 64<<10, 1)
		archive := filepath.Join(t.TempDir(), "bundle.tar")
		if _, err := bundle.Write(ctx, archive, []string{img.Tag}, bundle.Options{}); err != nil {
			t.Fatalf("bundle: %v", err)
		}
		o := opts
		o.Archive, o.ArchiveSHA256 = archive, strings.Repeat("a", 64)
		r := nodeapply.Apply(ctx, []prepullv1.PrePullList{list("checked", "", img.Tag)}, o)[0]
		if !errors.Is(r.Err, bundle.ErrChecksum) {
			t.Errorf("apply with a wrong sha256: %+v, want ErrChecksum", r)
		}
		if _, err := images.ImageStatus(ctx, img.Tag); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("%s present after a refused archive: %v", img.Tag, err)
		}
	})

	t.Run("a list's own archive path, relative to the archive directory", func(t *testing.T) {
		img := reg.MustPushRandom(t, "boot/own:v1", 64<<10, 1)
		archive := filepath.Join(opts.ArchiveDir, "own.tar")
		if _, err := bundle.Write(ctx, archive, []string{img.Tag}, bundle.Options{}); err != nil {
			t.Fatalf("bundle: %v", err)
		}
		sum, err := bundle.SumFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		l := list("own", "", img.Tag)
		l.Spec.Source = &prepullv1.ImageSource{Archive: &prepullv1.ArchiveSource{Path: "own.tar", SHA256: sum}}
		if r := nodeapply.Apply(ctx, []prepullv1.PrePullList{l}, opts)[0]; r.Err != nil || r.How != nodeapply.HowImported || !r.Pinned {
			t.Errorf("apply of a list with its own archive: %+v, want imported and pinned", r)
		}
	})

	t.Run("from the registry: pulled and pinned; a missing image fails alone", func(t *testing.T) {
		img := reg.MustPushRandom(t, "boot/pulled:v1", 64<<10, 1)
		missing := reg.Repo("boot/nowhere:v1")
		got := byResult(nodeapply.Apply(ctx, []prepullv1.PrePullList{list("net", "", missing, img.Tag)}, opts))
		if r := got[img.Tag]; r.Err != nil || r.How != nodeapply.HowPulled || !r.Pinned || r.Digest != digestOf(img.Digest) {
			t.Errorf("%s: %+v, want pulled and pinned at %s", img.Tag, got[img.Tag], digestOf(img.Digest))
		}
		if r := got[missing]; !errors.Is(r.Err, cri.ErrNotFound) {
			t.Errorf("%s: %+v, want ErrNotFound", missing, r)
		}
	})
}

// Signatures copied into a bundle by bundle.Write, checked by node apply
// from the bundle alone, the registry stopped.
func TestApplyVerifiesFromTheBundle(t *testing.T) {
	ctx := context.Background()
	reg, images, store := onContainerd(t)
	ours, stranger := testground.NewSigningKey(t, false), testground.NewSigningKey(t, true)
	key := ours.Key(t, "ours.pub")
	signed := reg.MustPushSigned(t, "air/signed:v1", 64<<10, ours, false)
	referred := reg.MustPushSigned(t, "air/referred:v1", 64<<10, ours, true)
	unsigned := reg.MustPushRandom(t, "air/unsigned:v1", 64<<10, 1)
	strange := reg.MustPushSigned(t, "air/strange:v1", 64<<10, stranger, false)
	altered := reg.MustPushSigned(t, "air/altered:v1", 64<<10, ours, false)

	archive := filepath.Join(t.TempDir(), "bundle.tar")
	contents, err := bundle.Write(ctx, archive, []string{signed.Tag, referred.Tag, unsigned.Tag, strange.Tag}, bundle.Options{})
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	for _, img := range contents.Images {
		if want := map[string]int{signed.Tag: 1, referred.Tag: 1, unsigned.Tag: 0, strange.Tag: 1}[img.Ref]; len(img.Signatures) != want {
			t.Errorf("%s: %d signatures in the bundle, want %d", img.Ref, len(img.Signatures), want)
		}
	}
	alteredArchive := filepath.Join(t.TempDir(), "altered.tar")
	alteredContents, err := bundle.Write(ctx, alteredArchive, []string{altered.Tag}, bundle.Options{})
	if err != nil || len(alteredContents.Images) != 1 || len(alteredContents.Images[0].Signatures) != 1 {
		t.Fatalf("bundle: %+v, %v: want one image with its signature", alteredContents, err)
	}
	flipInMember(t, alteredArchive, "blobs/sha256/"+strings.TrimPrefix(alteredContents.Images[0].Signatures[0], "sha256:"))
	reg.Stop()
	defer reg.Start()

	verified := list("verified", "", signed.Tag, referred.Tag, unsigned.Tag, strange.Tag)
	verified.Spec.Verify = &prepullv1.VerifyPolicy{Keys: []prepullv1.PublicKeySource{{Secret: &prepullv1.KeyReference{Name: "keys", Key: "ours.pub"}}}}
	opts := nodeapply.Options{Images: images, Store: store, PullTimeout: time.Minute, Archive: archive}

	t.Run("a list that verifies needs the keys", func(t *testing.T) {
		for _, r := range nodeapply.Apply(ctx, []prepullv1.PrePullList{verified}, opts) {
			if r.Err == nil || !strings.Contains(r.Err.Error(), "--verify-key") {
				t.Errorf("%s: %v, want an error asking for --verify-key", r.Image, r.Err)
			}
		}
	})

	t.Run("only what verifies is imported", func(t *testing.T) {
		o := opts
		o.VerifyKeys = verify.Keys{key}
		got := map[string]nodeapply.Result{}
		for _, r := range nodeapply.Apply(ctx, []prepullv1.PrePullList{verified}, o) {
			got[r.Image] = r
		}
		for _, img := range []testground.Pushed{signed, referred} {
			if r := got[img.Tag]; r.Err != nil || r.How != nodeapply.HowImported || !r.Pinned {
				t.Errorf("%s: %+v, want imported and pinned", img.Tag, r)
			}
		}
		for img, reason := range map[testground.Pushed]string{unsigned: verify.ReasonMissing, strange: verify.ReasonInvalid} {
			var verr *verify.Error
			if r := got[img.Tag]; !errors.As(r.Err, &verr) || verr.Reason != reason || !strings.Contains(r.Err.Error(), key.Fingerprint) {
				t.Errorf("%s: %+v, want %s naming the key", img.Tag, r, reason)
			}
			for _, ref := range []string{img.Tag, img.Digest} {
				if _, err := images.ImageStatus(ctx, ref); !errors.Is(err, cri.ErrNotFound) {
					t.Errorf("%s, which did not verify, is in the runtime: %v", ref, err)
				}
			}
		}
	})

	t.Run("a bundle whose signature was altered imports nothing", func(t *testing.T) {
		o := opts
		o.Archive, o.VerifyKeys = alteredArchive, verify.Keys{key}
		for _, r := range nodeapply.Apply(ctx, []prepullv1.PrePullList{list("altered", "", altered.Tag)}, o) {
			if r.Err == nil || !strings.Contains(r.Err.Error(), "does not match its digest") {
				t.Errorf("%s: %+v, want the bundle refused", r.Image, r)
			}
		}
		for _, ref := range []string{altered.Tag, altered.Digest} {
			if _, err := images.ImageStatus(ctx, ref); !errors.Is(err, cri.ErrNotFound) {
				t.Errorf("%s is in the runtime: %v", ref, err)
			}
		}
	})
}

// flipInMember flips one byte of the member name of the tar at path.
func flipInMember(t *testing.T, path, name string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no member %s (%v)", path, name, err)
		}
		if h.Name != name {
			continue
		}
		// What the reader read so far ends where the member's data starts.
		rest, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		start := bytes.Index(data, rest)
		data[start+len(rest)/2] ^= 0x01
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
}

// onContainerd starts a containerd and a registry it trusts, for the test.
func onContainerd(t *testing.T) (*testground.Registry, *cri.Remote, *containerd.Store) {
	ctd := testground.StartContainerd(t)
	reg := testground.StartRegistry(t)
	ctd.TrustRegistry(reg)
	images, store := ctd.Clients(t)
	return reg, images, store
}

func cut(ref string) (string, string) {
	r, d, _ := strings.Cut(ref, "@")
	return r, d
}

func digestOf(ref string) string {
	_, d := cut(ref)
	return d
}

// TestApplyPullsWithTheNodesPlugins: node apply pulls a private image with
// the credentials the node's kubelet credential provider plugin gives (a
// real plugin executable, a registry with authentication, containerd), and
// without it the pull is refused.
func TestApplyPullsWithTheNodesPlugins(t *testing.T) {
	ctx := context.Background()
	ctd := testground.StartContainerd(t)
	reg := testground.StartRegistry(t, testground.WithBasicAuth("carol", "pl4gin"))
	ctd.TrustRegistry(reg)
	images, store := ctd.Clients(t)
	img := reg.MustPushRandom(t, "plugged/app:v1", 64<<10, 1)

	bin := t.TempDir()
	if err := testground.BuildCredentialPlugin(filepath.Join(bin, "credplugin")); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "providers.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: credplugin
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: [%q]
  defaultCacheDuration: 1m
  env: [{name: CREDPLUGIN_USER, value: carol}, {name: CREDPLUGIN_PASSWORD, value: pl4gin}]
`, reg.Host)), 0o644); err != nil {
		t.Fatal(err)
	}
	plugins, err := credprovider.Load(config, bin)
	if err != nil {
		t.Fatal(err)
	}
	opts := nodeapply.Options{Images: images, Store: store, PullTimeout: time.Minute, ArchiveDir: t.TempDir()}
	lists := []prepullv1.PrePullList{list("plugged", "", img.Tag)}
	if got := nodeapply.Apply(ctx, lists, opts); len(got) != 1 || got[0].Err == nil {
		t.Fatalf("without the plugin: %+v, want the pull refused", got)
	}
	opts.Credentials = plugins
	if got := nodeapply.Apply(ctx, lists, opts); len(got) != 1 || got[0].Err != nil || got[0].How != nodeapply.HowPulled {
		t.Fatalf("with the plugin: %+v, want it pulled", got)
	}
}
