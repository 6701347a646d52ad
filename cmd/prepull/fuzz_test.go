package main

import (
	"os"
	"path/filepath"
	"testing"

	"prepull.io/prepull/imageref"
)

// FuzzReadLists: a file of PrePullLists (prepull bundle -f, node apply -f)
// never panics the reader, and what it accepts is what the rest of prepull
// can use: named, with images that the shared reference parser takes.
func FuzzReadLists(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/lists/*.yaml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: a}\nspec: {images: [{image: nginx:1.27}]}\n"))
	f.Add([]byte("---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "lists.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		lists, err := readLists([]string{p}, nil)
		if err != nil {
			return
		}
		for _, l := range lists {
			if l.Name == "" || l.Namespace == "" || len(l.Spec.Images) == 0 {
				t.Fatalf("accepted a list without name, namespace or images: %+v", l)
			}
			for _, img := range l.Spec.Images {
				if _, err := imageref.Normalize(img.Image); err != nil {
					t.Fatalf("accepted image %q that the reference parser refuses: %v", img.Image, err)
				}
			}
		}
	})
}
