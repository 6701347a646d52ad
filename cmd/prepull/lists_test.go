package main

import (
	"bytes"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"

	"prepull.io/prepull/bundle"
	"prepull.io/prepull/e2e/testground"
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadLists(t *testing.T) {
	good := writeFile(t, "good.yaml", `# two lists in one file
apiVersion: prepull.io/v1alpha1
kind: PrePullList
metadata: {name: web}
spec:
  images: [{image: "nginx:1.27"}]
---
apiVersion: prepull.io/v1alpha1
kind: PrePullList
metadata: {name: db, namespace: data}
spec:
  images: [{image: "postgres:17"}, {image: "redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}]
`)
	lists, err := readLists([]string{good}, nil)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(lists) != 2 || lists[0].Namespace != "default" || lists[1].Namespace != "data" || len(lists[1].Spec.Images) != 2 {
		t.Errorf("read %+v", lists)
	}
	fromStdin, err := readLists([]string{"-"}, strings.NewReader("apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: s}\nspec: {images: [{image: a:1}]}\n"))
	if err != nil || len(fromStdin) != 1 {
		t.Errorf("stdin: %v, %v", fromStdin, err)
	}

	for name, tc := range map[string]struct{ text, want string }{
		"another kind": {"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "not a prepull.io/v1alpha1 PrePullList"},
		"a bad image": {"apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: x}\nspec: {images: [{image: ok:1}, {image: 'Bad Ref'}]}\n",
			`spec.images[1].image "Bad Ref"`},
		"an unknown field": {"apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: x}\nspec: {imgs: []}\n", "unknown field"},
		"no images":        {"apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: x}\nspec: {}\n", "spec.images: at least one image"},
		"no name":          {"apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nspec: {images: [{image: a:1}]}\n", "metadata.name is required"},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, "bad.yaml", tc.text)
			_, err := readLists([]string{p}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("read: %v, want an error naming %s and saying %q", err, p, tc.want)
			}
		})
	}
}

func TestBundleAndNodeApplyCommands(t *testing.T) {
	reg := testground.StartRegistry(t)
	ctd := testground.StartContainerd(t)
	ctd.TrustRegistry(reg)
	img := reg.MustPushRandom(t, "cli/app:v1", 64<<10, 1)
	lists := writeFile(t, "lists.yaml", "apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: cli}\nspec: {images: [{image: "+img.Tag+"}]}\n")
	out := filepath.Join(t.TempDir(), "b.tar")

	var stdout bytes.Buffer
	if err := run([]string{"bundle", "-f", lists, "-o", out, "--platform", "linux/" + goruntime.GOARCH}, &stdout); err != nil {
		t.Fatalf("bundle: %v\n%s", err, stdout.String())
	}
	sum, err := bundle.SumFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{img.Tag, digestOf(img.Digest), "sha256: " + sum, "verified"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("bundle printed\n%s\nwant it to show %q", stdout.String(), want)
		}
	}
	if err := run([]string{"bundle", "-f", lists, "-o", out, "--platform", "linux"}, &stdout); err == nil || !strings.Contains(err.Error(), "--platform") {
		t.Errorf("bundle with a bad platform: %v, want an error naming --platform", err)
	}

	reg.Stop()
	apply := []string{"node", "apply", "-f", lists, "--archive", out, "--archive-sha256", sum, "--cri-endpoint", ctd.Socket}
	for i := range 2 {
		stdout.Reset()
		if err := run(apply, &stdout); err != nil {
			t.Fatalf("node apply #%d: %v\n%s", i+1, err, stdout.String())
		}
		how := []string{"imported", "present"}[i]
		if !strings.Contains(stdout.String(), "default/cli") || !strings.Contains(stdout.String(), how) || !strings.Contains(stdout.String(), "true") {
			t.Errorf("node apply #%d printed\n%s\nwant default/cli, %s and pinned", i+1, stdout.String(), how)
		}
	}
	stdout.Reset()
	bad := writeFile(t, "missing.yaml", "apiVersion: prepull.io/v1alpha1\nkind: PrePullList\nmetadata: {name: gone}\nspec: {images: [{image: "+reg.Repo("cli/gone:v1")+"}]}\n")
	err = run([]string{"node", "apply", "-f", bad, "--archive", out, "--cri-endpoint", ctd.Socket}, &stdout)
	if err == nil || !strings.Contains(err.Error(), "1 of 1 images failed") || !strings.Contains(stdout.String(), "FAILED") {
		t.Errorf("node apply of an image the archive lacks: %v\n%s\nwant a failure report", err, stdout.String())
	}
}

func digestOf(ref string) string {
	_, d, _ := strings.Cut(ref, "@")
	return d
}
