package doctor_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"prepull.io/prepull/doctor"
)

func TestKubeletDiskLimit(t *testing.T) {
	tests := []struct {
		name      string
		config    string // "" for no file: the kubelet's defaults
		want      float64
		threshold string
		budget    float64
	}{
		{name: "the kubelet's defaults", want: 0.85, threshold: "hard eviction threshold imagefs.available<15%", budget: 0.80},
		{name: "a file of defaults", config: "kind: KubeletConfiguration\n", want: 0.85, threshold: "imagefs.available<15%", budget: 0.80},
		{name: "image GC lower than eviction", config: "imageGCHighThresholdPercent: 70\n", want: 0.70, threshold: "imageGCHighThresholdPercent 70%", budget: 0.65},
		{name: "eviction thresholds given replace the defaults", config: "evictionHard:\n  imagefs.available: 5%\n  nodefs.available: 8%\nimageGCHighThresholdPercent: 95\n",
			want: 0.92, threshold: "hard eviction threshold nodefs.available<8%", budget: 0.87},
		{name: "a soft threshold lower than the hard ones", config: "evictionSoft:\n  imagefs.available: 25%\n", want: 0.75, threshold: "soft eviction threshold imagefs.available<25%", budget: 0.70},
		{name: "a quantity is not read", config: "evictionHard:\n  imagefs.available: 10Gi\nimageGCHighThresholdPercent: 90\n", want: 0.90, threshold: "imageGCHighThresholdPercent 90%", budget: 0.85},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.config != "" {
				path = filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(path, []byte(tt.config), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			lim, err := doctor.KubeletDiskLimit(path)
			if err != nil {
				t.Fatal(err)
			}
			if diff := lim.Fraction - tt.want; diff > 1e-9 || diff < -1e-9 || !strings.Contains(lim.Threshold, tt.threshold) {
				t.Errorf("limit %+v, want %.2f from %q", lim, tt.want, tt.threshold)
			}
			if diff := lim.Budget() - tt.budget; diff > 1e-9 || diff < -1e-9 {
				t.Errorf("budget %.3f, want %.2f", lim.Budget(), tt.budget)
			}
			if err := doctor.CheckBudget(lim.Budget(), lim); err != nil {
				t.Errorf("the default budget is refused: %v", err)
			}
			err = doctor.CheckBudget(lim.Fraction+0.01, lim)
			if err == nil || !strings.Contains(err.Error(), tt.threshold) {
				t.Errorf("a budget above the limit: %v, want a refusal naming %q", err, tt.threshold)
			}
		})
	}
	if _, err := doctor.KubeletDiskLimit(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("a missing file is no error")
	}
}
