package bundle_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"prepull.io/prepull/bundle"
	"prepull.io/prepull/e2e/testground"
)

// counting counts the blob downloads that pass through it.
type counting struct{ blobs atomic.Int64 }

func (c *counting) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		c.blobs.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

type recorder struct {
	bytes.Buffer
	total, reused int64
}

func (r *recorder) Planned(_ int, total, reused int64) { r.total, r.reused = total, reused }
func (r *recorder) Fetched(int64)                      {}
func (r *recorder) ImageDone(ref string, err error) {
	if err != nil {
		r.WriteString("failed " + ref + ": " + err.Error() + "\n")
	}
}

func TestWriteVerifyAndReuse(t *testing.T) {
	reg := testground.StartRegistry(t)
	idx, err := testground.RandomIndex(128<<10, 2, testground.Linux("amd64"), testground.Linux("arm64"), testground.Linux("s390x"))
	if err != nil {
		t.Fatal(err)
	}
	multi, err := reg.PushIndex("multi:v1", idx, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	single := reg.MustPushRandom(t, "single:v1", 128<<10, 2)
	pinned := reg.MustPushRandom(t, "pinned:v1", 128<<10, 1)
	byDigest := reg.MustPushRandom(t, "bydigest:v1", 128<<10, 1)
	_, pinnedDigest, _ := strings.Cut(pinned.Digest, "@")

	out := filepath.Join(t.TempDir(), "bundle.tar")
	images := []string{multi.Tag, single.Tag, pinned.Tag + "@" + pinnedDigest, byDigest.Digest}
	tr := &counting{}
	rec := &recorder{}
	contents, err := bundle.Write(context.Background(), out, images, bundle.Options{Transport: tr, Progress: rec})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	_, multiDigest, _ := strings.Cut(multi.Digest, "@")
	want := map[string]string{multi.Tag: multiDigest, single.Tag: digestOf(single.Digest), pinned.Tag: pinnedDigest, byDigest.Digest: digestOf(byDigest.Digest)}
	if len(contents.Images) != len(want) {
		t.Fatalf("bundle holds %+v, want %d images", contents.Images, len(want))
	}
	for ref, d := range want {
		img, ok := contents.Find(ref)
		if !ok || img.Digest != d {
			t.Errorf("bundle entry for %s = %+v (found %v), want digest %s", ref, img, ok, d)
		}
	}
	m, _ := contents.Find(multi.Tag)
	if strings.Join(m.Platforms, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("multi-platform image carried for %v, want linux/amd64 and linux/arm64 only", m.Platforms)
	}
	if rec.reused != 0 || rec.total == 0 {
		t.Errorf("first write planned %d bytes with %d at hand, want all to fetch", rec.total, rec.reused)
	}
	fetched := tr.blobs.Load()

	verified, err := bundle.Verify(out)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(verified.Images) != len(want) {
		t.Errorf("verify read %d images, want %d", len(verified.Images), len(want))
	}
	s390x, amd64 := manifestDigest(t, idx, "s390x"), manifestDigest(t, idx, "amd64")
	if hasMember(t, out, "blobs/sha256/"+s390x.Hex) || !hasMember(t, out, "blobs/sha256/"+amd64.Hex) {
		t.Errorf("bundle holds the linux/s390x manifest %s, which no one asked for, or lacks the linux/amd64 one %s", s390x, amd64)
	}

	// Same inputs again: every blob comes from the bundle already written.
	rec2 := &recorder{}
	if _, err := bundle.Write(context.Background(), out, images, bundle.Options{Transport: tr, Progress: rec2}); err != nil {
		t.Fatalf("write again: %v", err)
	}
	if rec2.reused != rec2.total {
		t.Errorf("second write had %d of %d bytes at hand, want all", rec2.reused, rec2.total)
	}
	if again := tr.blobs.Load() - fetched; again != 0 {
		t.Errorf("second write downloaded %d blobs, want none", again)
	}
	if _, err := bundle.Verify(out); err != nil {
		t.Fatalf("verify after rewrite: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("the output directory holds %d entries after a complete write, want only the bundle", len(entries))
	}
}

func TestWriteLeavesOutWhatFailsAndKeepsTheRest(t *testing.T) {
	reg := testground.StartRegistry(t)
	good := reg.MustPushRandom(t, "good:v1", 64<<10, 1)
	idx, err := testground.RandomIndex(64<<10, 1, testground.Linux("amd64"), testground.Linux("arm64"))
	if err != nil {
		t.Fatal(err)
	}
	multi, err := reg.PushIndex("twoarch:v1", idx, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	missing := reg.Repo("missing:v1")
	out := filepath.Join(t.TempDir(), "bundle.tar")
	contents, err := bundle.Write(context.Background(), out, []string{good.Tag, missing, multi.Tag}, bundle.Options{})
	var ie *bundle.ImageError
	if !errors.As(err, &ie) || ie.Image != missing {
		t.Fatalf("write with a missing image: error %v, want an ImageError naming %s", err, missing)
	}
	if len(contents.Images) != 2 {
		t.Errorf("bundle holds %+v, want the two good images", contents.Images)
	}
	if _, err := bundle.Verify(out); err != nil {
		t.Errorf("the bundle without the failed image fails verification: %v", err)
	}

	// One reference listed twice at two digests is refused, not guessed.
	other := reg.MustPushRandom(t, "good:v2", 64<<10, 1)
	_, err = bundle.Write(context.Background(), filepath.Join(t.TempDir(), "twice.tar"), []string{good.Tag, good.Tag + "@" + digestOf(other.Digest)}, bundle.Options{})
	if err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("write of one tag at two digests: %v, want an error saying it is listed twice", err)
	}

	// Platforms named are required of every image.
	strict := bundle.Options{Platforms: []v1.Platform{testground.Linux("amd64"), {OS: "linux", Architecture: "ppc64le"}}, Strict: true}
	_, err = bundle.Write(context.Background(), filepath.Join(t.TempDir(), "strict.tar"), []string{multi.Tag}, strict)
	if err == nil || !strings.Contains(err.Error(), multi.Tag) || !strings.Contains(err.Error(), "no image for linux/ppc64le") {
		t.Errorf("write of a linux/amd64+arm64 index asking for ppc64le: %v, want an error naming the image and linux/ppc64le", err)
	}
}

func TestVerifyFindsACorruptBlob(t *testing.T) {
	reg := testground.StartRegistry(t)
	img := reg.MustPushRandom(t, "corrupt:v1", 64<<10, 1)
	out := filepath.Join(t.TempDir(), "bundle.tar")
	if _, err := bundle.Write(context.Background(), out, []string{img.Tag}, bundle.Options{}); err != nil {
		t.Fatalf("write: %v", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The layer is random bytes: flip one in the middle of the archive.
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Verify(out); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("verify of a corrupt bundle: %v, want a digest mismatch", err)
	}
	// A rewrite that would reuse the corrupt blob fails verification and
	// leaves the file it found as it was.
	if _, err := bundle.Write(context.Background(), out, []string{img.Tag}, bundle.Options{}); err == nil || !strings.Contains(err.Error(), "fails verification") {
		t.Errorf("write reusing a corrupt blob: %v, want a verification failure", err)
	}
	if again, err := os.ReadFile(out); err != nil || !bytes.Equal(again, data) {
		t.Errorf("the bundle found was replaced or lost (%v)", err)
	}
}

func TestPlainProgressPrintsALinePerImage(t *testing.T) {
	var buf bytes.Buffer
	p := bundle.NewProgress(&buf, false)
	p.Planned(2, 3<<20, 1<<20)
	p.Fetched(2 << 20)
	p.ImageDone("a:v1", nil)
	p.ImageDone("b:v1", errors.New("boom"))
	want := "bundling 2 images: 3.0 MiB, 1.0 MiB of it already at hand\nfetched  a:v1 (1/2)\nfailed   b:v1: boom\n"
	if buf.String() != want {
		t.Errorf("plain progress printed\n%q\nwant\n%q", buf.String(), want)
	}
}

func digestOf(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}

func manifestDigest(t *testing.T, idx v1.ImageIndex, arch string) v1.Hash {
	t.Helper()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.Architecture == arch {
			return d.Digest
		}
	}
	t.Fatalf("index has no %s manifest", arch)
	return v1.Hash{}
}

func hasMember(t *testing.T, archive, name string) bool {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			return true
		}
	}
}

