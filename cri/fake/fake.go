// Package fake is an in-memory container runtime and registry for unit tests
// of logic that sits on package cri. It behaves as containerd's CRI plugin
// does where the conformance suite in package critest can tell: pulling by
// digest leaves the tag absent, pins are labels on references, credentials are
// checked per registry host. It is not the proof that anything works on a
// real runtime; the conformance suite runs against both.
package fake

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/distribution/reference"

	"prepull.io/prepull/cri"
)

// Registry holds the images a fake Runtime can pull.
type Registry struct {
	mu    sync.Mutex
	hosts map[string]*host
}

type host struct {
	username, password string
	down               bool
	tags               map[string]string   // repo:tag -> manifest digest
	manifests          map[string]manifest // repo@digest -> manifest
}

type manifest struct {
	id   string
	size uint64
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{hosts: map[string]*host{}}
}

func (r *Registry) host(name string) *host {
	h, ok := r.hosts[name]
	if !ok {
		h = &host{tags: map[string]string{}, manifests: map[string]manifest{}}
		r.hosts[name] = h
	}
	return h
}

// RequireAuth makes the registry at hostname refuse pulls without the given
// basic-auth credentials.
func (r *Registry) RequireAuth(hostname, username, password string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.host(hostname)
	h.username, h.password = username, password
}

// SetDown makes the registry at hostname unreachable, or reachable again.
func (r *Registry) SetDown(hostname string, down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.host(hostname).down = down
}

// Push stores a new image of size bytes under ref, a repo:tag, and returns its
// manifest digest and its image ID (both "sha256:…"). Pushing to a tag that
// exists moves it.
func (r *Registry) Push(ref string, size uint64) (digest, id string, err error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", "", err
	}
	tagged, ok := reference.TagNameOnly(named).(reference.Tagged)
	if !ok {
		return "", "", fmt.Errorf("push %s: a tag is required", ref)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.host(reference.Domain(named))
	digest, id = randomDigest(), randomDigest()
	h.manifests[named.Name()+"@"+digest] = manifest{id: id, size: size}
	h.tags[named.Name()+":"+tagged.Tag()] = digest
	return digest, id, nil
}

// resolve finds the manifest of a normalized reference in the registry.
func (r *Registry) resolve(named reference.Named, auth *cri.Auth) (string, manifest, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	domain := reference.Domain(named)
	h, ok := r.hosts[domain]
	if !ok {
		return "", manifest{}, fmt.Errorf("failed to resolve reference %q: dial tcp %s: connection refused: %w", named, domain, cri.ErrUnavailable)
	}
	if h.down {
		return "", manifest{}, fmt.Errorf("failed to resolve reference %q: dial tcp %s: connection refused: %w", named, domain, cri.ErrUnavailable)
	}
	if h.username != "" && !authorizes(auth, domain, h.username, h.password) {
		return "", manifest{}, fmt.Errorf("failed to resolve reference %q: pull access denied: 401 Unauthorized: %w", named, cri.ErrUnauthorized)
	}
	var dgst string
	if d, ok := named.(reference.Digested); ok {
		dgst = d.Digest().String()
	} else if t, ok := named.(reference.Tagged); ok {
		dgst = h.tags[named.Name()+":"+t.Tag()]
	}
	m, ok := h.manifests[named.Name()+"@"+dgst]
	if !ok {
		return "", manifest{}, fmt.Errorf("failed to resolve reference %q: %q: not found: %w", named, named, cri.ErrNotFound)
	}
	return dgst, m, nil
}

// authorizes reports whether auth carries the credentials for domain. As in
// containerd, credentials for another registry are not sent.
func authorizes(auth *cri.Auth, domain, user, pass string) bool {
	if auth == nil {
		return false
	}
	if auth.ServerAddress != "" {
		server := auth.ServerAddress
		if i := strings.Index(server, "://"); i >= 0 {
			server = server[i+3:]
		}
		server, _, _ = strings.Cut(server, "/")
		if server != domain {
			return false
		}
	}
	return auth.Username == user && auth.Password == pass
}

func randomDigest() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Runtime is an in-memory node runtime: both a cri.ImageService and a
// cri.Store. Its zero value is not usable; call New.
type Runtime struct {
	registry *Registry

	mu      sync.Mutex
	records map[string]*record // reference name -> record, as containerd keeps them
	sizes   map[string]uint64  // image ID -> size
	pulls   int
	// inUse are the image IDs and references containers use.
	inUse map[string]bool
}

type record struct {
	id     string
	labels map[string]string
}

var (
	_ cri.ImageService    = (*Runtime)(nil)
	_ cri.Store           = (*Runtime)(nil)
	_ cri.Provenance      = (*Runtime)(nil)
	_ cri.ContainerLister = (*Runtime)(nil)
)

