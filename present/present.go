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
	"slices"
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
	retagged, errs := rt.tag(ctx, img, w)
	st.Retagged, st.Changed = retagged, len(retagged) > 0
	for i, ref := range append([]string{w.Image}, w.Tags...) {
		owners, changed, err := rt.pins(ctx, ref, w.Pinners, w.KeepOtherPins)
		st.Changed = st.Changed || changed
		if err != nil {
			errs = append(errs, err)
		}
		if i == 0 {
			st.Owners = owners
		}
	}
	if err := errors.Join(errs...); err != nil {
		return st, err
	}
	if len(w.Pinners) > 0 && !st.Pinned {
		// CRI, which the kubelet reads, shows a new pin a moment after it
		// is set: Pinned says what CRI says.
		st.Pinned = pinnedSoon(ctx, rt.Images, w.Image)
	}
	// What was retagged must answer through CRI with the image the
	// reference answers with; the other tags were just seen to.
	for _, tag := range retagged {
		ts, err := cri.StatusSoon(ctx, rt.Images, tag)
		if err != nil {
			return st, fmt.Errorf("verify tag %s: %w", tag, err)
		}
		if ts.ID != img.ID {
			return st, fmt.Errorf("verify tag %s: names image %s, want %s", tag, ts.ID, img.ID)
		}
	}
	return st, nil
}

// pinnedSoon reports whether CRI shows the image ref names pinned, allowing
// it a few seconds.
func pinnedSoon(ctx context.Context, images cri.ImageService, ref string) bool {
	return cri.Soon(ctx, func(ctx context.Context) bool {
		img, err := images.ImageStatus(ctx, ref)
		return err == nil && img.Pinned
	})
}

// tag points every tag of w that does not name img at it, and returns the
// tags it moved.
func (rt Runtime) tag(ctx context.Context, img *cri.Image, w Want) ([]string, []error) {
	var retagged []string
	var errs []error
	for _, tag := range w.Tags {
		ts, err := rt.Images.ImageStatus(ctx, tag)
		if err == nil && ts.ID == img.ID {
			continue
		}
		if err != nil && !errors.Is(err, cri.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		if err := rt.makeTag(ctx, img, tag, w); err != nil {
			errs = append(errs, err)
			continue
		}
		retagged = append(retagged, tag)
	}
	return retagged, errs
}

// makeTag points tag at img through the Store, or else by pulling the tag
// through CRI, which must then name img.
func (rt Runtime) makeTag(ctx context.Context, img *cri.Image, tag string, w Want) error {
	err := rt.Store.Tag(ctx, tag, w.Image, w.Pinners...)
	if !errors.Is(err, cri.ErrUnsupported) || rt.PullTag == nil {
		return err
	}
	if perr := rt.PullTag(ctx, tag); perr != nil {
		return fmt.Errorf("tag %s: %w; pulling the tag through CRI failed: %w", tag, err, perr)
	}
	ts, serr := cri.StatusSoon(ctx, rt.Images, tag)
	switch {
	case serr != nil:
		return fmt.Errorf("tag %s, pulled through CRI: %w", tag, serr)
	case ts.ID != img.ID:
		return fmt.Errorf("tag %s, pulled through CRI because %w: %w: it names image %s, not %s", tag, err, ErrTagElsewhere, ts.ID, img.ID)
	}
	return nil
}

// pins puts each of pinners' pins on ref and, unless keepOthers, takes off
// every other owner's. It returns the owners left on ref and whether it
// changed any.
func (rt Runtime) pins(ctx context.Context, ref string, pinners []string, keepOthers bool) ([]string, bool, error) {
	have, err := rt.Store.Owners(ctx, ref)
	if errors.Is(err, cri.ErrUnsupported) && len(pinners) == 0 {
		// No pin wanted, and the runtime has none of prepull's.
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pin %s for %s: %w", ref, strings.Join(pinners, ", "), err)
	}
	changed := false
	var errs []error
	var now []string
	for _, o := range pinners {
		if !slices.Contains(have, o) {
			if err := rt.Store.Pin(ctx, ref, o); err != nil {
				errs = append(errs, err)
				continue
			}
			changed = true
		}
		now = append(now, o)
	}
	for _, o := range have {
		switch {
		case slices.Contains(pinners, o):
		case keepOthers:
			now = append(now, o)
		default:
			if err := rt.Store.Unpin(ctx, ref, o); err != nil {
				errs = append(errs, err)
				now = append(now, o)
				continue
			}
			changed = true
		}
	}
	slices.Sort(now)
	return slices.Compact(now), changed, errors.Join(errs...)
}

// Release takes every pin off refs (an image and its tags) and, when
// remove, removes the image refs[0] names. An image already gone is no
// error; a pin that cannot be taken off keeps the image.
func (rt Runtime) Release(ctx context.Context, refs []string, remove bool) error {
	var errs []error
	for _, ref := range refs {
		if _, _, err := rt.pins(ctx, ref, nil, false); err != nil && !errors.Is(err, cri.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if remove && len(errs) == 0 && len(refs) > 0 {
		if err := rt.Images.RemoveImage(ctx, refs[0]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
