package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"prepull.io/prepull/cri/fake"
)

// tarOf is a tar archive of files, in the order given.
func tarOf(files ...[2]string) []byte {
	var b bytes.Buffer
	w := tar.NewWriter(&b)
	for _, f := range files {
		_ = w.WriteHeader(&tar.Header{Name: f[0], Mode: 0o644, Size: int64(len(f[1]))})
		_, _ = w.Write([]byte(f[1]))
	}
	_ = w.Close()
	return b.Bytes()
}

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// seeds are archives of the shapes nodes meet: a bundle whose blob is
// right, one whose blob was altered, an OCI layout without prepull's
// contents file, a docker save archive, and plain bytes.
func seeds() [][]byte {
	config := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[]}`, sum(config), len(config))
	index := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"127.0.0.1:5000/app:1.0","org.opencontainers.image.ref.name":"1.0"}}]}`, sum(manifest), len(manifest))
	contents := fmt.Sprintf(`{"created":"2026-12-01T00:00:00Z","platforms":["linux/amd64"],"images":[{"ref":"127.0.0.1:5000/app:1.0","digest":"sha256:%s"}]}`, sum(manifest))
	good := tarOf([2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, [2]string{"index.json", index}, [2]string{ContentsFile, contents},
		[2]string{"blobs/sha256/" + sum(manifest), manifest}, [2]string{"blobs/sha256/" + sum(config), config})
	altered := tarOf([2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, [2]string{"index.json", index}, [2]string{ContentsFile, contents},
		[2]string{"blobs/sha256/" + sum(manifest), manifest}, [2]string{"blobs/sha256/" + sum(config), config[:len(config)-1] + " "})
	layout := tarOf([2]string{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, [2]string{"index.json", index},
		[2]string{"blobs/sha256/" + sum(manifest), manifest}, [2]string{"blobs/sha256/" + sum(config), config})
	docker := tarOf([2]string{"manifest.json", `[{"Config":"cfg.json","RepoTags":["127.0.0.1:5000/app:1.0"],"Layers":[]}]`}, [2]string{"cfg.json", config})
	return [][]byte{good, altered, layout, docker, []byte("not an archive")}
}

// FuzzVerify: checking any file as a bundle never panics, and a bundle is
// accepted only with every blob matching its digest.
func FuzzVerify(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "bundle.tar")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Verify(p)
		if err == nil && c == nil {
			t.Fatal("Verify accepted a bundle and returned no contents")
		}
	})
}

// FuzzLoad: importing any file as an archive never panics; it either names
// what was wanted or says why not, and names nothing that was not wanted.
func FuzzLoad(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	wanted := []string{"127.0.0.1:5000/app:1.0"}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "archive.tar")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rt := fake.New(fake.NewRegistry())
		got, err := Load(context.Background(), rt, p, wanted, nil)
		if err != nil {
			return
		}
		for ref := range got {
			if ref != wanted[0] {
				t.Fatalf("Load named %q, which was not wanted", ref)
			}
		}
	})
}

// TestFuzzSeeds checks the fuzz seeds are what they say: the good bundle
// verifies, the altered one does not.
func TestFuzzSeeds(t *testing.T) {
	s := seeds()
	for i, want := range []bool{true, false, false, false, false} {
		p := filepath.Join(t.TempDir(), "bundle.tar")
		if err := os.WriteFile(p, s[i], 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(p); (err == nil) != want {
			t.Errorf("seed %d: Verify: %v, want ok %v", i, err, want)
		}
	}
}
