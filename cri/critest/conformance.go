// Package critest is the one conformance suite of package cri. It runs the
// same cases against the in-memory fake and against a real containerd with a
// real registry, so that what the fake promises is what containerd does.
package critest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"prepull.io/prepull/cri"
)

// Image is an image the suite pushed to a registry.
type Image struct {
	// Tag is "host/repo:tag".
	Tag string
	// Digest is "host/repo@sha256:…".
	Digest string
	// ID is the image ID the runtime reports for it.
	ID string
}

// Env is what one runtime under test offers the suite.
type Env struct {
	// Images and Store are the implementations under test.
	Images cri.ImageService
	Store  cri.Store
	// Push pushes a new random image to repoTag ("repo:tag") in a registry
	// that needs no credentials; pushing to the same repoTag moves the tag.
	Push func(t testing.TB, repoTag string) Image
	// PushPrivate pushes a new random image to repoTag in a registry that
	// requires Auth.
	PushPrivate func(t testing.TB, repoTag string) Image
	// Auth is the credentials the private registry accepts, with
	// ServerAddress set to its host without a scheme.
	Auth cri.Auth
	// Archive returns an OCI image-layout archive holding one new random
	// image for linux/arch named ref, and that image (Digest is the
	// repository of ref at the image's manifest digest).
	Archive func(t testing.TB, ref, arch string) ([]byte, Image)
	// Registry is the host of the registry that Push uses.
	Registry string
	// PinElsewhere pins the image record ref names as something other than
	// prepull would: the pinned label alone, as an operator or another tool
	// sets it.
	PinElsewhere func(t testing.TB, ref string)
}

