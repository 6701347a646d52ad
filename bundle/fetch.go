package bundle

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/redact"
)

// Source is where an archive is, and the SHA-256 it must have.
type Source struct {
	// Path is a local file; URL is an http(s) URL. One is set.
	Path, URL string
	// SHA256 is 64 lowercase hex digits; empty means unchecked.
	SHA256 string
}

func (s Source) location() string {
	if s.URL != "" {
		return s.URL
	}
	return s.Path
}

// Errors of archives.
var (
	// ErrChecksum: the archive's SHA-256 is not the one asked for.
	ErrChecksum = errors.New("archive checksum mismatch")
	// ErrUnreadable: the runtime could not read the archive as an OCI
	// image layout or a docker-save archive.
	ErrUnreadable = errors.New("unreadable archive")
)

// Import fetches the archive src names (a download, under policy, goes to
// tmpDir, empty meaning the system's temporary directory, and is removed
// after), checks its SHA-256, and loads into store the images wanted
// names, as Load does, checking their signatures as v says.
func Import(ctx context.Context, store cri.Store, src Source, policy FetchPolicy, tmpDir string, wanted []string, v *Verification) (map[string]Loaded, error) {
	path, release, err := Fetch(ctx, src, policy, tmpDir)
	if err != nil {
		return nil, err
	}
	defer release()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	if err := policy.admit(fi.Size()); err != nil {
		return nil, err
	}
	if v != nil {
		v = &Verification{Keys: v.Keys, Audit: v.Audit, MaxBytes: cmp.Or(v.MaxBytes, policy.MaxBytes, DefaultMaxDownload)}
	}
	return loadChecked(ctx, store, path, wanted, v, policy.Claim)
}

// Fetch makes the archive src names available as a local file whose SHA-256
// it checked, and returns its path and a function that releases it: a
// download, made under policy in tmpDir (empty means the system's), is
// removed then. A download's errors name its URL without query or user
// information, never the server's answer beyond its status line, nor the
// SHA-256 of what it sent.
func Fetch(ctx context.Context, src Source, policy FetchPolicy, tmpDir string) (string, func(), error) {
	nothing := func() {}
	if src.URL == "" && src.SHA256 == "" {
		return src.Path, nothing, nil
	}
	if src.URL == "" {
		f, err := os.Open(src.Path)
		if err != nil {
			return "", nothing, fmt.Errorf("archive %s: %w", src.Path, err)
		}
		defer f.Close()
		if err := checkSum(ctx, f, src); err != nil {
			return "", nothing, err
		}
		return src.Path, nothing, nil
	}
	shown := redact.Text(src.URL)
	u, err := url.Parse(src.URL)
	if err == nil {
		err = policy.allows(u)
	}
	if err != nil {
		return "", nothing, fmt.Errorf("archive %s: %w", shown, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL, nil)
	if err != nil {
		return "", nothing, fmt.Errorf("archive %s: %w", shown, err)
	}
	client := policy.Client()
	// Its transport is this download's alone.
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// Its text repeats the URL, query included.
			err = ue.Err
		}
		return "", nothing, fmt.Errorf("archive %s: download: %w", shown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nothing, fmt.Errorf("archive %s: download: the server answered %s", shown, resp.Status)
	}
	limit := cmp.Or(policy.MaxBytes, DefaultMaxDownload)
	if resp.ContentLength > limit {
		return "", nothing, fmt.Errorf("archive %s: download: %d bytes, more than the %d the agent takes (--archive-max-bytes)", shown, resp.ContentLength, limit)
	}
	if err := policy.admit(resp.ContentLength); err != nil {
		return "", nothing, err
	}
	f, err := os.CreateTemp(tmpDir, "prepull-archive-*.tar")
	if err != nil {
		return "", nothing, fmt.Errorf("archive %s: %w", shown, err)
	}
	release := func() { os.Remove(f.Name()) }
	body := &capped{r: resp.Body, left: limit}
	err = checkSum(ctx, io.TeeReader(body, f), Source{URL: shown, SHA256: src.SHA256})
	if body.over {
		err = fmt.Errorf("archive %s: download: more than the %d bytes the agent takes (--archive-max-bytes)", shown, limit)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("archive %s: %w", shown, cerr)
	}
	if err != nil {
		release()
		return "", nothing, err
	}
	return f.Name(), release, nil
}

// checkSum reads r to the end and fails unless its SHA-256 is src's (any,
// when src gives none).
func checkSum(ctx context.Context, r io.Reader, src Source) error {
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, r}); err != nil {
		return fmt.Errorf("archive %s: read: %w", src.location(), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); src.SHA256 != "" && got != src.SHA256 {
		if src.URL != "" {
			// What a server sent is the server's to know.
			return fmt.Errorf("archive %s: what it sent does not have the sha256 %s asked for: %w", src.location(), src.SHA256, ErrChecksum)
		}
		return fmt.Errorf("archive %s: its sha256 is %s, but %s was asked for: %w", src.location(), got, src.SHA256, ErrChecksum)
	}
	return nil
}

// capped reads r up to left bytes, and notes when r has more.
type capped struct {
	r    io.Reader
	left int64
	over bool
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more says whether r ends here.
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n > 0 {
			c.over = true
			return 0, errors.New("too large")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// SumFile returns the SHA-256 of the file at path, as Source wants it.
func SumFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
