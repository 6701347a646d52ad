package bundle

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/containerd/containerd/v2/pkg/archive/compression"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/verify"
)

// Loaded is what Load did for one wanted reference.
type Loaded struct {
	// Digest is the digest the reference now names.
	Digest string
	// Err says why the reference could not be made.
	Err error
	// Signature is what checking its signatures in the bundle found, when
	// Load was asked to.
	Signature *verify.Result
}

// Verification is how Load checks the signatures a bundle holds.
type Verification struct {
	// Keys are the keys a signature must verify with.
	Keys verify.Keys
	// Audit imports an image whose signature does not verify (its Loaded
	// says so); otherwise such an image is not imported.
	Audit bool
	// MaxBytes bounds the decompressed copy, in the temporary directory,
	// that a compressed bundle is verified from; 0 bounds it only by its
	// ratio to the bundle's size.
	MaxBytes int64
}

// Load imports into store, from the archive at path, the images that
// wanted names. A digest reference ("repo@sha256:…") is made for the
// archive's image with that digest; a tag reference for the image the
// archive names by that tag, together with the digest reference of its
// repository, as a pull makes them. Nothing else in the archive is named. It
// returns what became of each wanted reference; an error means the archive
// itself could not be read, and then nothing was named.
//
// With v, the whole bundle is verified first, and each wanted image's
// signatures in it are checked against v's keys: one that does not verify
// gets a *verify.Error and is not imported, unless v says Audit.
func Load(ctx context.Context, store cri.Store, path string, wanted []string, v *Verification) (map[string]Loaded, error) {
	return loadChecked(ctx, store, path, wanted, v, nil)
}

// loadChecked is Load, asking claim (when not nil) before a tag is made to
// name an image.
func loadChecked(ctx context.Context, store cri.Store, path string, wanted []string, v *Verification, claim func(context.Context, string, string) error) (map[string]Loaded, error) {
	if v == nil {
		return load(ctx, store, path, wanted, claim)
	}
	checked, err := checkSignatures(path, wanted, v)
	if err != nil {
		return nil, err
	}
	importable := slices.DeleteFunc(slices.Clone(wanted), func(w string) bool {
		c, ok := checked[w]
		return ok && !c.Signature.Verified && !v.Audit
	})
	out := map[string]Loaded{}
	if len(importable) > 0 {
		if out, err = load(ctx, store, path, importable, claim); err != nil {
			return nil, err
		}
	}
	for w, c := range checked {
		l, imported := out[w]
		if !imported {
			l = Loaded{Digest: c.Digest, Err: c.Signature.Err()}
		}
		l.Signature = c.Signature
		out[w] = l
	}
	return out, nil
}

// load is Load without checking signatures, asking claim as loadChecked.
func load(ctx context.Context, store cri.Store, path string, wanted []string, claim func(context.Context, string, string) error) (map[string]Loaded, error) {
	byDigest := map[string][]string{} // digest -> wanted digest references
	byTag := map[string]string{}      // tag reference -> wanted reference
	out := map[string]Loaded{}
	seen := map[string]bool{}
	for _, w := range wanted {
		if seen[w] {
			continue
		}
		seen[w] = true
		r, err := imageref.Parse(w)
		switch {
		case err != nil:
			out[w] = Loaded{Err: err}
		case r.Digest != "":
			byDigest[r.Digest] = append(byDigest[r.Digest], w)
		default:
			byTag[r.Tag] = w
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	// A gzip or zstd archive is read through its decompression, found by
	// its content.
	r, err := compression.DecompressStream(f)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, err)
	}
	defer r.Close()
	// As openArchive's copy: at most maxRatio times its size.
	limit, err := decompressionLimit(f, 0)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	body := &capped{r: r, left: limit}
	matched := map[string][]string{} // digest -> wanted references it serves
	refused := map[string]Loaded{}   // wanted tag -> why claim kept it
	images, err := store.Import(ctx, body, func(name, digest string) []string {
		refs := slices.Clone(byDigest[digest])
		matched[digest] = append(matched[digest], byDigest[digest]...)
		if n, err := imageref.Parse(name); err == nil && n.Tag != "" {
			if w, ok := byTag[n.Tag]; ok {
				if claim != nil {
					if err := claim(ctx, w, digest); err != nil {
						refused[w] = Loaded{Digest: digest, Err: err}
						return slices.Compact(refs)
					}
				}
				refs = append(refs, w, n.Repo+"@"+digest)
				matched[digest] = append(matched[digest], w)
			}
		}
		return slices.Compact(refs)
	})
	if body.over {
		return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, errBomb(limit))
	}
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, err)
	}
	for _, img := range images {
		for _, w := range matched[img.Digest] {
			if prev, ok := out[w]; ok && prev.Err == nil {
				continue
			}
			out[w] = Loaded{Digest: img.Digest, Err: img.Err}
		}
	}
	maps.Copy(out, refused)
	for _, w := range wanted {
		if _, ok := out[w]; !ok {
			out[w] = Loaded{Err: fmt.Errorf("archive %s does not hold %s: %w", path, w, cri.ErrNotFound)}
		}
	}
	return out, nil
}

// checkSignatures verifies the bundle at path and checks, for each wanted
// reference whose image it holds, the image's signatures against keys.
func checkSignatures(path string, wanted []string, v *Verification) (map[string]Loaded, error) {
	keys := v.Keys
	a, err := openArchive(path, v.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, err)
	}
	defer a.Close()
	c, err := a.verify(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, err)
	}
	checked := map[string]Loaded{}
	for _, w := range wanted {
		r, err := imageref.Parse(w)
		if err != nil {
			continue
		}
		i := slices.IndexFunc(c.Images, func(img Image) bool {
			return (r.Digest != "" && img.Digest == r.Digest) || (r.Digest == "" && img.Ref == r.Tag)
		})
		if i < 0 {
			continue // Load says it is not there.
		}
		img := c.Images[i]
		sigs, err := a.signatures(img)
		if err != nil {
			return nil, fmt.Errorf("archive %s: %w: %w", path, ErrUnreadable, err)
		}
		res := verify.Check(sigs, img.Digest, keys)
		checked[w] = Loaded{Digest: img.Digest, Signature: &res}
	}
	return checked, nil
}
