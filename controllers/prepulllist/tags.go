package prepulllist

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
	"prepull.io/prepull/redact"
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
//
// A digest resolved at the registry is handed only to the lists whose own
// credentials (or anonymous access) read it there: its TagResolution keeps
// its readers, and a list of another reader asks the registry once, with
// its own credentials, before it is handed the digest. A failure is its
// reader's alone: it is kept here, not in the shared record, and the list
// keeps the digest it had.

// tagUse is how one list names a tag.
type tagUse struct {
	source  prepullv1.ResolutionSource
	refresh time.Duration
}

// tagStore holds one record per tag that lists name. It is the one
// writer of TagResolutions; a resolution it has not seen yet since it
// started is read from the cache, so a restart or a new leader resolves
// nothing again.
type tagStore struct {
	client.Client
	mu      sync.Mutex
	tags    map[string]*tagRec
	indexed bool
}

// tagRec is one tag: its TagResolution as last read or written, and how
// each list naming it names it.
//
// The resolution is the cache's object, and the controller's own newer
// write of it until the cache has it: read from the cache alone, a list
// reconciled right after a resolution would find the tag due and resolve
// it again. The uses repeat what the lists say, but as each list's last
// reconcile saw them: with the images its workloads use now (the cached
// list has them only once its status is written), and so that the tags a
// list stopped naming are known when its spec no longer says them.
type tagRec struct {
	res  *prepullv1.TagResolution
	uses map[types.NamespacedName]tagUse
	// failed are, by reader, its last failure to read the tag at the
	// registry, until it reads it.
	failed map[string]tagFailure
}

