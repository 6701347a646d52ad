package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

// Import loads archive into the content store under a lease, and makes each
// image present that refs names: its blobs are linked for the garbage
// collector, it is unpacked for the node's platform, and only then are its
// references created or moved. A reference that fails to be made undoes the
// ones made before it for that image, so no image is left half-named.
func (s *Store) Import(ctx context.Context, r io.Reader, refs func(name, digest string) []string) ([]cri.ArchiveImage, error) {
	ctx, done, err := s.client.WithLease(ctx)
	if err != nil {
		return nil, wrap("import", "", err)
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()

	cs := s.client.ContentStore()
	index, err := archive.ImportIndex(ctx, cs, r)
	if err != nil {
		return nil, &cri.Error{Op: "import", Kind: cri.ErrInvalid, Err: fmt.Errorf("read archive: %w", err)}
	}
	data, err := content.ReadBlob(ctx, cs, index)
	if err != nil {
		return nil, wrap("import", "", err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, &cri.Error{Op: "import", Kind: cri.ErrInvalid, Err: fmt.Errorf("archive index: %w", err)}
	}
	out := make([]cri.ArchiveImage, 0, len(idx.Manifests))
	for _, m := range idx.Manifests {
		if _, ok := m.Annotations[images.AnnotationManifestSubject]; ok {
			continue // a referrer (signature, SBOM), not an image
		}
		ai := cri.ArchiveImage{Name: archiveName(m.Annotations), Digest: m.Digest.String()}
		if names := refs(ai.Name, ai.Digest); len(names) > 0 {
			if err := s.makePresent(ctx, m, names); err != nil {
				ai.Err = err
			} else {
				ai.Refs = names
			}
		}
		out = append(out, ai)
	}
	return out, nil
}

// archiveName is the name an archive's index gives an image.
func archiveName(annotations map[string]string) string {
	if n := annotations[images.AnnotationImageName]; n != "" {
		return n
	}
	return annotations[ocispec.AnnotationRefName]
}

// makePresent unpacks the image desc names for the node's platform and then
// names it by every reference in names.
func (s *Store) makePresent(ctx context.Context, desc ocispec.Descriptor, names []string) error {
	cs := s.client.ContentStore()
	platform := platforms.Default()
	first := names[0]
	handler := images.SetChildrenLabels(cs, images.FilterPlatforms(images.ChildrenHandler(cs), platform))
	if err := images.Walk(ctx, handler, desc); err != nil {
		return wrap("import", first, err)
	}
	noPlatform := func(err error) error {
		return &cri.Error{Op: "import", Ref: first, Kind: cri.ErrNotFound,
			Err: fmt.Errorf("the archive holds no %s image of %s: %w", platforms.Format(platforms.DefaultSpec()), desc.Digest, err)}
	}
	m, err := images.Manifest(ctx, cs, desc, platform)
	if errdefs.IsNotFound(err) {
		return noPlatform(err)
	}
	if err != nil {
		return wrap("import", first, err)
	}
	// containerd checks the platform of an index's manifests only; a lone
	// manifest is checked here, by its config.
	if p, err := images.ConfigPlatform(ctx, cs, m.Config); err != nil {
		return wrap("import", first, err)
	} else if p.OS != "" && !platform.Match(p) {
		return noPlatform(fmt.Errorf("it is a %s image", platforms.Format(p)))
	}
	img := containerd.NewImageWithPlatform(s.client, images.Image{Name: first, Target: desc}, platform)
	if err := img.Unpack(ctx, s.snapshotter); err != nil {
		return wrap("unpack", first, err)
	}

	var undo []func(context.Context)
	rollback := func() {
		bg := context.WithoutCancel(ctx)
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](bg)
		}
	}
	for _, ref := range names {
		name, err := imageref.Normalize(ref)
		if err != nil {
			rollback()
			return err
		}
		u, _, err := s.point(ctx, name, desc)
		if err != nil {
			rollback()
			return wrap("import", ref, err)
		}
		if u != nil {
			undo = append(undo, u)
		}
	}
	return nil
}
