package inspect

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// barWidth is the number of cells of a progress bar.
const barWidth = 20

// PrintLists writes the reports as `kubectl prepull status` shows them: a
// block per list with its conditions, its images, the pulls under way with a
// progress bar each, and its failures.
func PrintLists(w io.Writer, reports []ListReport) error {
	if len(reports) == 0 {
		_, err := fmt.Fprintln(w, "No PrePullLists found.")
		return err
	}
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		state := "NotReady"
		if r.Ready {
			state = "Ready"
		}
		fmt.Fprintf(w, "%s  %s  nodes ready %s (pulling %d, waiting %d, failed %d)\n",
			r.List, state, r.ReadyNodes, r.Nodes.Pulling, r.Nodes.Waiting, r.Nodes.Failed)
		var conds, images, pulls, fails [][]string
		for _, c := range r.Conditions {
			conds = append(conds, []string{c.Type + "=" + string(c.Status), c.Reason, oneLine(c.Message)})
		}
		for _, im := range r.Images {
			digest := im.Digest
			if digest == "" {
				digest = "(unresolved)"
			}
			images = append(images, []string{im.Image, digest, fmt.Sprint(im.NodesReady), fmt.Sprint(im.NodesFailed), note(im)})
		}
		for _, p := range r.Pulling {
			pulls = append(pulls, []string{p.Node, p.Image, Bar(p.BytesDone, p.BytesTotal, barWidth), bytes(p.BytesDone, p.BytesTotal), rate(p.BytesPerSecond)})
		}
		for _, f := range r.Failures {
			fails = append(fails, []string{f.Node, f.Image, f.Reason, oneLine(f.Message)})
		}
		table(w, nil, conds)
		table(w, []string{"IMAGE", "DIGEST", "READY", "FAILED", "NOTE"}, images)
		table(w, []string{"PULLING ON", "IMAGE", "PROGRESS", "BYTES", "RATE"}, pulls)
		table(w, []string{"FAILED ON", "IMAGE", "REASON", "MESSAGE"}, fails)
		var waits [][]string
		for _, f := range r.Waiting {
			waits = append(waits, []string{f.Node, f.Image, f.Reason, oneLine(f.Message)})
		}
		table(w, []string{"WAITING ON", "IMAGE", "REASON", "MESSAGE"}, waits)
		if s := r.Sources; s != (prepullv1.FetchCounts{}) {
			fmt.Fprintf(w, "  fetched: %d from registries, %d from peers, %d from archives\n", s.Registry, s.Peer, s.Archive)
		}
		if n := int(r.FailureCount) - len(r.Failures); n > 0 {
			fmt.Fprintf(w, "  … and %d more failures\n", n)
		}
	}
	return nil
}

// table writes rows under header, indented, its columns aligned; nothing
// when there are no rows.
func table(w io.Writer, header []string, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != nil {
		fmt.Fprintf(tw, "  %s\n", strings.Join(header, "\t"))
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "  %s\n", strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

// note is what a list's image row says besides its counts.
func note(im ImageReport) string {
	switch {
	case im.Message != "":
		return "resolution failed: " + oneLine(im.Message)
	case im.Warning != "":
		return "warning: " + oneLine(im.Warning)
	}
	return ""
}

// PrintNode writes the report as `kubectl prepull node` shows it.
func PrintNode(w io.Writer, r *NodeReport) error {
	runtime := r.Runtime
	if !r.Reported {
		runtime = "(no report from the node's agent yet)"
	}
	head := [][]string{{"Node:", r.Node}, {"Runtime:", runtime}}
	if fs := r.ImageFilesystem; fs != nil {
		use := humanize.IBytes(uint64(fs.UsedBytes)) + " used"
		if fs.CapacityBytes > 0 {
			use += fmt.Sprintf(" of %s (%.0f%%)", humanize.IBytes(uint64(fs.CapacityBytes)), 100*float64(fs.UsedBytes)/float64(fs.CapacityBytes))
		}
		head = append(head, []string{"Image filesystem:", use})
	}
	gate := "open: no " + r.Gate.Taint + " taint"
	if r.Gate.Tainted {
		gate = "held: the node carries the " + r.Gate.Taint + " taint"
	}
	head = append(head, []string{"Gate:", gate})
	if r.Gate.ImagesReady != "" {
		head = append(head, []string{"ImagesReady:", strings.TrimSpace(r.Gate.ImagesReady + " " + r.Gate.Reason + ": " + oneLine(r.Gate.Message))})
	}
	if len(r.Images) == 0 {
		head = append(head, []string{"Images:", "none wanted by any list"})
	}
	table(w, nil, head)
	var rows [][]string
	for _, im := range r.Images {
		lists := strings.Join(im.Lists, ",")
		if len(im.Releasing) > 0 {
			lists = strings.TrimPrefix(lists+",releasing:"+strings.Join(im.Releasing, ","), ",")
		}
		pinned := "no"
		if im.Pinned {
			pinned = "yes"
			if len(im.PinOwners) > 0 {
				pinned += " (" + strings.Join(im.PinOwners, ",") + ")"
			}
		}
		lastErr := "-"
		if im.Reason != "" || im.LastError != "" {
			lastErr = strings.TrimSpace(im.Reason + ": " + oneLine(im.LastError))
		}
		source := dash(string(im.Source))
		if im.FetchedFrom != "" {
			source += " " + im.FetchedFrom
		}
		rows = append(rows, []string{im.Image, lists, dash(string(im.Phase)), dash(im.Digest), pinned, bytes(im.BytesDone, im.BytesTotal), source, credentialsOf(im.NodeImageStatus), lastErr})
	}
	table(w, []string{"IMAGE", "LISTS", "PHASE", "DIGEST", "PINNED", "BYTES", "SOURCE", "CREDENTIALS", "LAST ERROR"}, rows)
	return nil
}

// Bar draws done out of total as a bar of width cells, e.g.
// "[#######-------------] 35%".
func Bar(done, total int64, width int) string {
	if total <= 0 {
		return "[" + strings.Repeat("?", width) + "]"
	}
	done = min(max(done, 0), total)
	full := int(int64(width) * done / total)
	return fmt.Sprintf("[%s%s] %3d%%", strings.Repeat("#", full), strings.Repeat("-", width-full), 100*done/total)
}

func bytes(done, total int64) string {
	switch {
	case total > 0:
		return humanize.IBytes(uint64(done)) + "/" + humanize.IBytes(uint64(total))
	case done > 0:
		return humanize.IBytes(uint64(done))
	}
	return "-"
}

func rate(bps int64) string {
	if bps <= 0 {
		return "-"
	}
	return humanize.IBytes(uint64(bps)) + "/s"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a message to one table row.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// credentialsOf says how an image came: the kind of credentials it was
// pulled with, "imported", or "-" when pulled without any or not yet.
func credentialsOf(st prepullv1.NodeImageStatus) string {
	switch {
	case st.ImportedFrom != "":
		return "imported"
	case st.Credentials != "":
		return string(st.Credentials)
	case st.PulledAt != nil:
		return "none"
	}
	return "-"
}
