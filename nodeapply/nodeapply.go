// Package nodeapply makes the images of PrePullLists present, tagged and
// pinned on one node's runtime, once, with no API server: for node
// bootstrap and for baking machine images. It does what the agent does for
// one NodeImageSet entry, and records pins with the same owners ("namespace/
// name" of the list), so that an agent that later serves the node and is
// handed the same list keeps them.
package nodeapply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/present"
	"prepull.io/prepull/verify"
)

// Options configure Apply.
type Options struct {
	Images cri.ImageService
	Store  cri.Store
	// Archive is a bundle to import every image from; empty means each
	// list's own source: its archive, or the registries.
	Archive string
	// ArchiveSHA256, when set, is checked against Archive before import.
	ArchiveSHA256 string
	// ArchiveDir is what the archive paths of lists are relative to.
	ArchiveDir string
	// Archives is where archives of lists given by URL may be downloaded
	// from, and how much.
	Archives bundle.FetchPolicy
	// PullTimeout bounds one pull or one archive import.
	PullTimeout time.Duration
	// VerifyKeys, when set, are the keys an image's signature must verify
	// with before it is imported: the signatures a bundle holds are checked
	// with no registry in reach, and an image that does not verify is not
	// imported. An image that would be pulled from its registry fails.
	VerifyKeys verify.Keys
	// Credentials, when set, gives the credentials of an image's pull: the
	// node's kubelet credential provider plugins (package credprovider).
	Credentials NodeCredentials
}

// NodeCredentials finds the node's own credentials for an image.
type NodeCredentials interface {
	Auth(ctx context.Context, image string) (*cri.Auth, error)
}

// How an image came to be present.
const (
	HowPresent  = "present"
	HowPulled   = "pulled"
	HowImported = "imported"
)

// Result is what became of one image of one list.
type Result struct {
	// List is the list as an owner, "namespace/name".
	List string
	// Image is the image as the list names it.
	Image string
	// Digest is the manifest digest now present.
	Digest string
	// How is HowPresent (nothing to do), HowPulled or HowImported.
	How string
	// Pinned reports whether the list's pin is on the image.
	Pinned bool
	// Err says why the image is not present as asked.
	Err error
}

// entry is one image of one list, parsed.
type entry struct {
	list  string
	image string
	imageref.Ref
	retain  bool
	archive *bundle.Source
}

// ref is the reference the entry is made present by: its digest reference,
// else its tag.
func (e *entry) ref() string {
	if d := e.DigestRef(); d != "" {
		return d
	}
	return e.Tag
}

// Apply makes every image of lists present on the node, with its tag naming
// its digest, pinned for its list unless the list says Unpinned. An image
// that is present already is not fetched again, so a second Apply changes
// nothing. One image failing never stops the others: its Result says why.
func Apply(ctx context.Context, lists []prepullv1.PrePullList, opts Options) []Result {
	var entries []*entry
	results := map[*entry]*Result{}
	var out []*Result
	for i := range lists {
		l := &lists[i]
		owner := l.Namespace + "/" + l.Name
		for _, img := range l.Spec.Images {
			e, err := parse(owner, img.Image, l, opts)
			if err == nil && l.Spec.Verify != nil && len(opts.VerifyKeys) == 0 {
				err = fmt.Errorf("list %s has spec.verify: give the keys its images are signed with (--verify-key)", owner)
			}
			res := &Result{List: owner, Image: img.Image, Err: err}
			out = append(out, res)
			if err == nil {
				entries = append(entries, e)
				results[e] = res
			}
		}
	}

	// Imports: one per archive, naming every image wanted of it.
	byArchive := map[bundle.Source][]*entry{}
	for _, e := range entries {
		if e.archive != nil {
			if _, err := opts.Images.ImageStatus(ctx, e.ref()); err == nil {
				continue
			}
			byArchive[*e.archive] = append(byArchive[*e.archive], e)
		}
	}
	for src, es := range byArchive {
		importFrom(ctx, src, es, results, opts)
	}

	for _, e := range entries {
		res := results[e]
		if res.Err != nil {
			continue
		}
		res.Err = makePresent(ctx, e, res, opts)
	}
	final := make([]Result, 0, len(out))
	for _, r := range out {
		final = append(final, *r)
	}
	return final
}

