package prepulllist

import (
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

func TestRegistryDue(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	pol := tagUse{source: prepullv1.SourceRegistry, refresh: time.Hour}
	res := func(st prepullv1.TagResolutionStatus) *prepullv1.TagResolution {
		return &prepullv1.TagResolution{Status: st}
	}
	tests := []struct {
		name    string
		rec     *prepullv1.TagResolution
		pol     tagUse
		wantDue bool
		next    time.Time
	}{
		{name: "never resolved", pol: pol, wantDue: true, next: now},
		{name: "resolved within its refresh", rec: res(prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceRegistry, ResolvedAt: at(-10 * time.Minute)}),
			pol: pol, next: now.Add(50 * time.Minute)},
		{name: "its refresh came", rec: res(prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceRegistry, ResolvedAt: at(-time.Hour)}),
			pol: pol, wantDue: true, next: now},
		{name: "a shorter refresh of another list", rec: res(prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceRegistry, ResolvedAt: at(-10 * time.Minute)}),
			pol: tagUse{source: prepullv1.SourceRegistry, refresh: 5 * time.Minute}, wantDue: true, next: now},
		{name: "no refresh set reads the default", rec: res(prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceRegistry, ResolvedAt: at(-10 * time.Minute)}),
			pol: tagUse{source: prepullv1.SourceRegistry}, next: now.Add(prepullv1.DefaultRefresh - 10*time.Minute)},
		{name: "resolved on a node before: the registry now wins", rec: res(prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceNode, ResolvedAt: at(-time.Minute)}),
			pol: pol, wantDue: true, next: now},
		{name: "a failure is not the record's: no resolution yet is due", rec: res(prepullv1.TagResolutionStatus{AttemptedAt: at(-10 * time.Second)}),
			pol: pol, wantDue: true, next: now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			due, next := registryDue(tt.rec, tt.pol, now)
			if due != tt.wantDue || !next.Equal(tt.next) {
				t.Errorf("due %v, next %v; want %v, %v", due, next, tt.wantDue, tt.next)
			}
		})
	}
}

func TestProbed(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	node := tagUse{source: prepullv1.SourceNode, refresh: time.Hour}
	archive := tagUse{source: prepullv1.SourceArchive, refresh: time.Hour}
	resolved := &prepullv1.TagResolution{Status: prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceNode, ResolvedAt: at(-10 * time.Minute)}}
	tests := []struct {
		name   string
		rec    *prepullv1.TagResolution
		pol    tagUse
		digest string
		at     *metav1.Time
		want   string // the new digest, "" for none
		next   time.Time
	}{
		{name: "nothing reported yet", pol: node, next: now.Add(prepullv1.DefaultRefresh)},
		{name: "the first report", pol: node, digest: "sha256:a", at: at(-time.Second), want: "sha256:a", next: now.Add(time.Hour)},
		{name: "the report already recorded", rec: resolved, pol: node, digest: "sha256:a", at: at(-10 * time.Minute), next: now.Add(50 * time.Minute)},
		{name: "a newer pull", rec: resolved, pol: node, digest: "sha256:b", at: at(-time.Second), want: "sha256:b", next: now.Add(time.Hour)},
		{name: "nothing reported, resolved before", rec: resolved, pol: node, next: now.Add(50 * time.Minute)},
		{name: "an archive is not refreshed", rec: &prepullv1.TagResolution{Status: prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceArchive, ResolvedAt: at(-time.Minute)}},
			pol: archive, digest: "sha256:a", at: at(-time.Minute), next: now.Add(prepullv1.DefaultRefresh)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, next := probed(tt.rec, tt.pol, tt.digest, tt.at, now)
			got := ""
			if st != nil {
				got = st.Digest
				if st.Source != tt.pol.source || st.ResolvedAt != tt.at {
					t.Errorf("new resolution %+v, want source %s and the pull's time", st, tt.pol.source)
				}
			}
			if got != tt.want || !next.Equal(tt.next) {
				t.Errorf("new digest %q, next %v; want %q, %v", got, next, tt.want, tt.next)
			}
		})
	}
}

func TestReaders(t *testing.T) {
	reg := func(readers ...string) *prepullv1.TagResolution {
		return &prepullv1.TagResolution{Status: prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceRegistry, Readers: readers}}
	}
	if !readable(reg("", "ns/v1"), "ns/v1") || readable(reg(""), "ns/v1") || readable(reg("ns/v1"), "") {
		t.Errorf("a registry digest is readable by its readers only")
	}
	node := &prepullv1.TagResolution{Status: prepullv1.TagResolutionStatus{Digest: "sha256:a", Source: prepullv1.SourceNode}}
	if !readable(node, "ns/v1") {
		t.Errorf("a digest from a node is not gated by readers")
	}
	var readers []string
	for i := range maxReaders + 3 {
		readers = withReader(readers, fmt.Sprintf("ns/v%d", i))
	}
	readers = withReader(readers, "ns/v10")
	if len(readers) != maxReaders || readers[len(readers)-1] != "ns/v10" || slices.Contains(readers, "ns/v2") || !slices.Contains(readers, "ns/v3") {
		t.Errorf("readers %v: want the newest %d, ns/v10 last", readers, maxReaders)
	}
}
