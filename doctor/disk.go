package doctor

import (
	"fmt"
	"strconv"
	"strings"
)

// The agent's disk budget stops short of what makes the kubelet act on the
// image filesystem: images pinned by prepull are never garbage collected,
// so a node filled past the kubelet's thresholds evicts pods instead.

// DiskMargin is how far below the kubelet's lowest disk threshold the
// agent's default disk budget stays.
const DiskMargin = 0.05

// DiskLimit is the fullest the image filesystem may be before the kubelet
// acts on it, and the threshold that says so.
type DiskLimit struct {
	// Fraction of the filesystem, 0 < f ≤ 1.
	Fraction float64
	// Threshold names the kubelet's setting, as an operator reads it.
	Threshold string
}

// Budget is the default disk budget under l: DiskMargin below it.
func (l DiskLimit) Budget() float64 {
	return max(l.Fraction-DiskMargin, 0.01)
}

// The kubelet's default hard eviction thresholds on the filesystems, as
// the kubelet's own defaults set them when its configuration gives none.
var defaultEvictionHard = map[string]string{"nodefs.available": "10%", "imagefs.available": "15%"}

// KubeletDiskLimit reads the kubelet's configuration file (its defaults when
// path is "") and returns the lowest of its image GC high threshold and its
// hard and soft eviction thresholds on nodefs.available and
// imagefs.available (the image filesystem is often the node's), as
// fractions of a filesystem. A threshold given as a quantity (10Gi), not a
// percentage, depends on the filesystem's size and is not read here.
func KubeletDiskLimit(path string) (DiskLimit, error) {
	kc := &kubeletConfig{}
	if path != "" {
		var err error
		if kc, err = readKubeletConfig(path); err != nil {
			return DiskLimit{}, fmt.Errorf("the kubelet's configuration: %w", err)
		}
	}
	high := kc.gcHigh()
	lim := DiskLimit{Fraction: float64(high) / 100, Threshold: fmt.Sprintf("the kubelet's image GC high threshold (imageGCHighThresholdPercent %d%%)", high)}
	hard := kc.EvictionHard
	if hard == nil {
		// The kubelet's defaults apply only when it is given none.
		hard = defaultEvictionHard
	}
	for _, t := range []struct {
		kind       string
		thresholds map[string]string
	}{{"hard", hard}, {"soft", kc.EvictionSoft}} {
		for _, signal := range []string{"imagefs.available", "nodefs.available"} {
			pct, ok := percent(t.thresholds[signal])
			if !ok {
				continue
			}
			// Eviction comes before a tie: it is the harder of the two.
			if f := 1 - pct/100; f <= lim.Fraction {
				lim = DiskLimit{Fraction: f, Threshold: fmt.Sprintf("the kubelet's %s eviction threshold %s<%s", t.kind, signal, t.thresholds[signal])}
			}
		}
	}
	if lim.Fraction <= 0 {
		return DiskLimit{}, fmt.Errorf("%s leaves no room on the image filesystem", lim.Threshold)
	}
	return lim, nil
}

// percent reads "15%" as 15.
func percent(s string) (float64, bool) {
	v, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	return f, err == nil && f >= 0 && f <= 100
}

// CheckBudget refuses a disk budget above lim, naming the threshold.
func CheckBudget(budget float64, lim DiskLimit) error {
	if budget > lim.Fraction {
		return fmt.Errorf("a disk budget of %.0f%% is above %s: the node would fill past it with images the kubelet may not remove (pinned); set at most %.2f, or leave it to its default (%.2f)",
			100*budget, lim.Threshold, lim.Fraction, lim.Budget())
	}
	return nil
}
