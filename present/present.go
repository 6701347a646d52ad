// Package present makes an image that is on a node the way its owners want
// it there: every tag pods use names exactly that image, the owners' pins
// are on the image and on each tag, and both are verified through CRI, which
// is what the kubelet reads. The agent uses it for each NodeImageSet entry,
// and `prepull node apply` for each image of a list, so that the two leave a
// node in the same state.
package present

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"prepull.io/prepull/cri"
)

// Runtime is the node's runtime: CRI to read and verify, the Store to tag
// and pin.
type Runtime struct {
	Images cri.ImageService
	Store  cri.Store
	// PullTag, when set, makes a tag through CRI where the Store cannot
	// (a runtime that is not containerd): it pulls the tag from its
	// registry, and Make then checks that the tag names the wanted image.
	PullTag func(ctx context.Context, tag string) error
}

// ErrTagElsewhere means a tag made by pulling it names another image at the
// registry than the one wanted: the registry moved it.
var ErrTagElsewhere = errors.New("the tag names another image at the registry")

// Want is what one present image should be.
type Want struct {
	// Image is the reference the image is present by: its digest reference,
	// or a tag the node resolves.
	Image string
	// Tags must each name the image.
	Tags []string
	// Pinners are the owners whose pins must be on the image and on every
	// tag.
	Pinners []string
	// KeepOtherPins leaves alone the pins of owners not in Pinners; without
	// it, exactly the Pinners' pins are left.
	KeepOtherPins bool
	// Claim, when set, is asked before a tag that names another image is
	// moved to this one; its error leaves the tag where it is, and Make
	// fails with it.
	Claim func(ctx context.Context, tag string) error
}

// State is what Make found and left.
type State struct {
	// Digest is the image's manifest digest, "" when the runtime recorded
	// none for a tag.
	Digest string
	// Size is the image's size as the runtime counts it.
	Size uint64
	// Pinned is whether CRI reports the image pinned: when Make pinned it,
	// once CRI shows it (within a few seconds).
	Pinned bool
	// Owners are the owners now pinned on Image.
	Owners []string
	// Retagged are the tags Make pointed at the image.
	Retagged []string
	// Changed is whether Make tagged or pinned anything: CRI shows such a
	// change a moment later, so a caller that reports Pinned looks again.
	Changed bool
}

// Make brings img, the image w.Image names, to what w asks. Every tag and
// pin is attempted even when one fails; the error joins the failures.
func (rt Runtime) Make(ctx context.Context, img *cri.Image, w Want) (State, error) {
	st := State{Digest: cri.ManifestDigest(w.Image, img), Size: img.Size, Pinned: img.Pinned}
	// The image's record and its tags' are apart: the image's pins are
	// set while the tags are made.
	var pinErr error
	var pinChanged bool
	pinned := make(chan struct{})
	go func() {
		defer close(pinned)
		st.Owners, pinChanged, pinErr = rt.pins(ctx, w.Image, w.Pinners, w.KeepOtherPins)
	}()
	retagged, tagsChanged, errs := rt.tags(ctx, img, w)
	<-pinned
	st.Retagged, st.Changed = retagged, pinChanged || tagsChanged
	if err := errors.Join(append(errs, pinErr)...); err != nil {
		return st, err
	}
	return st, rt.verify(ctx, img, w, &st)
}

// verify waits until CRI, which the kubelet reads, shows what Make did: each
// tag it moved naming img, and img pinned where owners pinned it. CRI shows
// a new tag or pin a moment after it is made (the CRI plugin learns of it
// from the runtime's events), so a few seconds are allowed; Pinned says
// what CRI says. A tag shows its image's pin, so one look serves both.
func (rt Runtime) verify(ctx context.Context, img *cri.Image, w Want, st *State) error {
	wantPin := len(w.Pinners) > 0 && !st.Pinned
	for _, tag := range st.Retagged {
		ts, err := shows(ctx, rt.Images, tag, img.ID, wantPin)
		if err != nil {
			return fmt.Errorf("verify tag %s: %w", tag, err)
		}
		if ts.ID != img.ID {
			return fmt.Errorf("verify tag %s: names image %s, want %s", tag, ts.ID, img.ID)
		}
		st.Pinned = st.Pinned || ts.Pinned
		wantPin = false
	}
	if wantPin {
		is, err := shows(ctx, rt.Images, w.Image, img.ID, true)
		st.Pinned = err == nil && is.Pinned
	}
	return nil
}