func TestCompressedBundleIsVerifiedAndReused(t *testing.T) {
	reg := testground.StartRegistry(t)
	img := reg.MustPushRandom(t, "squeezed:v1", 256<<10, 2)
	for _, c := range []string{"gzip", "zstd"} {
		t.Run(c, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "bundle")
			tr := &counting{}
			if _, err := bundle.Write(context.Background(), out, []string{img.Tag}, bundle.Options{Transport: tr, Compress: c}); err != nil {
				t.Fatalf("write: %v", err)
			}
			head := make([]byte, 4)
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadFull(f, head)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			magic := map[string][]byte{"gzip": {0x1f, 0x8b}, "zstd": {0x28, 0xb5, 0x2f, 0xfd}}[c]
			if !bytes.HasPrefix(head, magic) {
				t.Errorf("the bundle starts with % x, want %s's magic % x", head, c, magic)
			}
			contents, err := bundle.Verify(out)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if got, ok := contents.Find(img.Tag); !ok || got.Digest != digestOf(img.Digest) {
				t.Errorf("verified contents %+v, want %s at %s", contents.Images, img.Tag, digestOf(img.Digest))
			}
			fetched := tr.blobs.Load()
			if _, err := bundle.Write(context.Background(), out, []string{img.Tag}, bundle.Options{Transport: tr, Compress: c}); err != nil {
				t.Fatalf("write again: %v", err)
			}
			if again := tr.blobs.Load() - fetched; again != 0 {
				t.Errorf("the second write downloaded %d blobs, want none: the compressed bundle holds them", again)
			}
			if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
				t.Errorf("the output directory holds %d entries, want only the bundle (no decompressed copy left)", len(entries))
			}
		})
	}
}
