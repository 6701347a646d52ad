package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/verify"
)

// Options configure Write.
type Options struct {
	// Platforms are the platforms to carry; empty means DefaultPlatforms.
	Platforms []v1.Platform
	// Strict makes every platform of Platforms required of every image;
	// otherwise an image needs at least one of them.
	Strict bool
	// Keychain gives registry credentials; nil means anonymous.
	Keychain authn.Keychain
	// Insecure lists registry hosts reached over plain HTTP.
	Insecure map[string]bool
	// Transport is the HTTP transport; nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Jobs is how many blobs are fetched at once; 0 means 4.
	Jobs int
	// Progress hears how the work goes; nil means silence.
	Progress Progress
	// Clock stamps the bundle; nil means time.Now.
	Clock func() time.Time
	// Compress is "gzip" or "zstd" to compress the bundle once verified;
	// empty means a plain tar.
	Compress string
}

// Compressions are the values of Options.Compress.
var Compressions = map[string]compression.Compression{"": compression.Uncompressed, "gzip": compression.Gzip, "zstd": compression.Zstd}

// Progress hears how Write goes.
type Progress interface {
	// Planned tells how many images and bytes the bundle will hold, and
	// how many of those bytes are already at hand.
	Planned(images int, total, reused int64)
	// Fetched tells that n more bytes arrived.
	Fetched(n int64)
	// ImageDone tells that an image is complete, or failed with err.
	ImageDone(ref string, err error)
}

// ImageError is one image Write could not bundle.
type ImageError struct {
	// Image is the reference as the caller gave it.
	Image string
	Err   error
}

func (e *ImageError) Error() string { return fmt.Sprintf("image %s: %v", e.Image, e.Err) }
func (e *ImageError) Unwrap() error { return e.Err }