// Run runs the suite against env.
func Run(t *testing.T, env *Env) {
	ctx := context.Background()

	t.Run("pull by digest leaves the tag absent", func(t *testing.T) {
		img := env.Push(t, "digest-only:v1")
		id, err := env.Images.PullImage(ctx, img.Digest, nil)
		if err != nil {
			t.Fatalf("pull %s: %v", img.Digest, err)
		}
		if id != img.ID {
			t.Errorf("pull returned image %s, want %s", id, img.ID)
		}
		st := eventually(t, func() (*cri.Image, error) { return env.Images.ImageStatus(ctx, img.Digest) })
		if st.ID != img.ID || !slices.Contains(st.RepoDigests, img.Digest) {
			t.Errorf("status of %s = %+v, want ID %s and repo digest %s", img.Digest, st, img.ID, img.Digest)
		}
		if len(st.RepoTags) != 0 {
			t.Errorf("status of %s has repo tags %v, want none", img.Digest, st.RepoTags)
		}
		if _, err := env.Images.ImageStatus(ctx, img.Tag); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("status of tag %s after a pull by digest: error %v, want ErrNotFound", img.Tag, err)
		}
	})

	t.Run("tag points at the digest, and moves", func(t *testing.T) {
		first := env.Push(t, "tagged:v1")
		mustPull(t, env.Images, first.Digest)
		if created, err := env.Store.Tag(ctx, first.Tag, first.Digest); err != nil || !created {
			t.Fatalf("tag %s as %s: new record %t, %v; want a new record", first.Tag, first.Digest, created, err)
		}
		st := eventuallyID(t, env.Images, first.Tag, first.ID)
		if !slices.Contains(st.RepoTags, first.Tag) {
			t.Errorf("status of %s has repo tags %v, want it among them", first.Tag, st.RepoTags)
		}

		second := env.Push(t, "tagged:v1")
		if second.ID == first.ID {
			t.Fatal("the test pushed the same image twice")
		}
		mustPull(t, env.Images, second.Digest)
		if created, err := env.Store.Tag(ctx, second.Tag, second.Digest); err != nil || created {
			t.Fatalf("move %s to %s: new record %t, %v; want the record moved", second.Tag, second.Digest, created, err)
		}
		eventuallyID(t, env.Images, second.Tag, second.ID)
		old := eventually(t, func() (*cri.Image, error) { return env.Images.ImageStatus(ctx, first.Digest) })
		if slices.Contains(old.RepoTags, first.Tag) {
			t.Errorf("the old image still carries tag %s after it moved: %v", first.Tag, old.RepoTags)
		}
	})

	t.Run("a tag made for owners carries their pins", func(t *testing.T) {
		img := env.Push(t, "tagged-pinned:v1")
		mustPull(t, env.Images, img.Digest)
		if _, err := env.Store.Tag(ctx, img.Tag, img.Digest, "ns/a", "ns/b"); err != nil {
			t.Fatalf("tag %s as %s for owners: %v", img.Tag, img.Digest, err)
		}
		if owners, err := env.Store.Owners(ctx, img.Tag); err != nil || !slices.Equal(owners, []string{"ns/a", "ns/b"}) {
			t.Errorf("owners of tag %s: %v, %v; want [ns/a ns/b]", img.Tag, owners, err)
		}
		if owners, err := env.Store.Owners(ctx, img.Digest); err != nil || len(owners) != 0 {
			t.Errorf("owners of %s: %v, %v; want none: only the tag was pinned", img.Digest, owners, err)
		}
		eventually(t, func() (*cri.Image, error) {
			st, err := env.Images.ImageStatus(ctx, img.Tag)
			if err == nil && !st.Pinned {
				return nil, fmt.Errorf("tag %s is not pinned through CRI yet", img.Tag)
			}
			return st, err
		})
	})

	t.Run("pull progress counts the image's own blobs", func(t *testing.T) {
		img := env.Push(t, "progress:v1")
		other := env.Push(t, "progress-other:v1")
		if done, total, err := env.Store.PullProgress(ctx, img.Digest); err != nil || done != 0 || total != 0 {
			t.Errorf("progress of %s before its pull: %d of %d, %v; want nothing known", img.Digest, done, total, err)
		}
		mustPull(t, env.Images, other.Digest)
		if done, total, err := env.Store.PullProgress(ctx, img.Digest); err != nil || done != 0 || total != 0 {
			t.Errorf("progress of %s after another image's pull: %d of %d, %v; want nothing of it", img.Digest, done, total, err)
		}
		mustPull(t, env.Images, img.Digest)
		done, total, err := env.Store.PullProgress(ctx, img.Digest)
		if err != nil || total == 0 || done != total {
			t.Errorf("progress of %s after its pull: %d of %d, %v; want all of it", img.Digest, done, total, err)
		}
		if _, _, err := env.Store.PullProgress(ctx, img.Tag); err == nil {
			t.Errorf("progress of the tag %s: no error, want one: only digest references are known before the pull", img.Tag)
		}
	})

	t.Run("tag of an absent digest is not found", func(t *testing.T) {
		img := env.Push(t, "never-pulled:v1")
		if _, err := env.Store.Tag(ctx, img.Tag, img.Digest); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("tag %s as absent %s: error %v, want ErrNotFound", img.Tag, img.Digest, err)
		}
	})

	t.Run("pin and unpin with owners", func(t *testing.T) {
		img := env.Push(t, "pinned:v1")
		mustPull(t, env.Images, img.Digest)
		if st := mustStatus(t, env.Images, img.Digest); st.Pinned {
			t.Fatalf("a freshly pulled image is pinned: %+v", st)
		}
		for _, owner := range []string{"ns/a", "ns/b", "ns/a"} {
			if err := env.Store.Pin(ctx, img.Digest, owner); err != nil {
				t.Fatalf("pin %s for %s: %v", img.Digest, owner, err)
			}
		}
		eventuallyPinned(t, env.Images, img.Digest, true)
		owners, err := env.Store.Owners(ctx, img.Digest)
		if err != nil || !slices.Equal(owners, []string{"ns/a", "ns/b"}) {
			t.Errorf("owners = %v, %v; want [ns/a ns/b]", owners, err)
		}
		if err := env.Store.Unpin(ctx, img.Digest, "ns/a"); err != nil {
			t.Fatalf("unpin ns/a: %v", err)
		}
		// ns/b still owns it: the image must stay pinned.
		time.Sleep(200 * time.Millisecond)
		if st := mustStatus(t, env.Images, img.Digest); !st.Pinned {
			t.Errorf("unpinned while ns/b still owns it")
		}
		if err := env.Store.Unpin(ctx, img.Digest, "ns/b"); err != nil {
			t.Fatalf("unpin ns/b: %v", err)
		}
		eventuallyPinned(t, env.Images, img.Digest, false)
		if owners, err := env.Store.Owners(ctx, img.Digest); err != nil || len(owners) != 0 {
			t.Errorf("owners after the last unpin = %v, %v; want none", owners, err)
		}
		if err := env.Store.Unpin(ctx, img.Digest, "ns/b"); err != nil {
			t.Errorf("unpin again: %v, want success", err)
		}
		if err := env.Store.Unpin(ctx, env.Registry+"/absent/image@sha256:"+strings.Repeat("0", 64), "ns/a"); err != nil {
			t.Errorf("unpin an absent image: %v, want success", err)
		}
		if err := env.Store.Pin(ctx, env.Registry+"/absent/image:v1", "ns/a"); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("pin an absent image: error %v, want ErrNotFound", err)
		}
	})

	t.Run("set pins: exactly the owners asked, or them and the others, in one call", func(t *testing.T) {
		img := env.Push(t, "setpins:v1")
		mustPull(t, env.Images, img.Digest)
		set := func(owners []string, keepOthers bool, want []string, wantChanged bool) {
			t.Helper()
			got, changed, err := env.Store.SetPins(ctx, img.Digest, owners, keepOthers)
			if err != nil || !slices.Equal(got, want) || changed != wantChanged {
				t.Errorf("SetPins(%v, keepOthers %t) = %v, changed %t, %v; want %v, changed %t", owners, keepOthers, got, changed, err, want, wantChanged)
			}
			if stored, err := env.Store.Owners(ctx, img.Digest); err != nil || !slices.Equal(stored, want) {
				t.Errorf("owners after SetPins(%v, keepOthers %t) = %v, %v; want %v", owners, keepOthers, stored, err, want)
			}
		}
		set([]string{"ns/b", "ns/a"}, false, []string{"ns/a", "ns/b"}, true)
		eventuallyPinned(t, env.Images, img.Digest, true)
		set([]string{"ns/a", "ns/b"}, false, []string{"ns/a", "ns/b"}, false)
		set([]string{"ns/c"}, true, []string{"ns/a", "ns/b", "ns/c"}, true)
		set([]string{"ns/c"}, false, []string{"ns/c"}, true)
		set(nil, false, nil, true)
		eventuallyPinned(t, env.Images, img.Digest, false)
		if _, _, err := env.Store.SetPins(ctx, env.Registry+"/absent/image:v1", []string{"ns/a"}, false); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("set pins on an absent image: error %v, want ErrNotFound", err)
		}
	})

	t.Run("a pin set by someone else stays", func(t *testing.T) {
		img := env.Push(t, "pinned-elsewhere:v1")
		mustPull(t, env.Images, img.Digest)
		env.PinElsewhere(t, img.Digest)
		eventuallyPinned(t, env.Images, img.Digest, true)
		if err := env.Store.Pin(ctx, img.Digest, "ns/a"); err != nil {
			t.Fatalf("pin for ns/a: %v", err)
		}
		if err := env.Store.Unpin(ctx, img.Digest, "ns/a"); err != nil {
			t.Fatalf("unpin ns/a: %v", err)
		}
		// The last owner went, but prepull did not set this pin.
		time.Sleep(200 * time.Millisecond)
		if st := mustStatus(t, env.Images, img.Digest); !st.Pinned {
			t.Errorf("a pin set by someone else was taken off with prepull's last owner")
		}
		if owners, err := env.Store.Owners(ctx, img.Digest); err != nil || len(owners) != 0 {
			t.Errorf("owners = %v, %v; want none", owners, err)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		img := env.PushPrivate(t, "private:v1")
		if _, err := env.Images.PullImage(ctx, img.Digest, nil); !errors.Is(err, cri.ErrUnauthorized) {
			t.Errorf("pull without credentials: error %v, want ErrUnauthorized", err)
		}
		wrong := env.Auth
		wrong.Password = "not-" + wrong.Password
		_, err := env.Images.PullImage(ctx, img.Digest, &wrong)
		if !errors.Is(err, cri.ErrUnauthorized) {
			t.Errorf("pull with a wrong password: error %v, want ErrUnauthorized", err)
		}
		if err != nil && strings.Contains(err.Error(), wrong.Password) {
			t.Errorf("the error reveals the password: %v", err)
		}
		if _, err := env.Images.ImageStatus(ctx, img.Digest); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("a refused pull left the image present: %v", err)
		}
		good := env.Auth
		if _, err := env.Images.PullImage(ctx, img.Digest, &good); err != nil {
			t.Fatalf("pull with the right credentials (server address %q): %v", good.ServerAddress, err)
		}
		eventuallyID(t, env.Images, img.Digest, img.ID)
	})

	t.Run("missing image is not found", func(t *testing.T) {
		ref := env.Registry + "/does-not/exist:v1"
		if _, err := env.Images.PullImage(ctx, ref, nil); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("pull %s: error %v, want ErrNotFound", ref, err)
		} else if !strings.Contains(err.Error(), "does-not/exist") {
			t.Errorf("pull error %q does not name the image", err)
		}
		if _, err := env.Images.ImageStatus(ctx, ref); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("status %s: error %v, want ErrNotFound", ref, err)
		}
	})

	t.Run("provenance: brought and source are recorded on the image's record, and only there", func(t *testing.T) {
		p, ok := env.Store.(cri.Provenance)
		if !ok {
			t.Fatalf("the store %T records no provenance", env.Store)
		}
		img := env.Push(t, "brought:v1")
		mustPull(t, env.Images, img.Digest)
		eventuallyID(t, env.Images, img.Digest, img.ID)
		if b, err := p.Brought(ctx, img.Digest); err != nil || b {
			t.Errorf("brought before it was marked: %v, %v", b, err)
		}
		if err := p.MarkBrought(ctx, img.Digest); err != nil {
			t.Fatalf("mark %s: %v", img.Digest, err)
		}
		if err := p.MarkBrought(ctx, img.Digest); err != nil {
			t.Errorf("mark %s again: %v", img.Digest, err)
		}
		if b, err := p.Brought(ctx, img.Digest); err != nil || !b {
			t.Errorf("brought after it was marked: %v, %v", b, err)
		}
		// Pins come and go beside it.
		if _, _, err := env.Store.SetPins(ctx, img.Digest, []string{"ns/a"}, false); err != nil {
			t.Fatal(err)
		}
		if _, _, err := env.Store.SetPins(ctx, img.Digest, nil, false); err != nil {
			t.Fatal(err)
		}
		if b, err := p.Brought(ctx, img.Digest); err != nil || !b {
			t.Errorf("brought after its pins went: %v, %v", b, err)
		}
		// Its source: none until recorded, then the last recorded.
		if s, from, err := p.Source(ctx, img.Digest); err != nil || s != "" || from != "" {
			t.Errorf("source before one was recorded: %q from %q, %v", s, from, err)
		}
		if err := p.MarkSource(ctx, img.Digest, "Peer", "node-2"); err != nil {
			t.Fatal(err)
		}
		if err := p.MarkSource(ctx, img.Digest, "Registry", ""); err != nil {
			t.Fatal(err)
		}
		if s, from, err := p.Source(ctx, img.Digest); err != nil || s != "Registry" || from != "" {
			t.Errorf("source recorded: %q from %q, %v; want Registry from nowhere", s, from, err)
		}
		if b, err := p.Brought(ctx, img.Digest); err != nil || !b {
			t.Errorf("brought after its source was recorded: %v, %v", b, err)
		}
		absent := env.Push(t, "never-pulled:v1")
		if _, err := p.Brought(ctx, absent.Digest); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("provenance of an absent image: %v, want ErrNotFound", err)
		}
		if _, _, err := p.Source(ctx, absent.Digest); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("source of an absent image: %v, want ErrNotFound", err)
		}
	})

	t.Run("remove is idempotent", func(t *testing.T) {
		img := env.Push(t, "removed:v1")
		mustPull(t, env.Images, img.Tag)
		eventuallyID(t, env.Images, img.Tag, img.ID)
		if err := env.Images.RemoveImage(ctx, img.Tag); err != nil {
			t.Fatalf("remove %s: %v", img.Tag, err)
		}
		for _, ref := range []string{img.Tag, img.Digest} {
			if _, err := env.Images.ImageStatus(ctx, ref); !errors.Is(err, cri.ErrNotFound) {
				t.Errorf("status of %s after removal: error %v, want ErrNotFound", ref, err)
			}
		}
		if err := env.Images.RemoveImage(ctx, img.Tag); err != nil {
			t.Errorf("remove %s again: %v, want success", img.Tag, err)
		}
	})

	t.Run("list and filesystem usage count pulled images", func(t *testing.T) {
		img := env.Push(t, "listed:v1")
		before := usedBytes(t, env.Images)
		mustPull(t, env.Images, img.Tag)
		list, err := env.Images.ListImages(ctx)
		if err != nil {
			t.Fatalf("list images: %v", err)
		}
		if !slices.ContainsFunc(list, func(i cri.Image) bool { return i.ID == img.ID }) {
			t.Errorf("list of %d images lacks %s", len(list), img.ID)
		}
		// containerd measures its image filesystem periodically, not per call.
		var after uint64
		for deadline := time.Now().Add(settle); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if after = usedBytes(t, env.Images); after > before {
				return
			}
		}
		t.Errorf("image filesystem usage %d after a pull, %d before: want it larger", after, before)
	})

	t.Run("import names exactly the wanted references", func(t *testing.T) {
		ref := env.Registry + "/imported/app:v1"
		data, img := env.Archive(t, ref, runtime.GOARCH)
		got, err := env.Store.Import(ctx, bytes.NewReader(data), func(name, digest string) []string {
			if name != ref || digest != digestOf(img.Digest) {
				t.Errorf("import offered %s at %s, want %s at %s", name, digest, ref, digestOf(img.Digest))
			}
			return []string{img.Digest, ref}
		})
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		if len(got) != 1 || got[0].Err != nil || !slices.Equal(got[0].Refs, []string{img.Digest, ref}) {
			t.Fatalf("import = %+v, want one image named %s and %s", got, img.Digest, ref)
		}
		eventuallyID(t, env.Images, ref, img.ID)
		eventuallyID(t, env.Images, img.Digest, img.ID)
	})

	t.Run("import of an image no one wants names nothing", func(t *testing.T) {
		ref := env.Registry + "/imported/unwanted:v1"
		data, img := env.Archive(t, ref, runtime.GOARCH)
		got, err := env.Store.Import(ctx, bytes.NewReader(data), func(string, string) []string { return nil })
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		if len(got) != 1 || got[0].Name != ref || len(got[0].Refs) != 0 {
			t.Errorf("import = %+v, want %s listed and not named", got, ref)
		}
		for _, r := range []string{ref, img.Digest} {
			if _, err := env.Images.ImageStatus(ctx, r); !errors.Is(err, cri.ErrNotFound) {
				t.Errorf("status of %s: error %v, want ErrNotFound", r, err)
			}
		}
	})

	t.Run("import moves a tag and keeps its pins", func(t *testing.T) {
		ref := env.Registry + "/imported/moved:v1"
		first, firstImg := env.Archive(t, ref, runtime.GOARCH)
		name := func(string, string) []string { return []string{ref} }
		if _, err := env.Store.Import(ctx, bytes.NewReader(first), name); err != nil {
			t.Fatalf("import: %v", err)
		}
		eventuallyID(t, env.Images, ref, firstImg.ID)
		if err := env.Store.Pin(ctx, ref, "ns/moved"); err != nil {
			t.Fatalf("pin: %v", err)
		}
		second, secondImg := env.Archive(t, ref, runtime.GOARCH)
		if _, err := env.Store.Import(ctx, bytes.NewReader(second), name); err != nil {
			t.Fatalf("import again: %v", err)
		}
		eventuallyID(t, env.Images, ref, secondImg.ID)
		owners, err := env.Store.Owners(ctx, ref)
		if err != nil || !slices.Equal(owners, []string{"ns/moved"}) {
			t.Errorf("owners of %s after a second import = %v, %v; want [ns/moved]", ref, owners, err)
		}
	})

	t.Run("an image for another platform is refused and named nowhere", func(t *testing.T) {
		ref := env.Registry + "/imported/foreign:v1"
		data, img := env.Archive(t, ref, foreignArch())
		got, err := env.Store.Import(ctx, bytes.NewReader(data), func(string, string) []string { return []string{ref, img.Digest} })
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		if len(got) != 1 || !errors.Is(got[0].Err, cri.ErrNotFound) || len(got[0].Refs) != 0 {
			t.Fatalf("import of a %s-only image = %+v, want an ErrNotFound and no reference", foreignArch(), got)
		}
		if !strings.Contains(got[0].Err.Error(), runtime.GOARCH) {
			t.Errorf("error %q does not name the platform wanted", got[0].Err)
		}
		for _, r := range []string{ref, img.Digest} {
			if _, err := env.Images.ImageStatus(ctx, r); !errors.Is(err, cri.ErrNotFound) {
				t.Errorf("status of %s: error %v, want ErrNotFound", r, err)
			}
		}
	})

	t.Run("corrupt archive fails and imports nothing", func(t *testing.T) {
		ref := env.Registry + "/imported/corrupt:v1"
		data, _ := env.Archive(t, ref, runtime.GOARCH)
		all := func(string, string) []string { return []string{ref} }
		if _, err := env.Store.Import(ctx, bytes.NewReader(data[:len(data)/2]), all); err == nil {
			t.Fatal("import of a truncated archive succeeded")
		}
		if _, err := env.Images.ImageStatus(ctx, ref); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("status of %s after a failed import: error %v, want ErrNotFound", ref, err)
		}
	})
}

