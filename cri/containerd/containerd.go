// Package containerd implements cri.Store on containerd's own API, in the
// namespace that containerd's CRI plugin uses, so that every change it makes is
// what the kubelet sees through CRI.
//
// Pins are owned, with the labels that package cri defines: see cri.PinChanges.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

// Namespace is the containerd namespace of containerd's CRI plugin.
const Namespace = "k8s.io"

// criManagedLabel marks the image records that the CRI plugin manages.
const criManagedLabel = "io.cri-containerd.image"

// DefaultTimeout is the default deadline of every call but Import.
const DefaultTimeout = 30 * time.Second

// Store is a cri.Store on containerd.
type Store struct {
	client      *containerd.Client
	snapshotter string
	timeout     time.Duration
	hostsDir    string
	hosts       hostsCache
}

var (
	_ cri.Store      = (*Store)(nil)
	_ cri.Provenance = (*Store)(nil)
)

// Option configures a Store.
type Option func(*Store)

// WithSnapshotter sets the snapshotter imports are unpacked for; it must be
// the one the CRI plugin uses. The default is overlayfs.
func WithSnapshotter(name string) Option {
	return func(s *Store) { s.snapshotter = name }
}

// WithTimeout sets the deadline of every call but Import.
func WithTimeout(d time.Duration) Option {
	return func(s *Store) { s.timeout = d }
}

// New connects to the containerd listening on the unix socket address.
func New(address string, opts ...Option) (*Store, error) {
	s := &Store{snapshotter: "overlayfs", timeout: DefaultTimeout}
	for _, o := range opts {
		o(s)
	}
	c, err := containerd.New(strings.TrimPrefix(address, "unix://"),
		containerd.WithDefaultNamespace(Namespace),
		containerd.WithTimeout(s.timeout))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", address, errors.Join(cri.ErrUnavailable, err))
	}
	s.client = c
	return s, nil
}

// Close closes the connection.
func (s *Store) Close() error { return s.client.Close() }

// Pin pins the image record that ref names and records owner on it.
func (s *Store) Pin(ctx context.Context, ref, owner string) error {
	return s.changeLabels(ctx, "pin", ref, func(labels map[string]string) map[string]string {
		return cri.PinChanges(labels, owner)
	})
}

// Unpin removes owner from the image record that ref names, and the pin with
// the last owner if Pin set it. An absent image is no error.
func (s *Store) Unpin(ctx context.Context, ref, owner string) error {
	err := s.changeLabels(ctx, "unpin", ref, func(labels map[string]string) map[string]string {
		return cri.UnpinChanges(labels, owner)
	})
	if errors.Is(err, cri.ErrNotFound) {
		return nil
	}
	return err
}

// Owners lists the owners recorded on the image record that ref names.
func (s *Store) Owners(ctx context.Context, ref string) ([]string, error) {
	labels, err := s.labels(ctx, "list pin owners", ref)
	if err != nil {
		return nil, err
	}
	return cri.PinOwners(labels), nil
}

// labels are the labels of the image record ref names.
func (s *Store) labels(ctx context.Context, op, ref string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	name, err := imageref.Normalize(ref)
	if err != nil {
		return nil, err
	}
	img, err := s.client.ImageService().Get(ctx, name)
	if err != nil {
		return nil, wrap(op, ref, err)
	}
	return img.Labels, nil
}

// MarkBrought labels the record ref names as brought by prepull.
func (s *Store) MarkBrought(ctx context.Context, ref string) error {
	return s.changeLabels(ctx, "mark brought", ref, func(labels map[string]string) map[string]string {
		if labels[cri.BroughtLabel] != "" {
			return nil
		}
		return map[string]string{cri.BroughtLabel: time.Now().UTC().Format(time.RFC3339)}
	})
}

// Brought reports whether the record ref names is labelled as brought.
func (s *Store) Brought(ctx context.Context, ref string) (bool, error) {
	labels, err := s.labels(ctx, "read provenance", ref)
	if err != nil {
		return false, err
	}
	return labels[cri.BroughtLabel] != "", nil
}

// MarkSource labels the record ref names with where it was fetched from.
func (s *Store) MarkSource(ctx context.Context, ref, source, from string) error {
	return s.changeLabels(ctx, "record source", ref, func(labels map[string]string) map[string]string {
		if labels[cri.SourceLabel] == source && labels[cri.FetchedFromLabel] == from {
			return nil
		}
		return map[string]string{cri.SourceLabel: source, cri.FetchedFromLabel: from}
	})
}