// Write writes a bundle of images (tags, digests or tag@digest references)
// to out. Blobs already in a bundle at out, or fetched by an earlier Write
// that did not finish, are reused rather than fetched again. Each image is
// resolved and fetched on its own: one that fails is left out, named in the
// returned error (a join of *ImageError), and the others are written. The
// bundle is verified before it replaces out. Write returns what out holds.
func Write(ctx context.Context, out string, images []string, opts Options) (*Contents, error) {
	w := newWriter(out, opts)
	prev, err := openArchive(out, 0)
	switch {
	case err == nil:
		defer prev.Close()
	case errors.Is(err, os.ErrNotExist):
		prev = &archive{members: map[string]member{}}
	default:
		return nil, fmt.Errorf("%s exists and is not a bundle to reuse (remove it): %w", out, err)
	}
	if err := os.MkdirAll(w.cache, 0o755); err != nil {
		return nil, err
	}

	var failed []error
	var planned []*Image
	seen := map[string]string{} // reference -> digest
	for _, ref := range images {
		img, err := w.plan(ctx, prev, ref)
		if err != nil {
			failed = append(failed, &ImageError{Image: ref, Err: err})
			w.progress.ImageDone(ref, err)
			continue
		}
		if d, ok := seen[img.Ref]; ok {
			if d != img.Digest {
				err := fmt.Errorf("%s is listed twice, at %s and at %s", img.Ref, d, img.Digest)
				failed = append(failed, &ImageError{Image: ref, Err: err})
				w.progress.ImageDone(ref, err)
			}
			continue
		}
		seen[img.Ref] = img.Digest
		planned = append(planned, img)
	}

	var total, reused int64
	counted := map[digest.Digest]bool{}
	for _, img := range planned {
		for _, b := range img.blobs {
			d := digest.Digest(b.Digest.String())
			if _, isManifest := w.manifest(d); counted[d] || isManifest {
				continue
			}
			counted[d] = true
			total += b.Size
			if w.have(prev, d, b.Size) {
				reused += b.Size
			}
		}
	}
	w.progress.Planned(len(planned), total, reused)

	var kept []*Image
	for _, img := range planned {
		if err := w.fetch(ctx, prev, img); err != nil {
			failed = append(failed, &ImageError{Image: img.Ref, Err: err})
			w.progress.ImageDone(img.Ref, err)
			continue
		}
		w.progress.ImageDone(img.Ref, nil)
		kept = append(kept, img)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	contents, err := w.assemble(prev, kept)
	if err != nil {
		return nil, err
	}
	return contents, errors.Join(failed...)
}

// writer is one Write.
type writer struct {
	out, cache string
	opts       Options
	remote     []remote.Option
	progress   Progress
	// manifests are the manifests, indexes and lone manifests' configs read
	// while planning, by digest.
	mu        sync.Mutex
	manifests map[digest.Digest][]byte
}

func newWriter(out string, opts Options) *writer {
	if len(opts.Platforms) == 0 {
		opts.Platforms = DefaultPlatforms
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 4
	}
	if opts.Keychain == nil {
		opts.Keychain = authn.NewMultiKeychain()
	}
	if opts.Transport == nil {
		opts.Transport = http.DefaultTransport
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	p := opts.Progress
	if p == nil {
		p = silent{}
	}
	return &writer{
		out: out, cache: out + ".blobs", opts: opts, progress: p,
		remote:    []remote.Option{remote.WithAuthFromKeychain(opts.Keychain), remote.WithTransport(opts.Transport)},
		manifests: map[digest.Digest][]byte{},
	}
}

// plan resolves ref and lists the blobs the bundle needs of it.
func (w *writer) plan(ctx context.Context, prev *archive, ref string) (*Image, error) {
	r, err := imageref.Parse(ref)
	if err != nil {
		return nil, err
	}
	// An image is named by its tag, and by its digest when it has no tag; it
	// is fetched by its digest when the list pins one.
	img := &Image{Ref: r.Tag}
	fetchRef := r.Tag
	if d := r.DigestRef(); d != "" {
		fetchRef = d
		if img.Ref == "" {
			img.Ref = d
		}
	}
	nref, err := w.parse(fetchRef)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(nref, append(w.remote, remote.WithContext(ctx))...)
	if err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	img.repo = nref.Context()
	img.Digest, img.MediaType = desc.Digest.String(), string(desc.MediaType)
	w.keep(desc.Digest, desc.Manifest)
	root := v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}

	if desc.MediaType.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		var available []string
		for _, m := range idx.Manifests {
			if m.Platform == nil {
				continue
			}
			available = append(available, m.Platform.String())
			if !w.wanted(*m.Platform) || slices.Contains(img.Platforms, m.Platform.String()) {
				continue
			}
			blobs, err := w.manifestBlobs(ctx, nref.Context(), m)
			if err != nil {
				return nil, err
			}
			img.blobs = append(img.blobs, blobs...)
			img.Platforms = append(img.Platforms, m.Platform.String())
		}
		if err := w.checkPlatforms(img.Platforms, available); err != nil {
			return nil, err
		}
	} else {
		blobs, err := w.manifestBlobs(ctx, nref.Context(), root)
		if err != nil {
			return nil, err
		}
		img.blobs = blobs[:len(blobs)-1]
		if p := w.configPlatform(ctx, prev, nref.Context(), blobs[0]); p != nil {
			if w.wanted(*p) {
				img.Platforms = []string{p.String()}
			}
			if err := w.checkPlatforms(img.Platforms, []string{p.String()}); err != nil {
				return nil, err
			}
		}
	}
	sigs, digests, err := w.planSignatures(ctx, nref.Context(), desc.Digest)
	if err != nil {
		return nil, err
	}
	img.blobs = append(append(img.blobs, sigs...), root)
	img.Signatures = digests
	for _, b := range img.blobs {
		img.Size += b.Size
	}
	return img, nil
}

// planSignatures lists the blobs of the signatures of the image d names,
// in cosign's format: the manifest at its signature tag, and its referrers
// of cosign's artifact type; and those manifests' digests. An image with no
// signature has none; a registry that cannot say is an error.
func (w *writer) planSignatures(ctx context.Context, repo name.Repository, d v1.Hash) ([]v1.Descriptor, []string, error) {
	found, err := verify.Manifests(repo.Digest(d.String()), append(w.remote, remote.WithContext(ctx))...)
	if err != nil {
		return nil, nil, fmt.Errorf("signatures: %w", err)
	}
	var blobs []v1.Descriptor
	var digests []string
	for _, desc := range found {
		m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, nil, fmt.Errorf("signature %s: %w", desc.Digest, err)
		}
		w.keep(desc.Digest, desc.Manifest)
		blobs = append(append(blobs, m.Config), m.Layers...)
		blobs = append(blobs, v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
		digests = append(digests, desc.Digest.String())
	}
	return blobs, digests, nil
}

