package nodeimageset_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/e2e/testground"
)

// TestAgentImportsFromArchives proves the archive source on a real
// containerd: the registry the images came from is stopped before any agent
// starts, so whatever becomes present came from the archive.
func TestAgentImportsFromArchives(t *testing.T) {
	e := setup(t)
	reg := testground.StartRegistry(t)
	e.ctd.TrustRegistry(reg)
	app := reg.MustPushRandom(t, "air/app:v1", 64<<10, 2)
	db := reg.MustPushRandom(t, "air/db:v1", 64<<10, 1)
	probe := reg.MustPushRandom(t, "air/probe:v1", 64<<10, 1)
	spare := reg.MustPushRandom(t, "air/spare:v1", 64<<10, 1)
	absent := reg.MustPushRandom(t, "air/absent:v1", 64<<10, 1)
	idx, err := testground.RandomIndex(64<<10, 1, testground.Linux("amd64"), testground.Linux("arm64"))
	if err != nil {
		t.Fatal(err)
	}
	multi, err := reg.PushIndex("air/multi:v1", idx, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	archive := filepath.Join(dir, "site", "bundle.tar")
	if err := os.MkdirAll(filepath.Dir(archive), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := writeBundle(t, archive, bundle.Options{}, app.Tag, db.Digest, probe.Tag, multi.Tag, spare.Tag)
	// The kubelet pulled held:v1 for some namespace's pods; then another
	// image was written under that name into an archive.
	kubeletPulled := reg.MustPushRandom(t, "air/held:v1", 64<<10, 1)
	if _, err := e.images.PullImage(ctx, kubeletPulled.Tag, nil); err != nil {
		t.Fatal(err)
	}
	usurper := reg.MustPushRandom(t, "air/held:v1", 64<<10, 1)
	heldArchive := filepath.Join(dir, "site", "held.tar")
	heldSum := writeBundle(t, heldArchive, bundle.Options{}, usurper.Tag)
	squeezed := reg.MustPushRandom(t, "air/squeezed:v1", 64<<10, 2)
	zstdArchive := filepath.Join(dir, "site", "bundle.zst")
	zstdSum := writeBundle(t, zstdArchive, bundle.Options{Compress: "zstd"}, squeezed.Tag)
	reg.Stop()

	onDisk := &prepullv1.ArchiveSource{Path: "site/bundle.tar", SHA256: sum}
	fromArchive := func(digest string, src *prepullv1.ArchiveSource, owners ...prepullv1.ImageOwner) prepullv1.NodeImage {
		e := entry(digest, owners...)
		e.Archive = src
		return e
	}
	tune := func(r *nodeimageset.Reconciler) { r.ArchiveDir = dir }
	imported := func(st *prepullv1.NodeImageStatus) error {
		if !st.Pinned || st.ImportedFrom != sum {
			return fmt.Errorf("pinned %v, imported from %q", st.Pinned, st.ImportedFrom)
		}
		return nil
	}

	t.Run("an archive does not move a tag the node holds for others", func(t *testing.T) {
		e.agent(t, "air-held", tune)
		src := &prepullv1.ArchiveSource{Path: "site/held.tar", SHA256: heldSum}
		e.setSpec(t, "air-held", fromArchive(usurper.Digest, src, owner("other/list", usurper.Tag)))
		e.phase(t, "air-held", usurper.Digest, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != nodeimageset.ReasonTagConflict || !strings.Contains(st.LastError, "the kubelet or another tool placed it") {
				return fmt.Errorf("reason %s: %s", st.Reason, st.LastError)
			}
			return nil
		})
		if got := e.runtimeID(t, kubeletPulled.Tag); got != kubeletPulled.ID {
			t.Fatalf("tag %s names %q, want the kubelet's %s", kubeletPulled.Tag, got, kubeletPulled.ID)
		}
		// Once the node lets the tag go, the archive's image takes it.
		if err := e.images.RemoveImage(ctx, kubeletPulled.Tag); err != nil {
			t.Fatal(err)
		}
		e.phase(t, "air-held", usurper.Digest, prepullv1.PhasePresent, nil)
		if got := e.runtimeID(t, usurper.Tag); got != usurper.ID {
			t.Errorf("tag %s names %q, want the archive's %s", usurper.Tag, got, usurper.ID)
		}
	})

	t.Run("a zstd-compressed bundle is imported, found by its content", func(t *testing.T) {
		e.agent(t, "air-zstd", tune)
		src := &prepullv1.ArchiveSource{Path: "site/bundle.zst", SHA256: zstdSum}
		e.setSpec(t, "air-zstd", fromArchive(squeezed.Digest, src, owner("air/zstd", squeezed.Tag)))
		e.phase(t, "air-zstd", squeezed.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if !st.Pinned || st.ImportedFrom != zstdSum {
				return fmt.Errorf("pinned %v, imported from %q", st.Pinned, st.ImportedFrom)
			}
			return nil
		})
		if got := e.runtimeID(t, squeezed.Tag); got != squeezed.ID {
			t.Errorf("tag %s names %q, want %s", squeezed.Tag, got, squeezed.ID)
		}
	})

	t.Run("images of a file on the node are imported, tagged and pinned", func(t *testing.T) {
		e.agent(t, "air-file", tune)
		e.setSpec(t, "air-file",
			fromArchive(app.Digest, onDisk, owner("air/list", app.Tag)),
			fromArchive(db.Digest, onDisk, owner("air/list", db.Tag)))
		for _, img := range []testground.Pushed{app, db} {
			st := e.phase(t, "air-file", img.Digest, prepullv1.PhasePresent, imported)
			if _, d, _ := strings.Cut(img.Digest, "@"); st.Digest != d {
				t.Errorf("status digest of %s: %s", img.Digest, st.Digest)
			}
			if got := e.runtimeID(t, img.Tag); got != img.ID {
				t.Errorf("tag %s names %q, want %s", img.Tag, got, img.ID)
			}
			if !e.pinned(t, img.Tag) {
				t.Errorf("%s not pinned", img.Tag)
			}
		}
	})

	t.Run("an archive given by URL is downloaded, checked and imported", func(t *testing.T) {
		srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
		t.Cleanup(srv.Close)
		byURL := &prepullv1.ArchiveSource{URL: srv.URL + "/site/bundle.tar", SHA256: sum}
		e.agent(t, "air-url", func(r *nodeimageset.Reconciler) {
			tune(r)
			// A loopback server over plain http: the operator lists it.
			r.Archives.Hosts = []string{strings.TrimPrefix(srv.URL, "http://")}
		})
		e.setSpec(t, "air-url", fromArchive(multi.Digest, byURL, owner("air/url", multi.Tag)))
		e.phase(t, "air-url", multi.Digest, prepullv1.PhasePresent, imported)
		if got := e.runtimeID(t, multi.Tag); got != multi.ID {
			t.Errorf("tag %s names %q, want %s (the index's image for this platform)", multi.Tag, got, multi.ID)
		}
	})

	t.Run("a tag resolved on the node reports the archive's digest", func(t *testing.T) {
		e.agent(t, "air-probe", tune)
		e.setSpec(t, "air-probe", fromArchive(probe.Tag, onDisk, owner("air/probe")))
		st := e.phase(t, "air-probe", probe.Tag, prepullv1.PhasePresent, imported)
		if _, d, _ := strings.Cut(probe.Digest, "@"); st.Digest != d {
			t.Errorf("digest reported for %s: %q, want %s", probe.Tag, st.Digest, d)
		}
	})

	t.Run("a wrong sha256 fails clearly and imports nothing; other images go on", func(t *testing.T) {
		wrong := &prepullv1.ArchiveSource{Path: "site/bundle.tar", SHA256: strings.Repeat("0", 64)}
		e.agent(t, "air-wrong", tune)
		// The good entry's image is present since the first subtest; its
		// tag is new, so that the agent has work to do for it.
		goodTag := strings.Replace(app.Tag, ":v1", ":wrong-sha-neighbour", 1)
		e.setSpec(t, "air-wrong",
			fromArchive(spare.Digest, wrong, owner("air/wrong", spare.Tag)),
			fromArchive(app.Digest, onDisk, owner("air/right", goodTag)))
		st := e.phase(t, "air-wrong", spare.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonArchiveChecksum || !strings.Contains(st.LastError, sum) || !strings.Contains(st.LastError, "site/bundle.tar") {
			t.Errorf("status %+v: want reason %s and a message naming the archive and its real sha256", st, nodeimageset.ReasonArchiveChecksum)
		}
		if e.runtimeID(t, spare.Digest) != "" {
			t.Errorf("%s is present after an import refused for its checksum", spare.Digest)
		}
		e.phase(t, "air-wrong", app.Digest, prepullv1.PhasePresent, nil)
		if got := e.runtimeID(t, goodTag); got != app.ID {
			t.Errorf("tag %s names %q, want %s", goodTag, got, app.ID)
		}
	})

	t.Run("a corrupt archive with its own sha256 fails as invalid and imports nothing", func(t *testing.T) {
		data, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		broken := filepath.Join(dir, "site", "broken.tar")
		if err := os.WriteFile(broken, data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		brokenSum, err := bundle.SumFile(broken)
		if err != nil {
			t.Fatal(err)
		}
		src := &prepullv1.ArchiveSource{Path: "site/broken.tar", SHA256: brokenSum}
		e.agent(t, "air-broken", tune)
		e.setSpec(t, "air-broken", fromArchive(absent.Digest, src, owner("air/broken", absent.Tag)))
		st := e.phase(t, "air-broken", absent.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonArchiveInvalid || !strings.Contains(st.LastError, "site/broken.tar") {
			t.Errorf("status %+v: want reason %s naming the archive", st, nodeimageset.ReasonArchiveInvalid)
		}
		if e.runtimeID(t, absent.Tag) != "" || e.runtimeID(t, absent.Digest) != "" {
			t.Errorf("%s present after a corrupt archive", absent.Tag)
		}
	})

	t.Run("an image the archive does not hold fails and names the archive", func(t *testing.T) {
		e.agent(t, "air-absent", tune)
		e.setSpec(t, "air-absent", fromArchive(absent.Digest, onDisk, owner("air/absent", absent.Tag)))
		st := e.phase(t, "air-absent", absent.Digest, prepullv1.PhaseFailed, nil)
		if st.Reason != nodeimageset.ReasonNotFound || !strings.Contains(st.LastError, "does not hold") {
			t.Errorf("status %+v: want reason %s saying the archive does not hold the image", st, nodeimageset.ReasonNotFound)
		}
		if e.runtimeID(t, absent.Tag) != "" || e.pinned(t, absent.Digest) {
			t.Errorf("%s left present or pinned", absent.Tag)
		}
	})
}

// An archive list with spec.verify on a real containerd: the agent checks
// the signatures the bundle holds, with the registry stopped, before it
// imports anything; the keys come from the list's status, where the
// controller publishes them.
func TestAgentVerifiesArchivesOnTheNode(t *testing.T) {
	e := setup(t)
	reg := testground.StartRegistry(t)
	e.ctd.TrustRegistry(reg)
	ours := testground.NewSigningKey(t, false)
	key := ours.Key(t, "secret air/keys[cosign.pub]")
	signed := reg.MustPushSigned(t, "vair/signed:v1", 64<<10, ours, false)
	late := reg.MustPushSigned(t, "vair/late:v1", 64<<10, ours, false)
	unsigned := reg.MustPushRandom(t, "vair/unsigned:v1", 64<<10, 1)
	audited := reg.MustPushRandom(t, "vair/audited:v1", 64<<10, 1)
	dir := t.TempDir()
	archive := filepath.Join(dir, "bundle.tar")
	sum := writeBundle(t, archive, bundle.Options{}, signed.Tag, late.Tag, unsigned.Tag, audited.Tag)
	reg.Stop()

	src := &prepullv1.ArchiveSource{Path: "bundle.tar", SHA256: sum}
	fromArchive := func(img testground.Pushed, list string) prepullv1.NodeImage {
		en := entry(img.Digest, owner(list, img.Tag))
		en.Archive = src
		return en
	}
	// A list that verifies; publish, as the controller does, its keys.
	verifying := func(owner string, mode prepullv1.VerifyMode, publish bool) {
		e.setList(t, owner, func(s *prepullv1.PrePullListSpec) {
			s.Source = &prepullv1.ImageSource{Archive: src}
			s.Verify = &prepullv1.VerifyPolicy{Mode: mode, Keys: []prepullv1.PublicKeySource{{Secret: &prepullv1.KeyReference{Name: "keys", Key: "cosign.pub"}}}}
		})
		if publish {
			e.publishKeys(t, owner, key)
		}
	}
	tune := func(r *nodeimageset.Reconciler) { r.ArchiveDir = dir }

	t.Run("Enforce: what verifies is imported, what does not is Failed and not imported", func(t *testing.T) {
		verifying("vair/enforced", prepullv1.VerifyEnforce, true)
		e.agent(t, "vair-enforce", tune)
		e.setSpec(t, "vair-enforce", fromArchive(signed, "vair/enforced"), fromArchive(unsigned, "vair/enforced"))
		e.phase(t, "vair-enforce", signed.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if s := st.Signature; s == nil || !s.Verified || s.Key != key.Fingerprint || s.Digest != digestOf(signed.Digest) {
				return fmt.Errorf("signature %+v", st.Signature)
			}
			return nil
		})
		st := e.phase(t, "vair-enforce", unsigned.Digest, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != prepullv1.ReasonSignatureMissing {
				return fmt.Errorf("reason %q", st.Reason)
			}
			return nil
		})
		if !strings.Contains(st.LastError, key.Fingerprint) || st.Attempts != 1 {
			t.Errorf("unsigned: %q after %d attempts: want the key named, after one attempt", st.LastError, st.Attempts)
		}
		for _, ref := range []string{unsigned.Tag, unsigned.Digest} {
			if id := e.runtimeID(t, ref); id != "" {
				t.Errorf("%s, which did not verify, is in the runtime (%s)", ref, id)
			}
		}
	})

	t.Run("Audit: imported, and status says the signature is missing", func(t *testing.T) {
		verifying("vair/audited", prepullv1.VerifyAudit, true)
		e.agent(t, "vair-audit", tune)
		e.setSpec(t, "vair-audit", fromArchive(audited, "vair/audited"))
		e.phase(t, "vair-audit", audited.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if s := st.Signature; s == nil || s.Verified || s.Reason != prepullv1.ReasonSignatureMissing {
				return fmt.Errorf("signature %+v", st.Signature)
			}
			return nil
		})
	})

	t.Run("keys not published yet: Failed; published: imported", func(t *testing.T) {
		verifying("vair/late", prepullv1.VerifyEnforce, false)
		e.agent(t, "vair-late", tune)
		e.setSpec(t, "vair-late", fromArchive(late, "vair/late"))
		e.phase(t, "vair-late", late.Digest, prepullv1.PhaseFailed, func(st *prepullv1.NodeImageStatus) error {
			if st.Reason != prepullv1.ReasonKeyUnavailable {
				return fmt.Errorf("reason %q", st.Reason)
			}
			return nil
		})
		e.publishKeys(t, "vair/late", key)
		e.phase(t, "vair-late", late.Digest, prepullv1.PhasePresent, func(st *prepullv1.NodeImageStatus) error {
			if s := st.Signature; s == nil || !s.Verified {
				return fmt.Errorf("signature %+v", st.Signature)
			}
			return nil
		})
	})
}

// writeBundle writes a bundle of images to path and returns its SHA-256.
func writeBundle(t *testing.T, path string, opts bundle.Options, images ...string) string {
	t.Helper()
	if _, err := bundle.Write(ctx, path, images, opts); err != nil {
		t.Fatalf("bundle %s: %v", path, err)
	}
	sum, err := bundle.SumFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}