func parse(owner, image string, l *prepullv1.PrePullList, opts Options) (*entry, error) {
	r, err := imageref.Parse(image)
	if err != nil {
		return nil, err
	}
	e := &entry{list: owner, image: image, Ref: r, retain: l.Spec.Retain != prepullv1.RetainUnpinned}
	switch {
	case opts.Archive != "":
		e.archive = &bundle.Source{Path: opts.Archive, SHA256: opts.ArchiveSHA256}
	case l.Spec.Source != nil && l.Spec.Source.Archive != nil:
		a := l.Spec.Source.Archive
		e.archive = &bundle.Source{Path: a.PathIn(opts.ArchiveDir), URL: a.URL, SHA256: a.SHA256}
	}
	return e, nil
}

// importFrom imports the entries es from the archive src, recording
// failures in their results.
func importFrom(ctx context.Context, src bundle.Source, es []*entry, results map[*entry]*Result, opts Options) {
	ctx, cancel := context.WithTimeout(ctx, opts.PullTimeout)
	defer cancel()
	var wanted []string
	for _, e := range es {
		wanted = append(wanted, e.ref())
	}
	var v *bundle.Verification
	if len(opts.VerifyKeys) > 0 {
		v = &bundle.Verification{Keys: opts.VerifyKeys}
	}
	loaded, err := bundle.Import(ctx, opts.Store, src, opts.Archives, "", wanted, v)
	if err != nil {
		for _, e := range es {
			results[e].Err = err
		}
		return
	}
	for _, e := range es {
		l := loaded[e.ref()]
		results[e].Err = l.Err
		if l.Err == nil {
			results[e].How = HowImported
			markBrought(ctx, opts.Store, e.ref(), prepullv1.FetchedFromArchive)
		}
	}
}

// markBrought records on the runtime that prepull brought the image ref
// names (node apply imports or pulls only what the node lacks), and from
// source, as the agent does: an agent's onDelete: Remove may remove only
// such images, and its status tells their source.
func markBrought(ctx context.Context, store cri.Store, ref string, source prepullv1.ImageFetchSource) {
	p, ok := store.(cri.Provenance)
	r, err := imageref.Parse(ref)
	if !ok || err != nil {
		return
	}
	// The record of the digest, as the agent's entries name images; a tag
	// alone has only its own.
	name := cmp.Or(r.DigestRef(), r.Tag)
	_ = p.MarkBrought(ctx, name)
	_ = p.MarkSource(ctx, name, string(source), "")
}

// makePresent pulls e unless present or imported, then makes it what its
// list wants: its tag naming its digest, pinned for its list unless the list
// says Unpinned. Pins of other owners stay: another list, or the agent,
// keeps its own.
func makePresent(ctx context.Context, e *entry, res *Result, opts Options) error {
	img, err := opts.Images.ImageStatus(ctx, e.ref())
	if errors.Is(err, cri.ErrNotFound) && res.How == HowImported {
		// The runtime shows an import a moment after it is made.
		img, err = cri.StatusSoon(ctx, opts.Images, e.ref())
	}
	switch {
	case err == nil:
		if res.How == "" {
			res.How = HowPresent
		}
	case errors.Is(err, cri.ErrNotFound) && e.archive == nil && len(opts.VerifyKeys) > 0:
		return fmt.Errorf("%s would be pulled from its registry: signatures are checked in a bundle (--archive, or the list's source.archive)", e.ref())
	case errors.Is(err, cri.ErrNotFound) && e.archive == nil:
		var auth *cri.Auth
		if opts.Credentials != nil {
			if auth, err = opts.Credentials.Auth(ctx, e.ref()); err != nil {
				return err
			}
		}
		pctx, cancel := context.WithTimeout(ctx, opts.PullTimeout)
		_, err = opts.Images.PullImage(pctx, e.ref(), auth)
		cancel()
		if err != nil {
			return err
		}
		res.How = HowPulled
		if img, err = cri.StatusSoon(ctx, opts.Images, e.ref()); err != nil {
			return err
		}
		markBrought(ctx, opts.Store, e.ref(), prepullv1.FetchedFromRegistry)
	default:
		return err
	}
	want := present.Want{Image: e.ref(), KeepOtherPins: true}
	if e.Tag != "" && e.Digest != "" {
		// tag@digest: the tag must name exactly the digest.
		want.Tags = []string{e.Tag}
	}
	if e.retain {
		want.Pinners = []string{e.list}
	}
	st, err := present.Runtime{Images: opts.Images, Store: opts.Store}.Make(ctx, img, want)
	res.Digest = st.Digest
	res.Pinned = e.retain && err == nil && st.Pinned
	return err
}
