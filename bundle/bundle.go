// Package bundle writes and reads prepull bundles: OCI image-layout tar
// archives that carry the images of PrePullLists to nodes no registry
// reaches.
//
// A bundle holds, for each image, the blobs of the platforms asked for (an
// index keeps its own digest, with only those platforms' manifests inside),
// an index.json entry per reference with the name an import recreates, and
// prepull-bundle.json, a readable list of what it holds.
package bundle

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/verify"
)

// Names of a bundle's members.
const (
	ContentsFile = "prepull-bundle.json"
	indexFile    = "index.json"
	layoutFile   = "oci-layout"
	blobDir      = "blobs/sha256/"
)

// DefaultPlatforms are the platforms a bundle carries when none are named.
var DefaultPlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// Contents is the readable index of a bundle.
type Contents struct {
	// Created is when the bundle was written.
	Created time.Time `json:"created"`
	// Platforms are the platforms asked for.
	Platforms []string `json:"platforms"`
	// Images are the images it holds, by reference.
	Images []Image `json:"images"`
}

// Image is one image of a bundle.
type Image struct {
	// Ref is the reference an import recreates: "repo:tag", or
	// "repo@sha256:…" for an image given by digest alone.
	Ref string `json:"ref"`
	// Digest is the digest of its manifest or index, as the registry serves
	// it.
	Digest string `json:"digest"`
	// MediaType is the media type of that manifest or index.
	MediaType string `json:"mediaType"`
	// Platforms are the platforms the bundle holds it for; empty for a
	// manifest whose config names none.
	Platforms []string `json:"platforms,omitempty"`
	// Size is the bytes of its blobs.
	Size int64 `json:"size"`
	// Signatures are the digests of the signature manifests (cosign's
	// format) the bundle holds for it, copied from its registry.
	Signatures []string `json:"signatures,omitempty"`
	// blobs are its blobs, root last, and repo where they are fetched from.
	blobs []v1.Descriptor
	repo  name.Repository
}

// Find returns the image of c that ref names, after normalization.
func (c *Contents) Find(ref string) (Image, bool) {
	for _, i := range c.Images {
		if i.Ref == ref {
			return i, true
		}
	}
	return Image{}, false
}

// member is one regular file of a tar archive, where it starts.
type member struct {
	offset, size int64
}

// archive is an opened bundle, with the position of each member.
type archive struct {
	f       *os.File
	members map[string]member
	// plain is the decompressed copy of a compressed bundle, removed on
	// Close.
	plain string
}

// openArchive indexes the members of the tar at path. A bundle compressed
// with gzip or zstd (found by its content, not its name) is decompressed
// into the temporary directory first (the archive's own directory may be a
// read-only mount), at most maxPlain bytes (0: no bound but the ratio):
// members are read at their offsets.
func openArchive(p string, maxPlain int64) (*archive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	a := &archive{f: f, members: map[string]member{}}
	if plain, err := decompressed(f, p, maxPlain); err != nil {
		f.Close()
		return nil, err
	} else if plain != nil {
		f.Close()
		a.f, a.plain = plain, plain.Name()
	}
	tr := tar.NewReader(a.f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a, nil
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("%s: not a readable tar archive: %w", p, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		off, err := a.f.Seek(0, io.SeekCurrent)
		if err != nil {
			a.Close()
			return nil, err
		}
		a.members[path.Clean(h.Name)] = member{offset: off, size: h.Size}
	}
}

// Bounds of what a bundle may make the reader take in: a JSON member is
// read whole, so it is bounded; a compressed bundle is decompressed to a
// file, at most maxRatio times its size (its layers are compressed
// already: a bundle that grows more is a decompression bomb).
const (
	maxJSONMember = 8 << 20
	maxRatio      = 100
)

// decompressionLimit is the most a compressed archive f may decompress
// to: maxRatio times its size, and at most max when max > 0.
func decompressionLimit(f *os.File, max int64) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	limit := maxRatio*fi.Size() + 1<<20
	if max > 0 {
		limit = min(limit, max)
	}
	return limit, nil
}

// errBomb says that an archive decompresses past limit.
func errBomb(limit int64) error {
	return fmt.Errorf("it decompresses to more than %d bytes, the most taken of it (the bound: %d times its size, and --archive-max-bytes for the agent's copy): refused as a possible decompression bomb", limit, maxRatio)
}

