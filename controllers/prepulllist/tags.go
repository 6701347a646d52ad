package prepulllist

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// A tag is resolved once for the whole cluster: one TagResolution per
// distinct tag reference that any list names, shared by every list that
// names it. Lists read their digests from it, so two lists naming one tag
// always hand nodes the same digest, and a tag that moves moves for all of
// them at once.
//
// Where the lists naming a tag disagree on how to resolve it, the registry
// wins over a node and a node over an archive: a registry answer is the
// tag's own, asked once for the cluster; a node's pull goes through that
// node's mirrors; an archive holds what it held when it was written. The
// refresh runs on the shortest refreshInterval among the lists naming it.

// tagUse is how one list names a tag.
type tagUse struct {
	source  prepullv1.ResolutionSource
	refresh time.Duration
}

// tagStore holds the TagResolutions and which lists name each tag. It is
// the one writer of TagResolutions; a record it has not seen yet since it
// started is read from the cache, so a restart or a new leader resolves
// nothing again.
type tagStore struct {
	client.Client
	mu      sync.Mutex
	recs    map[string]*prepullv1.TagResolution
	uses    map[string]map[types.NamespacedName]tagUse
	indexed bool
}

func newTagStore(c client.Client) *tagStore {
	return &tagStore{Client: c, recs: map[string]*prepullv1.TagResolution{}, uses: map[string]map[types.NamespacedName]tagUse{}}
}

// usesOf is how l names each of its tags.
func usesOf(l *prepullv1.PrePullList) map[string]tagUse {
	src := prepullv1.SourceRegistry
	switch {
	case archiveOf(l) != nil:
		src = prepullv1.SourceArchive
	case l.Spec.Resolution == prepullv1.ResolveOnNode:
		src = prepullv1.SourceNode
	}
	refresh := prepullv1.DefaultRefresh
	if l.Spec.RefreshInterval != nil && l.Spec.RefreshInterval.Duration > 0 {
		refresh = l.Spec.RefreshInterval.Duration
	}
	out := map[string]tagUse{}
	for _, img := range imagesOf(l) {
		w, err := parseWant(img)
		if err != nil || w.Digest != "" {
			continue
		}
		out[w.Tag] = tagUse{source: src, refresh: refresh}
	}
	return out
}

// index records every list of the cache once, so that the first list to be
// reconciled after a start already knows how the others name its tags.
func (s *tagStore) index(ctx context.Context) error {
	s.mu.Lock()
	done := s.indexed
	s.mu.Unlock()
	if done {
		return nil
	}
	var lists prepullv1.PrePullListList
	if err := s.List(ctx, &lists); err != nil {
		return fmt.Errorf("list PrePullLists: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range lists.Items {
		l := &lists.Items[i]
		if l.DeletionTimestamp.IsZero() {
			s.setUses(client.ObjectKeyFromObject(l), usesOf(l))
		}
	}
	s.indexed = true
	return nil
}

// use records how list names its tags now, and returns the tags it no
// longer names.
func (s *tagStore) use(list types.NamespacedName, uses map[string]tagUse) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setUses(list, uses)
}

func (s *tagStore) setUses(list types.NamespacedName, uses map[string]tagUse) []string {
	var dropped []string
	for tag, by := range s.uses {
		if _, ok := by[list]; ok {
			if _, still := uses[tag]; !still {
				delete(by, list)
				dropped = append(dropped, tag)
				if len(by) == 0 {
					delete(s.uses, tag)
				}
			}
		}
	}
	for tag, u := range uses {
		if s.uses[tag] == nil {
			s.uses[tag] = map[types.NamespacedName]tagUse{}
		}
		s.uses[tag][list] = u
	}
	return dropped
}

// rank orders the sources when lists naming one tag disagree.
var rank = map[prepullv1.ResolutionSource]int{prepullv1.SourceRegistry: 3, prepullv1.SourceNode: 2, prepullv1.SourceArchive: 1}

// policy is how tag is resolved for every list: the winning source and the
// shortest refresh among the lists that resolve it that way.
func (s *tagStore) policy(tag string) tagUse {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p tagUse
	for _, u := range s.uses[tag] {
		switch {
		case rank[u.source] > rank[p.source]:
			p = u
		case u.source == p.source && u.refresh < p.refresh:
			p.refresh = u.refresh
		}
	}
	if p.refresh == 0 {
		p.refresh = prepullv1.DefaultRefresh
	}
	return p
}

// listsNaming are the lists that name tag.
func (s *tagStore) listsNaming(tag string) []types.NamespacedName {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]types.NamespacedName, 0, len(s.uses[tag]))
	for l := range s.uses[tag] {
		out = append(out, l)
	}
	return out
}

// get is tag's record, or nil when it has none yet.
func (s *tagStore) get(ctx context.Context, tag string) (*prepullv1.TagResolution, error) {
	s.mu.Lock()
	rec, ok := s.recs[tag]
	s.mu.Unlock()
	if ok {
		return rec, nil
	}
	rec = &prepullv1.TagResolution{}
	err := s.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(tag)}, rec)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the resolution of %s: %w", tag, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.recs[tag]; ok {
		return cur, nil
	}
	s.recs[tag] = rec
	return rec, nil
}

// put writes tag's record with st, creating it.
func (s *tagStore) put(ctx context.Context, tag string, old *prepullv1.TagResolution, st prepullv1.TagResolutionStatus) (*prepullv1.TagResolution, error) {
	rec := &prepullv1.TagResolution{
		ObjectMeta: metav1.ObjectMeta{Name: prepullv1.TagResolutionName(tag)},
		Spec:       prepullv1.TagResolutionSpec{Image: tag},
		Status:     st,
	}
	var err error
	if old == nil {
		err = s.Create(ctx, rec)
		if apierrors.IsAlreadyExists(err) {
			cur := &prepullv1.TagResolution{}
			if err = s.Get(ctx, client.ObjectKeyFromObject(rec), cur); err == nil {
				rec.ResourceVersion = cur.ResourceVersion
				err = s.Update(ctx, rec)
			}
		}
	} else {
		rec.ResourceVersion = old.ResourceVersion
		err = s.Update(ctx, rec)
	}
	if err != nil {
		return old, fmt.Errorf("write the resolution of %s: %w", tag, err)
	}
	s.mu.Lock()
	s.recs[tag] = rec
	s.mu.Unlock()
	return rec, nil
}

// collect deletes the records of tags that no list names any more.
func (s *tagStore) collect(ctx context.Context, tags []string) error {
	for _, tag := range tags {
		s.mu.Lock()
		named := len(s.uses[tag]) > 0
		if !named {
			delete(s.recs, tag)
		}
		s.mu.Unlock()
		if named {
			continue
		}
		rec := &prepullv1.TagResolution{ObjectMeta: metav1.ObjectMeta{Name: prepullv1.TagResolutionName(tag)}}
		if err := s.Delete(ctx, rec); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the resolution of %s: %w", tag, err)
		}
	}
	return nil
}
