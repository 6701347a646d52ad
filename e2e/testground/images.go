package testground

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Pushed describes an image pushed to a test registry.
type Pushed struct {
	// Tag is the reference by tag, "host/repo:tag".
	Tag string
	// Digest is the reference by digest, "host/repo@sha256:…"; for an index,
	// the index's digest.
	Digest string
	// ID is the config digest of the image for the test's platform, which
	// containerd reports as the image ID.
	ID string
	// Size is the size in bytes of the platform image's compressed layers.
	Size int64
}

// Linux returns the linux platform of arch.
func Linux(arch string) v1.Platform { return v1.Platform{OS: "linux", Architecture: arch} }

// File is one file of an image layer.
type File struct {
	Path string
	Mode int64
	Data []byte
}

// Image builds an OCI image for platform from layers of files and an
// entrypoint, without a Docker engine.
func Image(platform v1.Platform, entrypoint []string, layers ...[]File) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, files := range layers {
		data, err := tarOf(files)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Config.Entrypoint = entrypoint
	return mutate.ConfigFile(img, cf)
}

// tarOf is a tar of files, regular files each.
func tarOf(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: f.Mode, Size: int64(len(f.Data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RandomImage makes an OCI image for platform with layers layers of size
// random, incompressible bytes each.
func RandomImage(size int64, layers int, platform v1.Platform) (v1.Image, error) {
	files := make([][]File, layers)
	for i := range files {
		files[i] = []File{{Path: "random.bin", Mode: 0o644, Data: RandomBytes(int(size))}}
	}
	return Image(platform, []string{"/bin/true"}, files...)
}

// RandomBytes returns n incompressible bytes.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// Push pushes img to ref, in a registry without credentials, over plain
// HTTP, and returns its digest reference.
func Push(ref string, img v1.Image) (string, error) {
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(tag, img); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return tag.Context().Digest(d.String()).String(), nil
}

// RandomIndex makes a multi-platform OCI index with one random image per
// platform.
func RandomIndex(size int64, layers int, platforms ...v1.Platform) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		img, err := RandomImage(size, layers, p)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return idx, nil
}

func (r *Registry) remoteOptions() []remote.Option {
	if r.Username == "" {
		return nil
	}
	return []remote.Option{remote.WithAuth(&authn.Basic{Username: r.Username, Password: r.Password})}
}

func (r *Registry) tagRef(repoTag string) (name.Tag, error) {
	return name.NewTag(r.Repo(repoTag), name.Insecure)
}

// PushImage pushes img to repoTag ("repo:tag") in the registry. Pushing to a
// tag that exists moves it.
func (r *Registry) PushImage(repoTag string, img v1.Image) (Pushed, error) {
	ref, err := r.tagRef(repoTag)
	if err != nil {
		return Pushed{}, err
	}
	if err := remote.Write(ref, img, r.remoteOptions()...); err != nil {
		return Pushed{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return describe(ref, img)
}

// PushIndex pushes idx to repoTag in the registry. The Pushed's Digest is
// the index's; its ID and Size are those of the image for linux/arch.
func (r *Registry) PushIndex(repoTag string, idx v1.ImageIndex, arch string) (Pushed, error) {
	ref, err := r.tagRef(repoTag)
	if err != nil {
		return Pushed{}, err
	}
	if err := remote.WriteIndex(ref, idx, r.remoteOptions()...); err != nil {
		return Pushed{}, fmt.Errorf("push %s: %w", ref, err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		return Pushed{}, err
	}
	for _, d := range manifest.Manifests {
		if d.Platform == nil || d.Platform.Architecture != arch {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return Pushed{}, err
		}
		p, err := describe(ref, img)
		if err != nil {
			return Pushed{}, err
		}
		dgst, err := idx.Digest()
		if err != nil {
			return Pushed{}, err
		}
		p.Digest = ref.Context().Digest(dgst.String()).String()
		return p, nil
	}
	return Pushed{}, fmt.Errorf("push %s: index has no image for %s", ref, arch)
}

func describe(ref name.Tag, img v1.Image) (Pushed, error) {
	dgst, err := img.Digest()
	if err != nil {
		return Pushed{}, err
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return Pushed{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Pushed{}, err
	}
	var size int64
	for _, l := range layers {
		s, err := l.Size()
		if err != nil {
			return Pushed{}, err
		}
		size += s
	}
	return Pushed{
		Tag:    ref.String(),
		Digest: ref.Context().Digest(dgst.String()).String(),
		ID:     cfg.String(),
		Size:   size,
	}, nil
}

// MustPushRandom pushes a new random image of layers layers of size bytes for
// the test's platform to repoTag, failing the test on error.
func (r *Registry) MustPushRandom(t testing.TB, repoTag string, size int64, layers int) Pushed {
	t.Helper()
	img, err := RandomImage(size, layers, Linux(runtime.GOARCH))
	if err != nil {
		t.Fatalf("make image: %v", err)
	}
	p, err := r.PushImage(repoTag, img)
	if err != nil {
		t.Fatalf("push image: %v", err)
	}
	return p
}

// LayeredImage builds a linux image for the machine's architecture shaped
// like a distribution's: layers layers of files files each, about size
// bytes in all, most files small and a few large, half of them text (words
// of a small vocabulary, which compresses as source and configuration
// do) and half binary (random bytes, as compiled code and compressed data
// are).
func LayeredImage(size int64, layers, files int) (v1.Image, error) {
	words := strings.Fields("the of and to in is that for it as with be on not this are by from or have an they which one you had were her all she there would their we him been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three")
	perLayer := size / int64(layers)
	var all [][]File
	for l := range layers {
		var fs []File
		var left = perLayer
		for f := 0; f < files && left > 0; f++ {
			// One file in files/8 is large: it takes half of what is left.
			n := min(left, max(perLayer/int64(files)/4, 64))
			if f%(max(files/8, 1)) == 0 {
				n = min(left, max(left/2, 64))
			}
			left -= n
			data := RandomBytes(int(n))
			if f%2 == 0 {
				var b strings.Builder
				for int64(b.Len()) < n {
					b.WriteString(words[int(data[b.Len()%len(data)])%len(words)])
					b.WriteByte(' ')
				}
				data = []byte(b.String()[:n])
			}
			fs = append(fs, File{Path: fmt.Sprintf("usr/share/layer%d/dir%02d/file%04d", l, f%37, f), Mode: 0o644, Data: data})
		}
		all = append(all, fs)
	}
	return Image(Linux(runtime.GOARCH), []string{"/bin/true"}, all...)
}
