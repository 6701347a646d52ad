package bundle

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// NewProgress reports Write's progress on w: a bar redrawn in place when w
// is a terminal, plain lines otherwise (one per image, and one at the start
// with the totals).
func NewProgress(w io.Writer, terminal bool) Progress {
	return &reporter{w: w, terminal: terminal, start: time.Now()}
}

type reporter struct {
	mu                  sync.Mutex
	w                   io.Writer
	terminal            bool
	start, drawn        time.Time
	images, done        int
	total, reused, have int64
}

func (r *reporter) Planned(images int, total, reused int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images, r.total, r.reused, r.have = images, total, reused, reused
	fmt.Fprintf(r.w, "bundling %d images: %s, %s of it already at hand\n", images, Bytes(total), Bytes(reused))
}

func (r *reporter) Fetched(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.have += n
	if r.terminal && time.Since(r.drawn) > 100*time.Millisecond {
		r.draw()
	}
}

func (r *reporter) ImageDone(ref string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.terminal {
		fmt.Fprint(r.w, "\r\033[K")
	}
	if err != nil {
		fmt.Fprintf(r.w, "failed   %s: %v\n", ref, err)
	} else {
		r.done++
		fmt.Fprintf(r.w, "fetched  %s (%d/%d)\n", ref, r.done, r.images)
	}
	if r.terminal {
		r.draw()
	}
}

// draw redraws the bar on the current line.
func (r *reporter) draw() {
	r.drawn = time.Now()
	frac := 1.0
	if r.total > 0 {
		frac = min(float64(r.have)/float64(r.total), 1)
	}
	const width = 30
	n := int(frac * width)
	rate := float64(r.have-r.reused) / max(time.Since(r.start).Seconds(), 0.001)
	fmt.Fprintf(r.w, "\r\033[K[%s%s] %3.0f%% %s/%s %s/s", strings.Repeat("=", n), strings.Repeat(" ", width-n),
		frac*100, Bytes(r.have), Bytes(r.total), Bytes(int64(rate)))
}

// Bytes formats n bytes for people.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
