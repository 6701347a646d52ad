package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"testing"
	"time"

	"prepull.io/prepull/bundle"
	"prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/e2e/testground"
)

var (
	importImages    = flag.Int("import-images", 4, "images in the bundle of BenchmarkArchiveImport")
	importImageSize = flag.Int64("import-image-mib", 32, "size of each image in MiB in BenchmarkArchiveImport")
	importRounds    = flag.Int("import-rounds", 3, "rounds of BenchmarkArchiveImport; each imports the bundle both ways")
)

// BenchmarkArchiveImport measures, in the same run, a bundle written by
// prepull bundle from a loopback registry (its throughput), then the import
// of that one bundle through prepull — the agent's path: SHA-256 check,
// import, unpack for the node's snapshotter, references — against
// `ctr images import` of the same file (import and unpack). Every import
// runs on a fresh containerd, so none finds anything present; the two ways
// alternate which goes first, and their medians are compared.
func BenchmarkArchiveImport(b *testing.B) {
	n, size := *importImages, *importImageSize<<20
	ctx := context.Background()
	ctr := testground.Binary(b, "ctr")
	reg := testground.StartRegistry(b)
	var refs []string
	for i := range n {
		refs = append(refs, reg.MustPushRandom(b, fmt.Sprintf("import/img%d:v1", i), size/2, 2).Tag)
	}
	archive := filepath.Join(b.TempDir(), "bundle.tar")
	start := time.Now()
	if _, err := bundle.Write(ctx, archive, refs, bundle.Options{}); err != nil {
		b.Fatalf("bundle: %v", err)
	}
	writeTime := time.Since(start)
	fi, err := os.Stat(archive)
	if err != nil {
		b.Fatal(err)
	}
	sum, err := bundle.SumFile(archive)
	if err != nil {
		b.Fatal(err)
	}

	viaPrepull := func() time.Duration {
		ctd := testground.StartContainerd(b)
		defer ctd.Stop()
		_, store := ctd.Clients(b)
		start := time.Now()
		loaded, err := bundle.Import(ctx, store, bundle.Source{Path: archive, SHA256: sum}, bundle.FetchPolicy{}, "", refs, nil)
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		for ref, l := range loaded {
			if l.Err != nil {
				b.Fatalf("%s: %v", ref, l.Err)
			}
		}
		return d
	}
	viaCtr := func() time.Duration {
		ctd := testground.StartContainerd(b)
		defer ctd.Stop()
		start := time.Now()
		out, err := exec.Command(ctr, "--address", ctd.Socket, "--namespace", containerd.Namespace,
			"images", "import", "--platform", "linux/"+goruntime.GOARCH, archive).CombinedOutput()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("ctr images import: %v\n%s", err, out)
		}
		return d
	}

	b.ResetTimer()
	var ours, theirs []time.Duration
	for i := range *importRounds {
		if i%2 == 0 {
			ours = append(ours, viaPrepull())
			theirs = append(theirs, viaCtr())
		} else {
			theirs = append(theirs, viaCtr())
			ours = append(ours, viaPrepull())
		}
	}
	b.StopTimer()
	mOurs, mTheirs := testground.Median(ours), testground.Median(theirs)
	speed := float64(mTheirs) / float64(mOurs)
	mib := float64(fi.Size()) / (1 << 20)
	b.ReportMetric(speed, "prepull-speed/ctr-speed")
	b.ReportMetric(mib/writeTime.Seconds(), "bundle-MiB/s")
	fmt.Printf("\nbundle of %d images (%.0f MiB, 2 random layers each) from a loopback registry:\n", n, mib)
	fmt.Printf("  prepull bundle (resolve, fetch, write, verify):  %6d ms  %.0f MiB/s\n", writeTime.Milliseconds(), mib/writeTime.Seconds())
	fmt.Printf("import of that bundle on a fresh containerd, median of %d each:\n", *importRounds)
	fmt.Printf("  prepull (sha256 check, import, unpack, names):   %6d ms  %v\n", mOurs.Milliseconds(), testground.Millis(ours))
	fmt.Printf("  ctr images import (import, unpack):               %6d ms  %v\n", mTheirs.Milliseconds(), testground.Millis(theirs))
	fmt.Printf("  prepull speed / ctr speed:                        %6.2fx\n", speed)
}
