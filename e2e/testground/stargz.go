package testground

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// Stargz is a running stargz snapshotter (bin/containerd-stargz, built by
// hack/build-tool.sh stargz): a lazy-pulling snapshotter that mounts an
// eStargz layer from its registry over FUSE and fetches its files on
// first read.
type Stargz struct {
	// Socket is where it serves containerd's snapshot API; Root holds its
	// snapshots and caches.
	Socket, Root string
}

// StartStargz starts a stargz snapshotter for the test; it stops when the
// test ends, and the FUSE mounts it leaves are unmounted. It needs root
// and /dev/fuse.
func StartStargz(t testing.TB) *Stargz {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("the stargz snapshotter needs FUSE: %v", err)
	}
	bin := Binary(t, "containerd-stargz")
	dir := TempDir(t, "pp-stargz-")
	s := &Stargz{Socket: filepath.Join(dir, "stargz.sock"), Root: filepath.Join(dir, "root")}
	logPath := filepath.Join(dir, "stargz.log")
	p, err := startProcess("containerd-stargz", logPath, bin, "--address", s.Socket, "--root", s.Root)
	if err != nil {
		t.Fatalf("start the stargz snapshotter: %v", err)
	}
	t.Cleanup(func() {
		if err := p.stop(20 * time.Second); err != nil {
			t.Errorf("stop the stargz snapshotter: %v", err)
		}
		unmountUnder(t, dir)
	})
	if err := waitFor(p, logPath, 30*time.Second, func() error {
		_, err := os.Stat(s.Socket)
		return err
	}); err != nil {
		t.Fatalf("start the stargz snapshotter: %v", err)
	}
	return s
}

// Config edits a test-ground containerd configuration (ContainerdConfig)
// so that its CRI plugin unpacks images with s, passing it the snapshot
// annotations that let it mount eStargz layers lazily.
func (s *Stargz) Config(config string) string {
	const overlay = "snapshotter = 'overlayfs'"
	if !strings.Contains(config, overlay) {
		panic("testground: the containerd configuration names no overlayfs snapshotter to replace")
	}
	config = strings.Replace(config, overlay, "snapshotter = 'stargz'\n    disable_snapshot_annotations = false", 1)
	return config + fmt.Sprintf(`
[proxy_plugins]
  [proxy_plugins.stargz]
    type = 'snapshot'
    address = '%s'
    [proxy_plugins.stargz.exports]
      root = '%s/'
      enable_remote_snapshot_annotations = 'true'
`, s.Socket, s.Root)
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(t testing.TB, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("read mounts: %v", err)
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp, err := strconv.Unquote(`"` + strings.ReplaceAll(fields[4], `\040`, " ") + `"`)
		if err != nil {
			mp = fields[4]
		}
		if strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := unix.Unmount(points[i], unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", points[i], err)
		}
	}
}

// EStargzImage builds a linux/amd64 OCI image of one eStargz layer of
// files: a gzip tar whose table of contents lets a lazy snapshotter fetch
// each file on its own, its layer descriptor carrying the annotations that
// say so (the TOC's digest, the uncompressed size).
func EStargzImage(files []File) (v1.Image, error) {
	tarball, err := tarOf(files)
	if err != nil {
		return nil, err
	}
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarball), 0, int64(len(tarball))))
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(blob)
	if cerr := blob.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	size, err := blob.UncompressedSize()
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: static.NewLayer(data, types.OCILayer),
		Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(size, 10),
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cf)
}