// manifestBlobs fetches the manifest m names and returns its config and
// layers, then m itself.
func (w *writer) manifestBlobs(ctx context.Context, repo name.Repository, m v1.Descriptor) ([]v1.Descriptor, error) {
	raw, ok := w.manifest(digest.Digest(m.Digest.String()))
	if !ok {
		desc, err := remote.Get(repo.Digest(m.Digest.String()), append(w.remote, remote.WithContext(ctx))...)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", m.Digest, err)
		}
		raw = desc.Manifest
		w.keep(desc.Digest, raw)
	}
	man, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", m.Digest, err)
	}
	if man.MediaType == types.DockerManifestSchema1 || man.MediaType == types.DockerManifestSchema1Signed {
		return nil, fmt.Errorf("manifest %s: schema 1 images are not supported", m.Digest)
	}
	out := append([]v1.Descriptor{man.Config}, man.Layers...)
	return append(out, m), nil
}

// configPlatform reads the platform that config, the config of a lone
// manifest, names, or nil when it names none.
func (w *writer) configPlatform(ctx context.Context, prev *archive, repo name.Repository, config v1.Descriptor) *v1.Platform {
	d := digest.Digest(config.Digest.String())
	var data []byte
	if b, ok := prev.blob(d, config.Size); ok {
		data, _ = io.ReadAll(b)
	} else if config.Size <= 4<<20 {
		l, err := remote.Layer(repo.Digest(d.String()), append(w.remote, remote.WithContext(ctx))...)
		if err != nil {
			return nil
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil
		}
		defer rc.Close()
		if data, err = io.ReadAll(io.LimitReader(rc, config.Size+1)); err != nil {
			return nil
		}
		// Kept like the manifests, so that it is not fetched again.
		if v := d.Verifier(); int64(len(data)) == config.Size {
			_, _ = v.Write(data)
			if v.Verified() {
				w.keep(config.Digest, data)
			}
		}
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(data, &cfg); err != nil || cfg.OS == "" {
		return nil
	}
	return &v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
}

// wanted reports whether p is one of the platforms asked for.
func (w *writer) wanted(p v1.Platform) bool {
	for _, want := range w.opts.Platforms {
		if p.Satisfies(want) {
			return true
		}
	}
	return false
}

// checkPlatforms fails when an image holds too few of the platforms asked
// for.
func (w *writer) checkPlatforms(held, available []string) error {
	var want []string
	for _, p := range w.opts.Platforms {
		want = append(want, p.String())
	}
	var missing []string
	for _, p := range want {
		if !slices.Contains(held, p) {
			missing = append(missing, p)
		}
	}
	if len(held) == 0 || (w.opts.Strict && len(missing) > 0) {
		return fmt.Errorf("no image for %s; the image has %s", strings.Join(missing, ", "), orNone(available))
	}
	return nil
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "no platform named"
	}
	return strings.Join(list, ", ")
}

func (w *writer) parse(ref string) (name.Reference, error) {
	return imageref.Remote(ref, w.opts.Insecure)
}

func (w *writer) keep(d v1.Hash, raw []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.manifests[digest.Digest(d.String())] = raw
}

func (w *writer) manifest(d digest.Digest) ([]byte, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	raw, ok := w.manifests[d]
	return raw, ok
}

// cached is where a fetched blob waits to be assembled.
func (w *writer) cached(d digest.Digest) string { return filepath.Join(w.cache, d.Encoded()) }

// have reports whether blob d is at hand: read while planning, in the cache,
// or in the previous bundle.
func (w *writer) have(prev *archive, d digest.Digest, size int64) bool {
	if _, ok := w.manifest(d); ok {
		return true
	}
	if fi, err := os.Stat(w.cached(d)); err == nil && fi.Size() == size {
		return true
	}
	_, ok := prev.blob(d, size)
	return ok
}

