package nodeimageset

import (
	"context"
	"slices"
	"sync"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
)

// noteArchives records, by archive, the spec images that come from it, so
// that one import of an archive names every image the node wants of it.
func (r *Reconciler) noteArchives(set *prepullv1.NodeImageSet) {
	wants := map[string][]string{}
	for i := range set.Spec.Images {
		e := &set.Spec.Images[i]
		if e.Archive != nil && len(e.ActiveOwners()) > 0 {
			wants[e.Archive.SHA256] = append(wants[e.Archive.SHA256], e.Image)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.archiveWants = wants
	for sha := range r.loaded {
		if _, ok := wants[sha]; !ok {
			delete(r.loaded, sha)
		}
	}
}

// archiveLock is the lock of one archive's imports.
func (r *Reconciler) archiveLock(sha string) *sync.Mutex {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.archiveLocks == nil {
		r.archiveLocks = map[string]*sync.Mutex{}
	}
	l, ok := r.archiveLocks[sha]
	if !ok {
		l = &sync.Mutex{}
		r.archiveLocks[sha] = l
	}
	return l
}

// importArchive makes e present from its archive: it fetches the archive,
// checks its SHA-256, and imports every image the node wants of it, unless
// an import of the same archive for another entry already made e.
func (r *Reconciler) importArchive(ctx context.Context, e *entry) error {
	sha := e.Archive.SHA256
	lock := r.archiveLock(sha)
	lock.Lock()
	defer lock.Unlock()

	r.mu.Lock()
	done := r.loaded[sha][e.Image]
	wanted := slices.Clone(r.archiveWants[sha])
	r.mu.Unlock()
	if done {
		if _, err := r.Images.ImageStatus(ctx, e.Image); err == nil {
			return nil
		}
	}
	if !slices.Contains(wanted, e.Image) {
		wanted = append(wanted, e.Image)
	}

	src := bundle.Source{Path: e.Archive.PathIn(r.ArchiveDir), URL: e.Archive.URL, SHA256: sha}
	loaded, err := bundle.Import(ctx, r.Store, src, r.HTTPClient, r.DownloadDir, wanted, nil)
	if err != nil {
		return err
	}
	r.mu.Lock()
	if r.loaded == nil {
		r.loaded = map[string]map[string]bool{}
	}
	if r.loaded[sha] == nil {
		r.loaded[sha] = map[string]bool{}
	}
	for ref, l := range loaded {
		if l.Err == nil {
			r.loaded[sha][ref] = true
		}
	}
	r.mu.Unlock()
	// Entries named on the way are found present at their next look.
	r.notify()
	return loaded[e.Image].Err
}
