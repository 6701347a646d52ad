// Package imageplan reads the ImagePlans that NodeImageSets name: the
// images a NodeImageSet asks for are its plan's and its own spec.images
// (see prepullv1.NodeImageSetSpec.Planned). Plans never change, so what was
// read once is kept by name.
package imageplan

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// Reader reads plans through a client and keeps the last ones it read.
type Reader struct {
	r    client.Reader
	keep int

	mu     sync.Mutex
	byName map[string]*prepullv1.ImagePlan
	order  []string
}

// NewReader reads plans with r and keeps the keep most recently read.
func NewReader(r client.Reader, keep int) *Reader {
	return &Reader{r: r, keep: max(keep, 1), byName: map[string]*prepullv1.ImagePlan{}}
}

// Get is the plan name, read once. The caller does not change it.
func (p *Reader) Get(ctx context.Context, name string) (*prepullv1.ImagePlan, error) {
	p.mu.Lock()
	if plan, ok := p.byName[name]; ok {
		p.mu.Unlock()
		return plan, nil
	}
	p.mu.Unlock()
	plan := &prepullv1.ImagePlan{}
	if err := p.r.Get(ctx, client.ObjectKey{Name: name}, plan); err != nil {
		return nil, fmt.Errorf("read image plan %s: %w", name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.byName[name]; !ok {
		p.byName[name] = plan
		p.order = append(p.order, name)
		for len(p.order) > p.keep {
			delete(p.byName, p.order[0])
			p.order = p.order[1:]
		}
	}
	return plan, nil
}

// Spec sets set.Spec.Images to every image set asks for, its plan's
// included. This is what the agent reads.
func (p *Reader) Spec(ctx context.Context, set *prepullv1.NodeImageSet) error {
	if set.Spec.Plan == "" {
		return nil
	}
	plan, err := p.Get(ctx, set.Spec.Plan)
	if err != nil {
		return fmt.Errorf("NodeImageSet %s: %w", set.Name, err)
	}
	set.Spec.Images = set.Spec.Planned(plan.DeepCopy())
	return nil
}

// Expand does what Spec does, and sets set.Status.Images to a report of
// every image the status covers: those of its plan that the agent left out,
// as present as asked, included. This is what readers of a node's state
// read.
func (p *Reader) Expand(ctx context.Context, set *prepullv1.NodeImageSet) error {
	if err := p.Spec(ctx, set); err != nil {
		return err
	}
	var left []prepullv1.NodeImageStatus
	err := p.LeftOut(ctx, set, func(e *prepullv1.NodeImage, source prepullv1.ImageFetchSource) {
		st := e.PresentAsAsked()
		st.Source = source
		left = append(left, st)
	})
	if err != nil || left == nil {
		return err
	}
	set.Status.Images = append(set.Status.Images, left...)
	slices.SortFunc(set.Status.Images, func(a, b prepullv1.NodeImageStatus) int { return strings.Compare(a.Image, b.Image) })
	return nil
}

// LeftOut calls fn, in the order of their names, for each image of the
// plan set's status names that the status does not list (present as
// asked), with its source from status.planSources ("" when not known).
// It reads no copy of the plan's images: for readers of many nodes.
func (p *Reader) LeftOut(ctx context.Context, set *prepullv1.NodeImageSet, fn func(e *prepullv1.NodeImage, source prepullv1.ImageFetchSource)) error {
	if set.Status.Plan == "" {
		return nil
	}
	plan, err := p.Get(ctx, set.Status.Plan)
	if apierrors.IsNotFound(err) {
		// The plan is gone, which happens only once no node names it: the
		// agent reports against its new plan soon.
		return nil
	}
	if err != nil {
		return fmt.Errorf("status of NodeImageSet %s: %w", set.Name, err)
	}
	listed := make(map[string]bool, len(set.Status.Images))
	for _, st := range set.Status.Images {
		listed[st.Image] = true
	}
	var left []*prepullv1.NodeImage
	for i := range plan.Spec.Images {
		if e := &plan.Spec.Images[i]; !listed[e.Image] {
			left = append(left, e)
		}
	}
	slices.SortFunc(left, func(a, b *prepullv1.NodeImage) int { return strings.Compare(a.Image, b.Image) })
	// planSources has a letter for each image left out, in the order of
	// their names, when the agent reported against this plan as it is.
	sources := set.Status.PlanSources
	for i, e := range left {
		var source prepullv1.ImageFetchSource
		if len(sources) == len(left) {
			source = prepullv1.PlanSource(sources[i])
		}
		fn(e, source)
	}
	return nil
}

// Expand does what Reader.Expand does, reading plans with r: for one-off
// readers (kubectl prepull, tests).
func Expand(ctx context.Context, r client.Reader, set *prepullv1.NodeImageSet) error {
	return NewReader(r, 2).Expand(ctx, set)
}