// Source reads the labels MarkSource wrote on the record ref names.
func (s *Store) Source(ctx context.Context, ref string) (string, string, error) {
	labels, err := s.labels(ctx, "read source", ref)
	if err != nil {
		return "", "", err
	}
	return labels[cri.SourceLabel], labels[cri.FetchedFromLabel], nil
}

// SetPins makes owners exactly the owners pinned on the record ref names
// (with keepOthers, owners and those already there), in one read and at
// most one write.
func (s *Store) SetPins(ctx context.Context, ref string, owners []string, keepOthers bool) ([]string, bool, error) {
	var left []string
	changed := false
	err := s.changeLabels(ctx, "pin", ref, func(labels map[string]string) map[string]string {
		changes := cri.SetPinsChanges(labels, owners, keepOthers)
		left, changed = cri.PinOwners(cri.ApplyChanges(maps.Clone(labels), changes)), changes != nil
		return changes
	})
	if err != nil {
		return nil, false, err
	}
	return left, changed, nil
}

// changeLabels applies the label changes that change computes from the
// current labels of the record ref names, touching no other label.
func (s *Store) changeLabels(ctx context.Context, op, ref string, change func(map[string]string) map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	name, err := imageref.Normalize(ref)
	if err != nil {
		return err
	}
	is := s.client.ImageService()
	img, err := is.Get(ctx, name)
	if err != nil {
		return wrap(op, ref, err)
	}
	changes := change(img.Labels)
	if changes == nil {
		return nil
	}
	paths := make([]string, 0, len(changes))
	for k := range changes {
		paths = append(paths, "labels."+k)
	}
	img.Labels = cri.ApplyChanges(img.Labels, changes)
	_, err = is.Update(ctx, img, paths...)
	return wrap(op, ref, err)
}

// Tag makes tag name the image that digestRef names, pinned for owners, in
// one write of the tag's record, and reports whether the record is new.
func (s *Store) Tag(ctx context.Context, tag, digestRef string, owners ...string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tagName, err := imageref.Normalize(tag)
	if err != nil {
		return false, err
	}
	srcName, err := imageref.Normalize(digestRef)
	if err != nil {
		return false, err
	}
	src, err := s.client.ImageService().Get(ctx, srcName)
	if err != nil {
		return false, wrap("tag "+tag+" as", digestRef, err)
	}
	_, created, err := s.point(ctx, tagName, src.Target, owners...)
	return created, wrap("tag "+tag+" as", digestRef, err)
}

// point makes the record name name the image target, pinned for owners: a
// new record carries the CRI plugin's label, so that the kubelet sees it; a
// record that names another image is moved, its labels (pins included)
// kept. It returns what undoes the move, or nil when there was none, and
// whether the record is new.
func (s *Store) point(ctx context.Context, name string, target ocispec.Descriptor, owners ...string) (func(context.Context), bool, error) {
	is := s.client.ImageService()
	// Most names are new: made in one call, read only when they exist.
	labels, _ := withPins(map[string]string{criManagedLabel: "managed"}, owners)
	_, err := is.Create(ctx, images.Image{Name: name, Target: target, Labels: labels})
	switch {
	case err == nil:
		return func(c context.Context) { _ = is.Delete(c, name) }, true, nil
	case !errdefs.IsAlreadyExists(err):
		return nil, false, err
	}
	cur, err := is.Get(ctx, name)
	if err != nil {
		return nil, false, err
	}
	var paths []string
	old := cur.Target
	if cur.Target.Digest != target.Digest {
		cur.Target, paths = target, append(paths, "target")
	}
	labels, changed := withPins(cur.Labels, owners)
	cur.Labels = labels
	for _, k := range changed {
		paths = append(paths, "labels."+k)
	}
	if len(paths) == 0 {
		return nil, false, nil
	}
	if _, err := is.Update(ctx, cur, paths...); err != nil {
		return nil, false, err
	}
	return func(c context.Context) {
		cur.Target = old
		_, _ = is.Update(c, cur, "target")
	}, false, nil
}

// withPins returns labels with the pins of owners, and the keys it changed.
func withPins(labels map[string]string, owners []string) (map[string]string, []string) {
	var changed []string
	for _, o := range owners {
		changes := cri.PinChanges(labels, o)
		for k := range changes {
			changed = append(changed, k)
		}
		labels = cri.ApplyChanges(labels, changes)
	}
	return labels, changed
}