// fetch brings every blob of img not at hand into the cache, several at a
// time, each checked against its digest.
func (w *writer) fetch(ctx context.Context, prev *archive, img *Image) error {
	var g errgroup.Group
	g.SetLimit(w.opts.Jobs)
	// Every blob is tried, and every failure reported.
	errs := make([]error, len(img.blobs))
	for i, b := range img.blobs {
		d := digest.Digest(b.Digest.String())
		if w.have(prev, d, b.Size) {
			continue
		}
		g.Go(func() error {
			errs[i] = w.fetchBlob(ctx, img.repo, d, b.Size)
			return nil
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}

// fetchBlob downloads blob d into the cache, checking size and digest
// before it takes its name.
func (w *writer) fetchBlob(ctx context.Context, repo name.Repository, d digest.Digest, size int64) error {
	l, err := remote.Layer(repo.Digest(d.String()), append(w.remote, remote.WithContext(ctx))...)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(w.cache, ".fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	v := d.Verifier()
	n, err := io.Copy(io.MultiWriter(tmp, v, progressWriter{w.progress}), rc)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return fmt.Errorf("blob %s: %w", d, err)
	case n != size:
		return fmt.Errorf("blob %s: %d bytes, the manifest says %d", d, n, size)
	case !v.Verified():
		return fmt.Errorf("blob %s: content does not match its digest", d)
	}
	return os.Rename(tmp.Name(), w.cached(d))
}

type progressWriter struct{ p Progress }

func (p progressWriter) Write(b []byte) (int, error) {
	p.p.Fetched(int64(len(b)))
	return len(b), nil
}

// assemble writes the bundle of images next to out, verifies it, and puts
// it in out's place; then the cache goes.
func (w *writer) assemble(prev *archive, images []*Image) (*Contents, error) {
	tmp := w.out + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	now := w.opts.Clock().UTC().Truncate(time.Second)
	put := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := io.CopyN(tw, r, size)
		return err
	}
	putJSON := func(name string, v any) error {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return put(name, int64(len(data)), strings.NewReader(string(data)))
	}

	if err := putJSON(layoutFile, map[string]string{"imageLayoutVersion": "1.0.0"}); err != nil {
		return nil, err
	}
	contents := &Contents{Created: now}
	for _, p := range w.opts.Platforms {
		contents.Platforms = append(contents.Platforms, p.String())
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	written := map[digest.Digest]bool{}
	for _, img := range images {
		for _, b := range img.blobs {
			d := digest.Digest(b.Digest.String())
			if written[d] {
				continue
			}
			if err := w.copyBlob(put, prev, d, b.Size); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %w", img.Ref, err)
			}
			written[d] = true
		}
		root := img.blobs[len(img.blobs)-1]
		root.Annotations = map[string]string{cri.ImageNameAnnotation: img.Ref, ocispec.AnnotationRefName: img.Ref}
		index.Manifests = append(index.Manifests, root)
		contents.Images = append(contents.Images, *img)
	}
	slices.SortFunc(contents.Images, func(a, b Image) int { return strings.Compare(a.Ref, b.Ref) })
	if err := putJSON(indexFile, index); err != nil {
		return nil, err
	}
	if err := putJSON(ContentsFile, contents); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if _, err := Verify(tmp); err != nil {
		return nil, fmt.Errorf("the bundle written fails verification: %w", err)
	}
	if err := w.compress(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, w.out); err != nil {
		return nil, err
	}
	for d := range written {
		os.Remove(w.cached(d))
	}
	_ = os.Remove(w.cache) // only if empty: blobs of failed images stay for the next run
	return contents, nil
}

// compress replaces the verified bundle at tmp by its compression, when
// the options ask for one.
func (w *writer) compress(tmp string) error {
	c, ok := Compressions[w.opts.Compress]
	if !ok {
		return fmt.Errorf("compression %q: want gzip or zstd", w.opts.Compress)
	}
	if c == compression.Uncompressed {
		return nil
	}
	in, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(tmp), filepath.Base(tmp)+".z-*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	cw, err := compression.CompressStream(out, c)
	if err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(cw, in); err != nil {
		out.Close()
		return fmt.Errorf("compress the bundle: %w", err)
	}
	if err := cw.Close(); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(out.Name(), tmp)
}

// copyBlob writes blob d into the bundle from wherever it is at hand. Its
// digest is checked once, by the verification of the whole bundle.
func (w *writer) copyBlob(put func(string, int64, io.Reader) error, prev *archive, d digest.Digest, size int64) error {
	var src io.Reader
	if raw, ok := w.manifest(d); ok {
		src = bytes.NewReader(raw)
	} else if r, ok := prev.blob(d, size); ok {
		src = r
	} else {
		f, err := os.Open(w.cached(d))
		if err != nil {
			return fmt.Errorf("blob %s is neither fetched nor in the previous bundle: %w", d, err)
		}
		defer f.Close()
		src = f
	}
	if err := put(blobDir+d.Encoded(), size, src); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	return nil
}

type silent struct{}

func (silent) Planned(int, int64, int64) {}
func (silent) Fetched(int64)             {}
func (silent) ImageDone(string, error)   {}
