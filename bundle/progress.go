package bundle

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
)

// NewProgress reports Write's progress on w: a bar redrawn in place when w
// is a terminal, plain lines otherwise (one per image, and one at the start
// with the totals).
func NewProgress(w io.Writer, terminal bool) Progress {
	return &reporter{w: w, terminal: terminal}
}

type reporter struct {
	mu           sync.Mutex
	w            io.Writer
	terminal     bool
	bar          *progressbar.ProgressBar
	images, done int
}

func (r *reporter) Planned(images int, total, reused int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images = images
	fmt.Fprintf(r.w, "bundling %d images: %s, %s of it already at hand\n", images, Bytes(total), Bytes(reused))
	if r.terminal {
		r.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(r.w),
			progressbar.OptionShowBytes(true),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		_ = r.bar.Add64(reused)
	}
}

func (r *reporter) Fetched(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bar != nil {
		_ = r.bar.Add64(n)
	}
}

func (r *reporter) ImageDone(ref string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bar != nil {
		_ = r.bar.Clear()
	}
	if err != nil {
		fmt.Fprintf(r.w, "failed   %s: %v\n", ref, err)
	} else {
		r.done++
		fmt.Fprintf(r.w, "fetched  %s (%d/%d)\n", ref, r.done, r.images)
	}
	if r.bar != nil {
		_ = r.bar.RenderBlank()
	}
}

// Bytes formats n bytes for people, in powers of 1024: "3.0 MiB".
func Bytes(n int64) string {
	return humanize.IBytes(uint64(max(n, 0)))
}