// PullProgress reports how much of the image digestRef names is in the
// content store: its platform manifest's config and layers, each whole once
// committed, else by the offset of its download under way.
func (s *Store) PullProgress(ctx context.Context, digestRef string) (int64, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	r, err := imageref.Parse(digestRef)
	if err != nil {
		return 0, 0, err
	}
	if r.Digest == "" {
		return 0, 0, fmt.Errorf("pull progress of %s: %w: not a digest reference", digestRef, cri.ErrInvalid)
	}
	cs := s.client.ContentStore()
	blobs, err := s.platformBlobs(ctx, cs, digest.Digest(r.Digest))
	if err != nil || len(blobs) == 0 {
		// The manifest is not fetched yet.
		return 0, 0, nil
	}
	statuses, err := cs.ListStatuses(ctx)
	if err != nil {
		return 0, 0, wrap("pull progress", digestRef, err)
	}
	offsets := make(map[digest.Digest]int64, len(statuses))
	for _, st := range statuses {
		d := ingestDigest(st)
		offsets[d] = max(offsets[d], st.Offset)
	}
	var done, total int64
	for _, b := range blobs {
		total += b.Size
		if _, err := cs.Info(ctx, b.Digest); err == nil {
			done += b.Size
		} else {
			done += min(offsets[b.Digest], b.Size)
		}
	}
	return done, total, nil
}

// ingestDigest is the blob an ingest writes: its expected digest, which
// containerd's content API does not always return, or else the digest its
// ref ends in ("layer-sha256:…", as pulls name their ingests).
func ingestDigest(st content.Status) digest.Digest {
	if st.Expected != "" {
		return st.Expected
	}
	if i := strings.LastIndex(st.Ref, string(digest.SHA256)+":"); i >= 0 {
		if d, err := digest.Parse(st.Ref[i:]); err == nil {
			return d
		}
	}
	return ""
}

// platformBlobs are the config and layers of the manifest d names, or of
// the manifest for the node's platform when d names an index, read from the
// content store: an error while that manifest is not there.
func (s *Store) platformBlobs(ctx context.Context, cs content.Store, d digest.Digest) ([]ocispec.Descriptor, error) {
	return walkPlatform(ocispec.Descriptor{Digest: d}, func(desc ocispec.Descriptor) (*manifest, error) {
		raw, err := content.ReadBlob(ctx, cs, desc)
		if err != nil {
			return nil, err
		}
		return parseManifest(raw, desc.Digest)
	})
}

// walkPlatform goes from the manifest or index desc names to the config and
// layers of the manifest for the node's platform, reading each with read.
func walkPlatform(desc ocispec.Descriptor, read func(ocispec.Descriptor) (*manifest, error)) ([]ocispec.Descriptor, error) {
	for range 4 {
		m, err := read(desc)
		if err != nil {
			return nil, err
		}
		if len(m.Manifests) == 0 {
			return append([]ocispec.Descriptor{m.Config}, m.Layers...), nil
		}
		i := slices.IndexFunc(m.Manifests, func(md ocispec.Descriptor) bool {
			return md.Platform != nil && platforms.Default().Match(*md.Platform)
		})
		if i < 0 {
			return nil, fmt.Errorf("%s has no manifest for %s", desc.Digest, platforms.DefaultString())
		}
		desc = m.Manifests[i]
	}
	return nil, fmt.Errorf("%s: indexes nested too deep", desc.Digest)
}

// wrap maps a containerd error to the cri sentinels.
func wrap(op, ref string, err error) error {
	if err == nil {
		return nil
	}
	var kind error
	switch {
	case errdefs.IsNotFound(err):
		kind = cri.ErrNotFound
	case errdefs.IsUnavailable(err):
		kind = cri.ErrUnavailable
	case errdefs.IsInvalidArgument(err):
		kind = cri.ErrInvalid
	case errors.Is(err, context.DeadlineExceeded), errdefs.IsDeadlineExceeded(err):
		kind = cri.ErrTimeout
	case errdefs.IsNotImplemented(err):
		kind = cri.ErrUnsupported
	}
	return &cri.Error{Op: op, Ref: ref, Kind: kind, Err: err}
}

var _ cri.PinLister = (*Store)(nil)

// PinnedRefs maps each image record that carries owners to them.
func (s *Store) PinnedRefs(ctx context.Context) (map[string][]string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	imgs, err := s.client.ImageService().List(ctx)
	if err != nil {
		return nil, wrap("list pinned images", "", err)
	}
	out := map[string][]string{}
	for _, img := range imgs {
		if owners := cri.PinOwners(img.Labels); len(owners) > 0 {
			out[img.Name] = owners
		}
	}
	return out, nil
}