func newTagStore(c client.Client) *tagStore {
	return &tagStore{Client: c, tags: map[string]*tagRec{}}
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
	for tag, t := range s.tags {
		if _, ok := t.uses[list]; ok {
			if _, still := uses[tag]; !still {
				delete(t.uses, list)
				dropped = append(dropped, tag)
			}
		}
	}
	for tag, u := range uses {
		t := s.tags[tag]
		if t == nil {
			t = &tagRec{}
			s.tags[tag] = t
		}
		if t.uses == nil {
			t.uses = map[types.NamespacedName]tagUse{}
		}
		t.uses[list] = u
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
	var uses map[types.NamespacedName]tagUse
	if t := s.tags[tag]; t != nil {
		uses = t.uses
	}
	for _, u := range uses {
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
	t := s.tags[tag]
	if t == nil {
		return nil
	}
	return slices.Collect(maps.Keys(t.uses))
}

// get is tag's record, or nil when it has none yet.
func (s *tagStore) get(ctx context.Context, tag string) (*prepullv1.TagResolution, error) {
	s.mu.Lock()
	if t := s.tags[tag]; t != nil && t.res != nil {
		s.mu.Unlock()
		return t.res, nil
	}
	s.mu.Unlock()
	rec := &prepullv1.TagResolution{}
	err := s.Get(ctx, client.ObjectKey{Name: prepullv1.TagResolutionName(tag)}, rec)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the resolution of %s: %w", tag, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tags[tag]
	if t == nil {
		// No list names it any more.
		return rec, nil
	}
	if t.res == nil {
		t.res = rec
	}
	return t.res, nil
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
	if t := s.tags[tag]; t != nil {
		t.res = rec
	}
	s.mu.Unlock()
	return rec, nil
}

// collect deletes the records of tags that no list names any more.
func (s *tagStore) collect(ctx context.Context, tags []string) error {
	for _, tag := range tags {
		s.mu.Lock()
		t := s.tags[tag]
		named := t != nil && len(t.uses) > 0
		if !named {
			delete(s.tags, tag)
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

// resolutionRetry is how soon a failed resolution is tried again.
const resolutionRetry = 30 * time.Second

// resolveTag brings tag's TagResolution up to date as far as l can: at the
// registry when it is due and the registry wins, or from what l's probe node
// reported. It returns the record, how the tag is resolved for every list,
// when it is next due, and a failure to write the record. Lists whose digest
// it changed are woken.
func (r *Reconciler) resolveTag(ctx context.Context, l *prepullv1.PrePullList, tag, reader string, creds []pullsecret.Credential, nodes []*node, probeNode string) (*prepullv1.TagResolution, tagUse, time.Time, error) {
	now := r.Clock.Now()
	pol := r.tags.policy(tag)
	rec, err := r.tags.get(ctx, tag)
	if err != nil {
		return nil, pol, now.Add(resolutionRetry), err
	}
	rec, next, err := r.refreshTag(ctx, tag, rec, pol, reader, creds, nodes, probeNode)
	return rec, pol, next, err
}

// refreshTag resolves tag again when it is due under pol: from what the
// probe node reported, or at the registry with reader's credentials, which
// also happens when reader has not read the tag's digest there yet (the
// digest then gains a reader, or the tag moved), unless reader failed
// within resolutionRetry. A failure is reader's alone: the record stays.
func (r *Reconciler) refreshTag(ctx context.Context, tag string, rec *prepullv1.TagResolution, pol tagUse, reader string, creds []pullsecret.Credential, nodes []*node, probeNode string) (*prepullv1.TagResolution, time.Time, error) {
	now := r.Clock.Now()
	if pol.source != prepullv1.SourceRegistry {
		d, at := probedDigest(nodes, probeNode, tag)
		st, next := probed(rec, pol, d, at, now)
		if st == nil {
			return rec, next, nil
		}
		return r.record(ctx, tag, rec, *st, next)
	}
	due, next := registryDue(rec, pol, now)
	if !due && readable(rec, reader) {
		return rec, next, nil
	}
	if f, failed := r.tags.failure(tag, reader); failed && now.Before(f.at.Add(resolutionRetry)) {
		return rec, f.at.Add(resolutionRetry), nil
	}
	d, err := r.Resolver.Resolve(ctx, tag, creds)
	if err != nil {
		resolutions.WithLabelValues("failed").Inc()
		ctrl.LoggerFrom(ctx).Info("Tag resolution failed", "image", tag, "error", err.Error())
		r.tags.setFailure(tag, reader, tagFailure{at: now, msg: redact.Text(err.Error())})
		return rec, now.Add(resolutionRetry), nil
	}
	r.tags.setFailure(tag, reader, tagFailure{})
	resolutions.WithLabelValues("resolved").Inc()
	at := &metav1.Time{Time: now}
	st := prepullv1.TagResolutionStatus{Digest: d, Source: prepullv1.SourceRegistry, ResolvedAt: at, AttemptedAt: at, Readers: []string{reader}}
	if rec != nil && rec.Status.Source == prepullv1.SourceRegistry && rec.Status.Digest == d {
		st.Readers = withReader(rec.Status.Readers, reader)
		if !due {
			// A reader's first read, not a refresh: the refresh keeps its
			// schedule.
			st.ResolvedAt = rec.Status.ResolvedAt
		}
	}
	return r.record(ctx, tag, rec, st, nextRefresh(st.ResolvedAt.Time, pol.refresh))
}

// registryDue says whether a tag resolved at the registry under pol is to
// be asked again at now, and if not, when it is next due: when it has no
// resolution from the registry, or its refresh came.
func registryDue(rec *prepullv1.TagResolution, pol tagUse, now time.Time) (bool, time.Time) {
	if rec == nil {
		return true, now
	}
	st := &rec.Status
	if st.Source == prepullv1.SourceRegistry && st.ResolvedAt != nil {
		if next := nextRefresh(st.ResolvedAt.Time, pol.refresh); now.Before(next) {
			return false, next
		}
	}
	return true, now
}

// probed is the resolution of a tag resolved on a node (or from an archive)
// under pol, now that the probe node reported digest d pulled at at ("" for
// nothing yet): the new status, nil when the record stands, and when the
// tag is next due.
func probed(rec *prepullv1.TagResolution, pol tagUse, d string, at *metav1.Time, now time.Time) (*prepullv1.TagResolutionStatus, time.Time) {
	var st prepullv1.TagResolutionStatus
	if rec != nil {
		st = rec.Status
	}
	if d == "" || (st.Source == pol.source && st.ResolvedAt != nil && !st.ResolvedAt.Before(at)) {
		if st.ResolvedAt != nil && pol.source == prepullv1.SourceNode {
			return nil, nextRefresh(st.ResolvedAt.Time, pol.refresh)
		}
		return nil, now.Add(prepullv1.DefaultRefresh)
	}
	return &prepullv1.TagResolutionStatus{Digest: d, Source: pol.source, ResolvedAt: at}, now.Add(pol.refresh)
}

// record writes tag's new status and wakes every list naming the tag when
// its digest changed.
func (r *Reconciler) record(ctx context.Context, tag string, rec *prepullv1.TagResolution, st prepullv1.TagResolutionStatus, next time.Time) (*prepullv1.TagResolution, time.Time, error) {
	moved := rec == nil || rec.Status.Digest != st.Digest
	out, err := r.tags.put(ctx, tag, rec, st)
	if err != nil {
		return out, minTime(next, r.Clock.Now().Add(resolutionRetry)), err
	}
	if moved {
		r.wakeNow(r.tags.listsNaming(tag))
	}
	return out, next, nil
}

// probeWait says what a tag resolved on a node is waiting for.
func probeWait(l *prepullv1.PrePullList, probeNode, tag string) string {
	if probeNode == "" {
		return "no node is selected to resolve the tag on"
	}
	verb := "pull it and report its digest"
	if a := archiveOf(l); a != nil {
		verb = "import it from " + a.Location() + " and report its digest"
	}
	return fmt.Sprintf("waiting for node %s to %s: %s", probeNode, verb, tag)
}

// probedDigest is the digest the probe node reported for a tag entry, and
// when it pulled it.
func probedDigest(nodes []*node, probeNode, tag string) (string, *metav1.Time) {
	for _, n := range nodes {
		if n.name != probeNode {
			continue
		}
		if st := n.batched.find(tag); st != nil && st.phase == prepullv1.PhasePresent && st.extra != nil && st.extra.pulledAt != nil {
			return st.extra.digest, st.extra.pulledAt
		}
	}
	return "", nil
}

// nextRefresh is when a tag resolved at resolvedAt is due again.
func nextRefresh(resolvedAt time.Time, interval time.Duration) time.Time {
	if interval <= 0 {
		interval = prepullv1.DefaultRefresh
	}
	return resolvedAt.Add(interval)
}
