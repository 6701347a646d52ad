package imageref

import "testing"

// FuzzNormalize: Parse and Normalize never panic, agree on what is a
// reference, and normalizing is idempotent and keeps the repository and
// digest.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"nginx", "nginx:1.27", "docker.io/library/nginx:1.27", "127.0.0.1:5000/shop/web:1.0",
		"reg.example:5000/a/b@sha256:" + sha, "a/b:t@sha256:" + sha, "UPPER/case:tag", "a/B:1", "localhost/x", ":tag", "a@sha256:12"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		norm, nerr := Normalize(s)
		r, perr := Parse(s)
		if (nerr == nil) != (perr == nil) {
			t.Fatalf("%q: Normalize says %v, Parse says %v", s, nerr, perr)
		}
		if nerr != nil {
			return
		}
		again, err := Normalize(norm)
		if err != nil || again != norm {
			t.Fatalf("%q normalizes to %q, which normalizes to %q (%v)", s, norm, again, err)
		}
		r2, err := Parse(norm)
		if err != nil || r2.Repo != r.Repo || r2.Digest != r.Digest {
			t.Fatalf("%q: %+v, its normal form %q: %+v (%v)", s, r, norm, r2, err)
		}
		if repo, err := Repository(s); err != nil || repo != r.Repo {
			t.Fatalf("%q: Repository %q (%v), Parse %q", s, repo, err, r.Repo)
		}
	})
}

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