// shows asks CRI for ref until it names image id, and shows it pinned when
// pinned is asked, allowing a few seconds; it returns what CRI last said.
func shows(ctx context.Context, images cri.ImageService, ref, id string, pinned bool) (*cri.Image, error) {
	var img *cri.Image
	var err error
	cri.Soon(ctx, func(ctx context.Context) bool {
		img, err = images.ImageStatus(ctx, ref)
		if err != nil {
			return !errors.Is(err, cri.ErrNotFound)
		}
		return img.ID == id && (img.Pinned || !pinned)
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return img, err
}

// tags points every tag of w that does not name img at it, and puts the
// owners' pins on each tag. It returns the tags it moved, and whether it
// changed any tag or pin.
func (rt Runtime) tags(ctx context.Context, img *cri.Image, w Want) ([]string, bool, []error) {
	var retagged []string
	var errs []error
	changed := false
	for _, tag := range w.Tags {
		ts, err := rt.Images.ImageStatus(ctx, tag)
		switch {
		case err == nil && ts.ID == img.ID:
		case err != nil && !errors.Is(err, cri.ErrNotFound):
			errs = append(errs, err)
		default:
			if err == nil && w.Claim != nil {
				if err := w.Claim(ctx, tag); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			created, err := rt.makeTag(ctx, img, tag, w)
			if err != nil {
				errs = append(errs, err)
				break
			}
			retagged, changed = append(retagged, tag), true
			if created {
				// A new record: the Store made it with exactly the pins.
				continue
			}
		}
		_, pinChanged, err := rt.pins(ctx, tag, w.Pinners, w.KeepOtherPins)
		if err != nil {
			errs = append(errs, err)
		}
		changed = changed || pinChanged
	}
	return retagged, changed, errs
}

// makeTag points tag at img through the Store, or else by pulling the tag
// through CRI, which must then name img. It reports whether the Store made
// the tag's record anew, pinned for exactly w's pinners.
func (rt Runtime) makeTag(ctx context.Context, img *cri.Image, tag string, w Want) (bool, error) {
	created, err := rt.Store.Tag(ctx, tag, w.Image, w.Pinners...)
	if !errors.Is(err, cri.ErrUnsupported) || rt.PullTag == nil {
		return created, err
	}
	if perr := rt.PullTag(ctx, tag); perr != nil {
		return false, fmt.Errorf("tag %s: %w; pulling the tag through CRI failed: %w", tag, err, perr)
	}
	ts, serr := cri.StatusSoon(ctx, rt.Images, tag)
	switch {
	case serr != nil:
		return false, fmt.Errorf("tag %s, pulled through CRI: %w", tag, serr)
	case ts.ID != img.ID:
		return false, fmt.Errorf("tag %s, pulled through CRI because %w: %w: it names image %s, not %s", tag, err, ErrTagElsewhere, ts.ID, img.ID)
	}
	return false, nil
}

// pins puts each of pinners' pins on ref and, unless keepOthers, takes off
// every other owner's. It returns the owners left on ref and whether it
// changed any.
func (rt Runtime) pins(ctx context.Context, ref string, pinners []string, keepOthers bool) ([]string, bool, error) {
	owners, changed, err := rt.Store.SetPins(ctx, ref, pinners, keepOthers)
	switch {
	case errors.Is(err, cri.ErrUnsupported) && len(pinners) == 0:
		// No pin wanted, and the runtime has none of prepull's.
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("pin %s for %s: %w", ref, strings.Join(pinners, ", "), err)
	}
	return owners, changed, nil
}

// Release takes every pin off refs (an image and its tags) and, when
// remove, removes the image refs[0] names, if it is prepull's to remove:
// prepull brought it onto the node (cri.Provenance), and no container uses
// it. It returns, when remove asked and the image stays, why. An image
// already gone is no error; a pin that cannot be taken off keeps the image.
func (rt Runtime) Release(ctx context.Context, refs []string, remove bool) (kept string, err error) {
	var errs []error
	for _, ref := range refs {
		if _, _, err := rt.pins(ctx, ref, nil, false); err != nil && !errors.Is(err, cri.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if !remove || len(errs) > 0 || len(refs) == 0 {
		return "", errors.Join(errs...)
	}
	if kept, err := rt.notOurs(ctx, refs[0]); kept != "" || err != nil {
		return kept, err
	}
	return "", rt.Images.RemoveImage(ctx, refs[0])
}

// notOurs says why the image ref names is not prepull's to remove, or ""
// when it is (or is gone).
func (rt Runtime) notOurs(ctx context.Context, ref string) (string, error) {
	p, ok := rt.Store.(cri.Provenance)
	if !ok {
		return "the runtime keeps no record of who brought an image, so prepull leaves it", nil
	}
	brought, err := p.Brought(ctx, ref)
	switch {
	case errors.Is(err, cri.ErrNotFound):
		return "", nil
	case err != nil:
		return "", err
	case !brought:
		return "prepull did not bring it onto the node (the kubelet or another tool did)", nil
	}
	lister, ok := rt.Images.(cri.ContainerLister)
	if !ok {
		return "", nil
	}
	img, err := rt.Images.ImageStatus(ctx, ref)
	if errors.Is(err, cri.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	used, err := lister.ImagesInUse(ctx)
	if err != nil {
		return "", err
	}
	if used[img.ID] || used[ref] {
		return "a container on the node uses it", nil
	}
	return "", nil
}