// decompressed returns, for a compressed f, a decompressed copy of it, made
// in the temporary directory; nil for an uncompressed f, which it rewinds.
func decompressed(f *os.File, path string, maxPlain int64) (*os.File, error) {
	head := make([]byte, 16)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if compression.DetectCompression(head[:n]) == compression.Uncompressed {
		return nil, nil
	}
	ds, err := compression.DecompressStream(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer ds.Close()
	limit, err := decompressionLimit(f, maxPlain)
	if err != nil {
		return nil, err
	}
	plain, err := os.CreateTemp("", "prepull-"+filepath.Base(path)+".plain-*")
	if err != nil {
		return nil, fmt.Errorf("%s: decompress: %w", path, err)
	}
	body := &capped{r: ds, left: limit}
	if _, err = io.Copy(plain, body); body.over {
		err = errBomb(limit)
	}
	if err != nil {
		plain.Close()
		os.Remove(plain.Name())
		return nil, fmt.Errorf("%s: decompress: %w", path, err)
	}
	if _, err := plain.Seek(0, io.SeekStart); err != nil {
		plain.Close()
		os.Remove(plain.Name())
		return nil, err
	}
	return plain, nil
}

func (a *archive) Close() error {
	err := a.f.Close()
	if a.plain != "" {
		os.Remove(a.plain)
	}
	return err
}

// open returns a reader of the member name.
func (a *archive) open(name string) (*io.SectionReader, bool) {
	m, ok := a.members[name]
	if !ok {
		return nil, false
	}
	return io.NewSectionReader(a.f, m.offset, m.size), true
}

func (a *archive) readJSON(name string, v any) error {
	r, ok := a.open(name)
	if !ok {
		return fmt.Errorf("no %s in the archive", name)
	}
	if r.Size() > maxJSONMember {
		return fmt.Errorf("%s: %d bytes, more than the %d a bundle's JSON member may be", name, r.Size(), maxJSONMember)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// blob returns a reader of the blob d, checked against d's size; the digest
// is the reader's to check.
func (a *archive) blob(d digest.Digest, size int64) (*io.SectionReader, bool) {
	r, ok := a.open(blobDir + d.Encoded())
	if !ok || r.Size() != size {
		return nil, false
	}
	return r, true
}

// Verify checks the bundle at path: every blob matches its digest, and
// every image of its contents has every blob its manifests name for the
// platforms it holds. It returns the contents.
func Verify(p string) (*Contents, error) {
	a, err := openArchive(p, 0)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	return a.verify(p)
}

// verify is Verify of the opened archive a, found at p.
func (a *archive) verify(p string) (*Contents, error) {
	c := &Contents{}
	if err := a.readJSON(ContentsFile, c); err != nil {
		return nil, fmt.Errorf("%s is not a prepull bundle: %w", p, err)
	}
	var index v1.IndexManifest
	if err := a.readJSON(indexFile, &index); err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, d := range index.Manifests {
		names[d.Annotations[cri.ImageNameAnnotation]] = true
	}
	for name, m := range a.members {
		enc, ok := strings.CutPrefix(name, blobDir)
		if !ok {
			continue
		}
		r := io.NewSectionReader(a.f, m.offset, m.size)
		if err := check(r, digest.NewDigestFromEncoded(digest.SHA256, enc), m.size); err != nil {
			return nil, fmt.Errorf("%s: blob %s: %w", p, enc, err)
		}
	}
	for _, img := range c.Images {
		if !names[img.Ref] {
			return nil, fmt.Errorf("%s: %s is listed in %s but not in %s", p, img.Ref, ContentsFile, indexFile)
		}
		d, err := digest.Parse(img.Digest)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", p, img.Ref, err)
		}
		if err := a.checkTree(d, types.MediaType(img.MediaType), img.Platforms); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", p, img.Ref, err)
		}
		for _, sig := range img.Signatures {
			sd, err := digest.Parse(sig)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: signature: %w", p, img.Ref, err)
			}
			if err := a.checkTree(sd, types.OCIManifestSchema1, nil); err != nil {
				return nil, fmt.Errorf("%s: %s: signature: %w", p, img.Ref, err)
			}
		}
	}
	return c, nil
}

// checkTree checks that the manifest or index d and, for the platforms
// held, every blob below it are in the archive.
func (a *archive) checkTree(d digest.Digest, mt types.MediaType, held []string) error {
	if _, ok := a.members[blobDir+d.Encoded()]; !ok {
		return fmt.Errorf("blob %s is missing", d)
	}
	if mt.IsIndex() {
		var idx v1.IndexManifest
		if err := a.readJSON(blobDir+d.Encoded(), &idx); err != nil {
			return err
		}
		for _, m := range idx.Manifests {
			if m.Platform == nil || !slices.Contains(held, m.Platform.String()) {
				continue
			}
			if err := a.checkTree(digest.Digest(m.Digest.String()), m.MediaType, held); err != nil {
				return err
			}
		}
		return nil
	}
	var m v1.Manifest
	if err := a.readJSON(blobDir+d.Encoded(), &m); err != nil {
		return err
	}
	for _, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if _, ok := a.members[blobDir+l.Digest.Hex]; !ok {
			return fmt.Errorf("blob %s is missing", l.Digest)
		}
	}
	return nil
}

// check reads r to the end and fails unless it has size bytes with digest d.
func check(r io.Reader, d digest.Digest, size int64) error {
	v := d.Verifier()
	n, err := io.Copy(v, r)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%d bytes, want %d", n, size)
	}
	if !v.Verified() {
		return errors.New("content does not match its digest")
	}
	return nil
}

// signatures reads the signatures the archive holds for img.
func (a *archive) signatures(img Image) ([]verify.Signature, error) {
	var out []verify.Signature
	for _, sig := range img.Signatures {
		d, err := digest.Parse(sig)
		if err != nil {
			return nil, err
		}
		m, ok := a.open(blobDir + d.Encoded())
		if !ok {
			return nil, fmt.Errorf("signature %s is missing", sig)
		}
		if m.Size() > maxJSONMember {
			return nil, fmt.Errorf("signature %s: %d bytes, more than the %d a bundle's JSON member may be", sig, m.Size(), maxJSONMember)
		}
		raw, err := io.ReadAll(m)
		if err != nil {
			return nil, err
		}
		got, err := verify.Payloads(raw, "bundle signature "+sig, func(d digest.Digest, size int64) (io.ReadCloser, error) {
			r, ok := a.blob(d, size)
			if !ok {
				return nil, errors.New("missing from the bundle")
			}
			return io.NopCloser(r), nil
		})
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	return out, nil
}