// digestOf is the digest of a digest reference.
func digestOf(digestRef string) string {
	_, d, _ := strings.Cut(digestRef, "@")
	return d
}

// foreignArch is an architecture other than the one the tests run on.
func foreignArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

func mustPull(t *testing.T, images cri.ImageService, ref string) {
	t.Helper()
	if _, err := images.PullImage(context.Background(), ref, nil); err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
}

func mustStatus(t *testing.T, images cri.ImageService, ref string) *cri.Image {
	t.Helper()
	st, err := images.ImageStatus(context.Background(), ref)
	if err != nil {
		t.Fatalf("status of %s: %v", ref, err)
	}
	return st
}

func usedBytes(t *testing.T, images cri.ImageService) uint64 {
	t.Helper()
	fs, err := images.ImageFsInfo(context.Background())
	if err != nil || len(fs) == 0 {
		t.Fatalf("image filesystem info: %v, %d filesystems", err, len(fs))
	}
	var used uint64
	for _, f := range fs {
		used += f.UsedBytes
	}
	return used
}

// settle is how long the runtime may take to show a change through CRI:
// containerd's CRI plugin updates its image cache from events, after the call
// that made the change has returned.
const settle = 10 * time.Second

// eventually polls get until it succeeds or settle passes.
func eventually(t *testing.T, get func() (*cri.Image, error)) *cri.Image {
	t.Helper()
	var last error
	for deadline := time.Now().Add(settle); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err := get()
		if err == nil {
			return st
		}
		last = err
	}
	t.Fatalf("image not present after %s: %v", settle, last)
	return nil
}

func eventuallyID(t *testing.T, images cri.ImageService, ref, id string) *cri.Image {
	t.Helper()
	return eventuallyMatch(t, images, ref, fmt.Sprintf("ID %s", id), func(st *cri.Image) bool { return st.ID == id })
}

func eventuallyPinned(t *testing.T, images cri.ImageService, ref string, pinned bool) {
	t.Helper()
	eventuallyMatch(t, images, ref, fmt.Sprintf("pinned=%t", pinned), func(st *cri.Image) bool { return st.Pinned == pinned })
}

func eventuallyMatch(t *testing.T, images cri.ImageService, ref, want string, ok func(*cri.Image) bool) *cri.Image {
	t.Helper()
	var st *cri.Image
	var err error
	for deadline := time.Now().Add(settle); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err = images.ImageStatus(context.Background(), ref)
		if err == nil && ok(st) {
			return st
		}
	}
	t.Fatalf("status of %s after %s: %+v, %v; want %s", ref, settle, st, err, want)
	return nil
}
