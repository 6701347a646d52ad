package prepulllist

import (
	"slices"
	"time"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
)

// Who read a tag's digest at the registry. A digest resolved there is
// handed only to the lists whose own credentials (or anonymous access) read
// it: its TagResolution keeps its readers, and a failure is kept here, by
// reader, not in the shared record (tags.go).

// tagFailure is a reader's failure to read a tag at the registry.
type tagFailure struct {
	at  time.Time
	msg string
}

// failure is reader's last failure to read tag, if any.
func (s *tagStore) failure(tag, reader string) (tagFailure, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tags[tag]
	if t == nil {
		return tagFailure{}, false
	}
	f, ok := t.failed[reader]
	return f, ok
}

// setFailure records reader's failure to read tag (f.at zero: that it read
// it).
func (s *tagStore) setFailure(tag, reader string, f tagFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tags[tag]
	switch {
	case t == nil:
	case f.at.IsZero():
		delete(t.failed, reader)
	default:
		if t.failed == nil {
			t.failed = map[string]tagFailure{}
		}
		t.failed[reader] = f
	}
}

// readerOf is whose access to the registry l's credentials are: "" for
// anonymous, else l's namespace and the version of its pull secrets' mirrors.
func readerOf(l *prepullv1.PrePullList, secretsVersion string, creds []pullsecret.Credential) string {
	if len(creds) == 0 {
		return ""
	}
	return l.Namespace + "/" + secretsVersion
}

// readable says whether reader read rec's digest at the registry (any
// reader, for a digest from a node or an archive).
func readable(rec *prepullv1.TagResolution, reader string) bool {
	return rec.Status.Source != prepullv1.SourceRegistry || slices.Contains(rec.Status.Readers, reader)
}

// maxReaders is how many readers a TagResolution keeps, the newest.
const maxReaders = 64

// withReader is readers with reader, the newest last, at most maxReaders.
func withReader(readers []string, reader string) []string {
	out := append(slices.DeleteFunc(slices.Clone(readers), func(r string) bool { return r == reader }), reader)
	return out[max(0, len(out)-maxReaders):]
}