// New returns a Runtime that pulls from registry.
func New(registry *Registry) *Runtime {
	return &Runtime{registry: registry, records: map[string]*record{}, sizes: map[string]uint64{}}
}

// Pulls reports how many pulls reached the registry.
func (f *Runtime) Pulls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pulls
}

// PullImage pulls ref from the registry and records the reference as given,
// its digest reference and the image ID, as containerd's CRI plugin does.
func (f *Runtime) PullImage(ctx context.Context, ref string, auth *cri.Auth) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", &cri.Error{Op: "pull", Ref: ref, Kind: cri.ErrTimeout, Err: err}
	}
	named, err := parse(ref)
	if err != nil {
		return "", &cri.Error{Op: "pull", Ref: ref, Kind: cri.ErrInvalid, Err: err}
	}
	dgst, m, err := f.registry.resolve(named, auth)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pulls++
	if err != nil {
		return "", &cri.Error{Op: "pull", Ref: ref, Err: err}
	}
	f.sizes[m.id] = m.size
	for _, name := range []string{named.String(), named.Name() + "@" + dgst, m.id} {
		if r, ok := f.records[name]; ok {
			r.id = m.id
			continue
		}
		f.records[name] = &record{id: m.id, labels: map[string]string{}}
	}
	return m.id, nil
}

// parse normalizes ref, giving a bare name the tag "latest".
func parse(ref string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, err
	}
	return reference.TagNameOnly(named), nil
}

// lookup finds the image ID that ref names, by reference or by ID.
func (f *Runtime) lookup(ref string) (string, bool) {
	if r, ok := f.records[ref]; ok {
		return r.id, true
	}
	if named, err := parse(ref); err == nil {
		if r, ok := f.records[named.String()]; ok {
			return r.id, true
		}
	}
	return "", false
}

// ImageStatus describes the image ref names.
func (f *Runtime) ImageStatus(_ context.Context, ref string) (*cri.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.lookup(ref)
	if !ok {
		return nil, &cri.Error{Op: "image status", Ref: ref, Kind: cri.ErrNotFound, Err: fmt.Errorf("no such image on the node")}
	}
	img := f.image(id)
	return &img, nil
}

func (f *Runtime) image(id string) cri.Image {
	img := cri.Image{ID: id, Size: f.sizes[id]}
	for name, r := range f.records {
		if r.id != id {
			continue
		}
		if r.labels[cri.PinnedLabel] == cri.PinnedLabelValue {
			img.Pinned = true
		}
		switch {
		case name == id:
		case strings.Contains(name, "@"):
			img.RepoDigests = append(img.RepoDigests, name)
		default:
			img.RepoTags = append(img.RepoTags, name)
		}
	}
	slices.Sort(img.RepoTags)
	slices.Sort(img.RepoDigests)
	return img
}

