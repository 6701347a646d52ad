package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"prepull.io/prepull/bundle"
)

// BundleOptions are the flags of "prepull bundle".
type BundleOptions struct {
	// Files are the files of PrePullLists whose images go in the bundle.
	Files []string
	// Output is the bundle's path.
	Output string
	// Platforms are the platforms to carry, "os/arch[/variant]".
	Platforms []string
	// InsecureRegistries are registry hosts reached over plain HTTP.
	InsecureRegistries []string
	// Jobs is how many blobs are fetched at once.
	Jobs int
	// Compress is "gzip" or "zstd", or empty for a plain tar.
	Compress string

	platforms []v1.Platform
}

// AddFlags defines the flags on fs.
func (o *BundleOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&o.Files, "filename", "f", o.Files, `file of PrePullLists ("-" for stdin); repeat for more`)
	fs.StringVarP(&o.Output, "output", "o", o.Output, "path of the bundle to write; an existing bundle there is reused and replaced")
	fs.StringSliceVar(&o.Platforms, "platform", o.Platforms, "platforms to carry, each os/arch[/variant]; every image must have each one named (default: linux/amd64 and linux/arm64, each image at least one)")
	fs.StringSliceVar(&o.InsecureRegistries, "insecure-registries", o.InsecureRegistries, "registry hosts (host:port) reached over plain HTTP")
	fs.IntVar(&o.Jobs, "jobs", 4, "blobs fetched at once")
	fs.StringVar(&o.Compress, "compress", o.Compress, "compress the bundle: gzip or zstd (nodes find it by its content; the SHA-256 printed is the compressed file's)")
}

// Validate reports every invalid flag at once.
func (o *BundleOptions) Validate() error {
	var errs []error
	if len(o.Files) == 0 {
		errs = append(errs, errors.New("-f: give at least one file of PrePullLists"))
	}
	if o.Output == "" {
		errs = append(errs, errors.New("-o: the bundle's path is required"))
	}
	o.platforms = nil
	for _, p := range o.Platforms {
		parsed, err := v1.ParsePlatform(p)
		if err != nil || parsed.OS == "" || parsed.Architecture == "" {
			errs = append(errs, fmt.Errorf("--platform: %q: want os/arch[/variant]", p))
			continue
		}
		o.platforms = append(o.platforms, *parsed)
	}
	if _, ok := bundle.Compressions[o.Compress]; !ok {
		errs = append(errs, fmt.Errorf("--compress: %q: want gzip or zstd", o.Compress))
	}
	if o.Jobs < 1 {
		errs = append(errs, fmt.Errorf("--jobs: %d: must be at least 1", o.Jobs))
	}
	return errors.Join(errs...)
}

func runBundle(ctx context.Context, args []string, stdout io.Writer) error {
	opts := &BundleOptions{}
	if zapOpts, err := parseFlags("prepull bundle", args, opts); err != nil || zapOpts == nil {
		return err
	}
	lists, err := readLists(opts.Files, os.Stdin)
	if err != nil {
		return err
	}
	var images []string
	for _, l := range lists {
		for _, img := range l.Spec.Images {
			images = append(images, img.Image)
		}
	}
	insecure := map[string]bool{}
	for _, h := range opts.InsecureRegistries {
		insecure[h] = true
	}
	contents, writeErr := bundle.Write(ctx, opts.Output, images, bundle.Options{
		Platforms: opts.platforms,
		Strict:    len(opts.platforms) > 0,
		Keychain:  authn.DefaultKeychain,
		Insecure:  insecure,
		Jobs:      opts.Jobs,
		Compress:  opts.Compress,
		Progress:  bundle.NewProgress(os.Stderr, term.IsTerminal(int(os.Stderr.Fd()))),
	})
	if contents == nil {
		return writeErr
	}
	sum, err := bundle.SumFile(opts.Output)
	if err != nil {
		return err
	}
	fi, err := os.Stat(opts.Output)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tPLATFORMS\tSIZE")
	for _, img := range contents.Images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", img.Ref, img.Digest, strings.Join(img.Platforms, ","), bundle.Bytes(img.Size))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s: %d images, %s (layers shared by images are stored once), verified\nsha256: %s\n",
		opts.Output, len(contents.Images), bundle.Bytes(fi.Size()), sum)
	if writeErr != nil {
		failed := 1
		if j, ok := writeErr.(interface{ Unwrap() []error }); ok {
			failed = len(j.Unwrap())
		}
		return fmt.Errorf("%d images are not in the bundle:\n%w", failed, writeErr)
	}
	return nil
}
