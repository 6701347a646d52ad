package bundle_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"

	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri/fake"
	"prepull.io/prepull/e2e/testground"
)

// A bundle cannot make its reader take in more than it should: a member
// read whole is bounded, and a compressed bundle that grows past a hundred
// times its size is refused as a decompression bomb, whether it is verified
// (decompressed to a file) or imported as it streams.
func TestBundleBounds(t *testing.T) {
	dir := t.TempDir()

	t.Run("a zstd bomb", func(t *testing.T) {
		// A tar whose one member is 1 GiB of zeros, in a zstd stream of a
		// few hundred KiB.
		bomb := filepath.Join(dir, "bomb.tar.zst")
		f, err := os.Create(bomb)
		if err != nil {
			t.Fatal(err)
		}
		zw, err := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(zw)
		const size = 1 << 30
		if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + strings.Repeat("0", 64), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		zeros := make([]byte, 1<<20)
		for range size / len(zeros) {
			if _, err := tw.Write(zeros); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []interface{ Close() error }{tw, zw, f} {
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
		fi, _ := os.Stat(bomb)
		t.Logf("the bomb: %d bytes, 1 GiB decompressed", fi.Size())
		if _, err := bundle.Verify(bomb); err == nil || !strings.Contains(err.Error(), "decompression bomb") {
			t.Errorf("verified: %v, want it refused as a decompression bomb", err)
		}
		rt := fake.New(fake.NewRegistry())
		if _, err := bundle.Load(context.Background(), rt, bomb, []string{"example.com/a@sha256:" + strings.Repeat("0", 64)}, nil); err == nil || !strings.Contains(err.Error(), "decompression bomb") {
			t.Errorf("imported: %v, want it refused as a decompression bomb", err)
		}
		// Nothing of it is left in the temporary directory.
		left, _ := filepath.Glob(filepath.Join(os.TempDir(), "prepull-bomb.tar.zst.plain-*"))
		if len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	t.Run("a 1 GiB index.json", func(t *testing.T) {
		// A sparse file: the tar's index.json member says 1 GiB.
		p := filepath.Join(dir, "big-index.tar")
		var head bytes.Buffer
		tw := tar.NewWriter(&head)
		contents := []byte("{}")
		if err := tw.WriteHeader(&tar.Header{Name: bundle.ContentsFile, Mode: 0o644, Size: int64(len(contents)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(contents); err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: "index.json", Mode: 0o644, Size: 1 << 30, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		// The header is in head; its 1 GiB of data is a hole, then the end
		// of the archive.
		if err := os.WriteFile(p, head.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, int64(head.Len())+1<<30+1024); err != nil {
			t.Fatal(err)
		}
		_, err := bundle.Verify(p)
		if err == nil || !strings.Contains(err.Error(), "index.json: 1073741824 bytes, more than the") {
			t.Errorf("verified: %v, want index.json refused by its size", err)
		}
	})

	t.Run("a compressed bundle on a read-only directory is verified", func(t *testing.T) {
		// The archive's directory may be a read-only mount: the
		// decompressed copy goes to the temporary directory.
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(ro, "b.tar.zst")
		emptyZstdBundle(t, p)
		// A read-only bind mount of the directory over itself (root).
		if os.Geteuid() != 0 {
			testground.Unavailable(t, "a read-only bind mount needs root; make test runs as root")
		}
		if err := syscall.Mount(ro, ro, "", syscall.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(ro, 0) })
		if err := syscall.Mount("", ro, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("make the mount read-only: %v", err)
		}
		_, err := bundle.Verify(p)
		if err != nil && !strings.Contains(err.Error(), "index.json") {
			t.Errorf("verified: %v, want it read (and then missing index.json)", err)
		}
		if left, _ := filepath.Glob(filepath.Join(ro, ".*plain*")); len(left) > 0 {
			t.Errorf("a copy was made beside the archive: %v", left)
		}
	})

	t.Run("an import is admitted first, and its verified copy bounded", func(t *testing.T) {
		p := filepath.Join(dir, "small.tar.zst")
		emptyZstdBundle(t, p)
		fi, _ := os.Stat(p)
		rt := fake.New(fake.NewRegistry())
		wanted := []string{"example.com/a:1"}
		full := errors.New("no room")
		var asked int64
		policy := bundle.FetchPolicy{Admit: func(n int64) error { asked = n; return full }}
		if _, err := bundle.Import(context.Background(), rt, bundle.Source{Path: p}, policy, "", wanted, nil); !errors.Is(err, full) {
			t.Errorf("import refused by Admit: %v, want its error", err)
		}
		if asked != fi.Size() {
			t.Errorf("Admit asked about %d bytes, want the archive's %d", asked, fi.Size())
		}
		// Verified, it is decompressed to a copy: at most MaxBytes.
		policy = bundle.FetchPolicy{MaxBytes: 100}
		_, err := bundle.Import(context.Background(), rt, bundle.Source{Path: p}, policy, "", wanted, &bundle.Verification{})
		if err == nil || !strings.Contains(err.Error(), "decompresses to more than 100 bytes") {
			t.Errorf("verified import under MaxBytes 100: %v, want the copy refused past 100 bytes", err)
		}
	})
}

// emptyZstdBundle writes at p a zstd-compressed tar holding an empty
// contents file.
func emptyZstdBundle(t *testing.T, p string) {
	t.Helper()
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	if err := tw.WriteHeader(&tar.Header{Name: bundle.ContentsFile, Mode: 0o644, Size: 2, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = tw.Close()
	zw, _ := zstd.NewWriter(nil)
	if err := os.WriteFile(p, zw.EncodeAll(plain.Bytes(), nil), 0o644); err != nil {
		t.Fatal(err)
	}
}
