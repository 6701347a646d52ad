package present_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"prepull.io/prepull/cri/fake"
	"prepull.io/prepull/present"
)

// The logic of Make and Release on the in-memory runtime; the agent's and
// node apply's suites prove the same on containerd.
func TestMakeAndRelease(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		keepOthers bool
		pinners    []string
		wantOwners []string
	}{
		{name: "exactly the pinners", pinners: []string{"shop/a"}, wantOwners: []string{"shop/a"}},
		{name: "other owners kept", keepOthers: true, pinners: []string{"shop/a"}, wantOwners: []string{"shop/a", "shop/old"}},
		{name: "no pinners takes every pin off", wantOwners: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, ref, digest := pulled(t, "reg.test/app", "v1")
			if err := rt.Pin(ctx, ref, "shop/old"); err != nil {
				t.Fatal(err)
			}
			img, err := rt.ImageStatus(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			m := present.Runtime{Images: rt, Store: rt}
			w := present.Want{Image: ref, Tags: []string{"reg.test/app:v1"}, Pinners: tt.pinners, KeepOtherPins: tt.keepOthers}
			st, err := m.Make(ctx, img, w)
			if err != nil {
				t.Fatalf("Make: %v", err)
			}
			if st.Digest != digest || !st.Changed || !slices.Equal(st.Retagged, w.Tags) || !slices.Equal(st.Owners, tt.wantOwners) {
				t.Errorf("Make = %+v, want digest %s, changed, tag moved, owners %v", st, digest, tt.wantOwners)
			}
			tagged, err := rt.ImageStatus(ctx, "reg.test/app:v1")
			if err != nil || tagged.ID != img.ID {
				t.Errorf("tag names %+v (%v), want image %s", tagged, err, img.ID)
			}
			if got, _ := rt.Owners(ctx, ref); !slices.Equal(got, tt.wantOwners) {
				t.Errorf("owners on %s = %v, want %v", ref, got, tt.wantOwners)
			}
			// The tag is new: only the pinners' pins are on it.
			if got, _ := rt.Owners(ctx, "reg.test/app:v1"); !slices.Equal(got, tt.pinners) {
				t.Errorf("owners on the tag = %v, want %v", got, tt.pinners)
			}
			again, err := m.Make(ctx, img, w)
			if err != nil || again.Changed {
				t.Errorf("second Make = %+v, %v: want nothing changed", again, err)
			}

			// The test pulled it, not prepull: unpinned, kept.
			kept, err := m.Release(ctx, []string{ref, "reg.test/app:v1"}, true)
			if err != nil || !strings.Contains(kept, "prepull did not bring it") {
				t.Fatalf("Release of an image prepull did not bring: kept %q, %v", kept, err)
			}
			if _, err := rt.ImageStatus(ctx, ref); err != nil {
				t.Errorf("an image prepull did not bring was removed: %v", err)
			}
			if got, _ := rt.Owners(ctx, ref); len(got) != 0 {
				t.Errorf("owners after the release: %v", got)
			}
			if err := rt.MarkBrought(ctx, ref); err != nil {
				t.Fatal(err)
			}
			if kept, err := m.Release(ctx, []string{ref, "reg.test/app:v1"}, true); err != nil || kept != "" {
				t.Fatalf("Release of an image prepull brought: kept %q, %v", kept, err)
			}
			if _, err := rt.ImageStatus(ctx, ref); err == nil {
				t.Error("image still present after a release that removes it")
			}
		})
	}
}

// pulled is a fake runtime that pulled, by digest, an image pushed to
// repo:tag, and that digest reference and digest.
func pulled(t *testing.T, repo, tag string) (rt *fake.Runtime, ref, digest string) {
	t.Helper()
	reg := fake.NewRegistry()
	digest, _, err := reg.Push(repo+":"+tag, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	rt = fake.New(reg)
	ref = repo + "@" + digest
	if _, err := rt.PullImage(context.Background(), ref, nil); err != nil {
		t.Fatal(err)
	}
	return rt, ref, digest
}

// An image prepull brought that a container uses stays on onDelete:
// Remove, and the release says why.
func TestReleaseKeepsAnImageInUse(t *testing.T) {
	ctx := context.Background()
	rt, ref, _ := pulled(t, "reg.test/used", "v1")
	if err := rt.MarkBrought(ctx, ref); err != nil {
		t.Fatal(err)
	}
	rt.UseImage(ref)
	kept, err := present.Runtime{Images: rt, Store: rt}.Release(ctx, []string{ref}, true)
	if err != nil || !strings.Contains(kept, "a container on the node uses it") {
		t.Fatalf("kept %q, %v: want it kept for its container", kept, err)
	}
	if _, err := rt.ImageStatus(ctx, ref); err != nil {
		t.Errorf("an image a container uses was removed: %v", err)
	}
}

// A tag that named another image is moved, and its pins become what Want
// asks: exactly the pinners', or theirs and the others'.
func TestMakeMovesATagAndSetsItsPins(t *testing.T) {
	ctx := context.Background()
	for _, keepOthers := range []bool{false, true} {
		reg := fake.NewRegistry()
		rt := fake.New(reg)
		var refs []string
		for range 2 {
			digest, _, err := reg.Push("reg.test/app:v1", 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			ref := "reg.test/app@" + digest
			if _, err := rt.PullImage(ctx, ref, nil); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, ref)
		}
		const tag = "reg.test/app:v1"
		if _, err := rt.Tag(ctx, tag, refs[0], "shop/old"); err != nil {
			t.Fatal(err)
		}
		img, err := rt.ImageStatus(ctx, refs[1])
		if err != nil {
			t.Fatal(err)
		}
		m := present.Runtime{Images: rt, Store: rt}
		st, err := m.Make(ctx, img, present.Want{Image: refs[1], Tags: []string{tag}, Pinners: []string{"shop/a"}, KeepOtherPins: keepOthers})
		if err != nil || !slices.Equal(st.Retagged, []string{tag}) {
			t.Fatalf("Make = %+v, %v; want the tag moved", st, err)
		}
		want := []string{"shop/a"}
		if keepOthers {
			want = []string{"shop/a", "shop/old"}
		}
		if got, _ := rt.Owners(ctx, tag); !slices.Equal(got, want) {
			t.Errorf("keep others %t: owners on the moved tag = %v, want %v", keepOthers, got, want)
		}
	}
}