// ListImages lists the images on the node.
func (f *Runtime) ListImages(context.Context) ([]cri.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cri.Image
	for id := range f.sizes {
		out = append(out, f.image(id))
	}
	slices.SortFunc(out, func(a, b cri.Image) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// RemoveImage removes the image ref names with all its references.
func (f *Runtime) RemoveImage(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.lookup(ref)
	if !ok {
		return nil
	}
	for name, r := range f.records {
		if r.id == id {
			delete(f.records, name)
		}
	}
	delete(f.sizes, id)
	return nil
}

// ImageFsInfo reports the total size of the images on one filesystem.
func (f *Runtime) ImageFsInfo(context.Context) ([]cri.FilesystemUsage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var used uint64
	for _, s := range f.sizes {
		used += s
	}
	return []cri.FilesystemUsage{{Mountpoint: "/fake/images", UsedBytes: used, InodesUsed: uint64(len(f.sizes))}}, nil
}

// recordOf finds the record of a reference name.
func (f *Runtime) recordOf(op, ref string) (*record, error) {
	named, err := parse(ref)
	if err != nil {
		return nil, &cri.Error{Op: op, Ref: ref, Kind: cri.ErrInvalid, Err: err}
	}
	r, ok := f.records[named.String()]
	if !ok {
		return nil, &cri.Error{Op: op, Ref: ref, Kind: cri.ErrNotFound, Err: fmt.Errorf("image %q: not found", named)}
	}
	return r, nil
}

// Pin pins the reference ref for owner.
func (f *Runtime) Pin(_ context.Context, ref, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("pin", ref)
	if err != nil {
		return err
	}
	r.labels = cri.ApplyChanges(r.labels, cri.PinChanges(r.labels, owner))
	return nil
}

// Unpin takes owner off the reference ref.
func (f *Runtime) Unpin(_ context.Context, ref, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("unpin", ref)
	if err != nil {
		if e, ok := err.(*cri.Error); ok && e.Kind == cri.ErrNotFound {
			return nil
		}
		return err
	}
	r.labels = cri.ApplyChanges(r.labels, cri.UnpinChanges(r.labels, owner))
	return nil
}

// MarkBrought labels the reference ref as brought by prepull.
func (f *Runtime) MarkBrought(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("mark brought", ref)
	if err != nil {
		return err
	}
	r.labels[cri.BroughtLabel] = "true"
	return nil
}

// Brought reports whether the reference ref is labelled as brought.
func (f *Runtime) Brought(_ context.Context, ref string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("read provenance", ref)
	if err != nil {
		return false, err
	}
	return r.labels[cri.BroughtLabel] != "", nil
}

// MarkSource labels the reference ref with where it was fetched from.
func (f *Runtime) MarkSource(_ context.Context, ref, source, from string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("record source", ref)
	if err != nil {
		return err
	}
	r.labels = cri.ApplyChanges(r.labels, map[string]string{cri.SourceLabel: source, cri.FetchedFromLabel: from})
	return nil
}

// Source reads the labels MarkSource wrote on the reference ref.
func (f *Runtime) Source(_ context.Context, ref string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("read source", ref)
	if err != nil {
		return "", "", err
	}
	return r.labels[cri.SourceLabel], r.labels[cri.FetchedFromLabel], nil
}

// UseImage records that a container uses the image ref names (its ID and
// ref), as ImagesInUse reports.
func (f *Runtime) UseImage(ref string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inUse == nil {
		f.inUse = map[string]bool{}
	}
	f.inUse[ref] = true
	if r, err := f.recordOf("use", ref); err == nil {
		f.inUse[r.id] = true
	}
}

// ImagesInUse reports the images UseImage recorded.
func (f *Runtime) ImagesInUse(context.Context) (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.inUse), nil
}

// Owners lists the owners of the pin on the reference ref.
func (f *Runtime) Owners(_ context.Context, ref string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("list pin owners", ref)
	if err != nil {
		return nil, err
	}
	return cri.PinOwners(r.labels), nil
}

// SetPins makes owners exactly the owners of the pin on the reference ref
// (with keepOthers, owners and those already there).
func (f *Runtime) SetPins(_ context.Context, ref string, owners []string, keepOthers bool) ([]string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := f.recordOf("pin", ref)
	if err != nil {
		return nil, false, err
	}
	changes := cri.SetPinsChanges(r.labels, owners, keepOthers)
	r.labels = cri.ApplyChanges(r.labels, changes)
	return cri.PinOwners(r.labels), changes != nil, nil
}

// Tag points tag at the image that digestRef names, pinned for owners, and
// reports whether the tag's record is new.
func (f *Runtime) Tag(_ context.Context, tag, digestRef string, owners ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	src, err := f.recordOf("tag "+tag+" as", digestRef)
	if err != nil {
		return false, err
	}
	named, err := parse(tag)
	if err != nil {
		return false, &cri.Error{Op: "tag", Ref: tag, Kind: cri.ErrInvalid, Err: err}
	}
	r, ok := f.records[named.String()]
	if !ok {
		r = &record{labels: map[string]string{}}
		f.records[named.String()] = r
	}
	r.id = src.id
	for _, o := range owners {
		r.labels = cri.ApplyChanges(r.labels, cri.PinChanges(r.labels, o))
	}
	return !ok, nil
}

// Label sets the label key of the record ref names to value, as a tool
// other than prepull would.
func (f *Runtime) Label(ref, key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	named, err := parse(ref)
	if err != nil {
		return err
	}
	r, ok := f.records[named.String()]
	if !ok {
		return &cri.Error{Op: "label", Ref: ref, Kind: cri.ErrNotFound, Err: fmt.Errorf("no such image record")}
	}
	r.labels[key] = value
	return nil
}

// PullProgress reports an image present whole and any other not begun:
// the fake's pulls are instant.
func (f *Runtime) PullProgress(_ context.Context, digestRef string) (int64, int64, error) {
	if !strings.Contains(digestRef, "@") {
		return 0, 0, &cri.Error{Op: "pull progress", Ref: digestRef, Kind: cri.ErrInvalid, Err: fmt.Errorf("not a digest reference")}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.lookup(digestRef)
	if !ok {
		return 0, 0, nil
	}
	size := int64(f.image(id).Size)
	return size, size, nil
}

var _ cri.PinLister = (*Runtime)(nil)

// PinnedRefs maps each reference that carries owners to them.
func (f *Runtime) PinnedRefs(context.Context) (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for name, r := range f.records {
		if owners := cri.PinOwners(r.labels); len(owners) > 0 {
			out[name] = owners
		}
	}
	return out, nil
}
