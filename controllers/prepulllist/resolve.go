package prepulllist

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
)

// A list's side of tag resolution: each of its images with the digest it is
// handed (tags.go keeps the tags' records).

// resolve returns l's targets with their digests, the images' status, the
// images waiting for a node to resolve them (and what for), when a tag is
// next due, and a failure to record a resolution. Each tag's digest is its
// TagResolution's, shared by every list naming it; a failed resolution keeps
// the digest known before, so nodes keep what they have.
func (r *Reconciler) resolve(ctx context.Context, l *prepullv1.PrePullList, reader string, creds []pullsecret.Credential, nodes []*node, probeNode string) ([]target, []prepullv1.ImageResolution, map[string]string, time.Time, error) {
	now := r.Clock.Now()
	next := now.Add(prepullv1.DefaultRefresh)
	var (
		targets  []target
		images   []prepullv1.ImageResolution
		errs     []error
		awaiting = map[string]string{}
	)
	names := imagesOf(l)
	wants, bad := make([]want, len(names)), make([]error, len(names))
	tags := map[string]*tagResult{}
	for i, image := range names {
		wants[i], bad[i] = parseWant(image)
		if bad[i] == nil && wants[i].Digest == "" {
			tags[wants[i].Tag] = &tagResult{}
		}
	}
	r.resolveTags(ctx, l, tags, reader, creds, nodes, probeNode)
	for i, image := range names {
		res := prepullv1.ImageResolution{Image: image}
		w := wants[i]
		if bad[i] != nil {
			res.Message = bad[i].Error()
			images = append(images, res)
			continue
		}
		res.Warning = w.advice
		t := target{want: w}
		if w.Digest != "" {
			t.digest = w.Digest
		} else {
			tr := tags[w.Tag]
			if tr.err != nil {
				errs = append(errs, tr.err)
			}
			next = minTime(next, tr.due)
			tr.apply(l, image, reader, probeNode, &t, &res)
			if t.probe && t.digest == "" {
				awaiting[image] = res.Message
			}
		}
		res.Digest = t.digest
		targets = append(targets, t)
		images = append(images, res)
	}
	return targets, images, awaiting, next, errors.Join(errs...)
}

// apply sets what tr says of image, a tag l names, on its target t and its
// resolution res: the tag's digest if reader read it (what l had, else),
// and for a tag resolved on a node or from an archive, what its probe waits
// for.
func (tr *tagResult) apply(l *prepullv1.PrePullList, image, reader, probeNode string, t *target, res *prepullv1.ImageResolution) {
	if rec := tr.rec; rec != nil && readable(rec, reader) {
		t.digest, res.ResolvedAt = rec.Status.Digest, rec.Status.ResolvedAt
	} else {
		// Not read with l's own credentials yet: what l had.
		old := resolutionOf(l.Status.Images, image)
		t.digest, res.ResolvedAt = old.Digest, old.ResolvedAt
	}
	res.Message = tr.failure
	if tr.pol.source == prepullv1.SourceRegistry {
		return
	}
	t.probe = true
	if tr.pol.source == prepullv1.SourceNode && res.ResolvedAt != nil && t.digest != "" {
		due := metav1.NewTime(nextRefresh(res.ResolvedAt.Time, tr.pol.refresh))
		t.resolveAfter = &due
	}
	if t.digest == "" {
		res.Message = probeWait(l, probeNode, t.want.Tag)
	}
}

// tagResult is what resolveTag returned for one tag.
type tagResult struct {
	rec *prepullv1.TagResolution
	pol tagUse
	due time.Time
	err error
	// failure is the list's reader's last failure to read the tag.
	failure string
}

// resolveWorkers is how many of a list's tags are resolved at once: a
// refresh of many tags is not a sequence of registry round trips and
// record writes.
const resolveWorkers = 8

// resolveTags brings each of tags, which l names, up to date (resolveTag),
// several at a time, and records each one's result in tags.
func (r *Reconciler) resolveTags(ctx context.Context, l *prepullv1.PrePullList, tags map[string]*tagResult, reader string, creds []pullsecret.Credential, nodes []*node, probeNode string) {
	var g errgroup.Group
	g.SetLimit(resolveWorkers)
	for tag, res := range tags {
		g.Go(func() error {
			res.rec, res.pol, res.due, res.err = r.resolveTag(ctx, l, tag, reader, creds, nodes, probeNode)
			if f, ok := r.tags.failure(tag, reader); ok {
				res.failure = f.msg
			}
			return nil
		})
	}
	_ = g.Wait()
}
