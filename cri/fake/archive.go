package fake

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
)

// Import reads an OCI image-layout archive and, for each image of its index
// that refs names, records those references for the platform the test runs
// on, keeping the labels of a reference that existed. Every blob it reads is
// checked against its digest, and nothing is recorded unless the whole
// archive is good.
func (f *Runtime) Import(_ context.Context, archive io.Reader, refs func(name, digest string) []string) ([]cri.ArchiveImage, error) {
	blobs, index, err := readLayout(archive)
	if err != nil {
		return nil, &cri.Error{Op: "import", Kind: cri.ErrInvalid, Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cri.ArchiveImage
	for _, d := range index.Manifests {
		ai := cri.ArchiveImage{Name: d.Annotations[cri.ImageNameAnnotation], Digest: d.Digest.String()}
		if ai.Name == "" {
			ai.Name = d.Annotations[ocispec.AnnotationRefName]
		}
		names := refs(ai.Name, ai.Digest)
		if len(names) == 0 {
			out = append(out, ai)
			continue
		}
		m, err := manifestFor(blobs, d)
		var normalized []string
		for _, n := range names {
			named, perr := parse(n)
			if perr != nil {
				err = errors.Join(err, perr)
				continue
			}
			normalized = append(normalized, named.String())
		}
		if err != nil {
			ai.Err = &cri.Error{Op: "import", Ref: names[0], Kind: cri.ErrNotFound, Err: err}
			out = append(out, ai)
			continue
		}
		f.sizes[m.id] = m.size
		for _, n := range normalized {
			if r, ok := f.records[n]; ok {
				r.id = m.id
				continue
			}
			f.records[n] = &record{id: m.id, labels: map[string]string{}}
		}
		ai.Refs = names
		out = append(out, ai)
	}
	return out, nil
}

// readLayout reads every blob of an OCI layout tar, checking its digest.
func readLayout(r io.Reader) (map[string][]byte, ocispec.Index, error) {
	var index ocispec.Index
	blobs := map[string][]byte{}
	haveIndex := false
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, index, fmt.Errorf("read archive: %w", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, index, fmt.Errorf("read %s: %w", h.Name, err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == "index.json":
			if err := json.Unmarshal(data, &index); err != nil {
				return nil, index, fmt.Errorf("index.json: %w", err)
			}
			haveIndex = true
		case strings.HasPrefix(name, "blobs/sha256/"):
			want := strings.TrimPrefix(name, "blobs/sha256/")
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != want {
				return nil, index, fmt.Errorf("blob %s: content does not match its digest", name)
			}
			blobs["sha256:"+want] = data
		}
	}
	if !haveIndex {
		return nil, index, fmt.Errorf("not an OCI image layout: no index.json")
	}
	return blobs, index, nil
}

// manifestFor finds the manifest d names, choosing this platform's manifest
// from an index.
func manifestFor(blobs map[string][]byte, d ocispec.Descriptor) (manifest, error) {
	data, ok := blobs[d.Digest.String()]
	if !ok {
		return manifest{}, fmt.Errorf("blob %s: missing from the archive", d.Digest)
	}
	if d.MediaType == ocispec.MediaTypeImageIndex || d.MediaType == "application/vnd.docker.distribution.manifest.list.v2+json" {
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return manifest{}, fmt.Errorf("index %s: %w", d.Digest, err)
		}
		for _, m := range idx.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
				return manifestFor(blobs, m)
			}
		}
		return manifest{}, fmt.Errorf("index %s: no manifest for linux/%s", d.Digest, runtime.GOARCH)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return manifest{}, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	var cfg ocispec.Image
	if data, ok := blobs[m.Config.Digest.String()]; ok && json.Unmarshal(data, &cfg) == nil &&
		cfg.Architecture != "" && (cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH) {
		return manifest{}, fmt.Errorf("manifest %s is for %s/%s: the archive holds no linux/%s image", d.Digest, cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	size := uint64(m.Config.Size)
	for _, l := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if _, ok := blobs[l.Digest.String()]; !ok {
			return manifest{}, fmt.Errorf("blob %s: missing from the archive", l.Digest)
		}
		if l.Digest != m.Config.Digest {
			size += uint64(l.Size)
		}
	}
	return manifest{id: m.Config.Digest.String(), size: size}, nil
}
