package testground

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
)

// OCIArchive returns a tar of an OCI image layout holding img under ref, named
// so that containerd's import recreates ref.
func OCIArchive(ref string, img v1.Image) ([]byte, error) {
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pp-oci-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, err
	}
	err = p.AppendImage(img, layout.WithAnnotations(map[string]string{
		cri.ImageNameAnnotation:   parsed.Name(),
		ocispec.AnnotationRefName: parsed.Identifier(),
	}))
	if err != nil {
		return nil, err
	}
	return tarDir(dir)
}

// tarDir returns a tar of the regular files and directories under dir.
func tarDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
