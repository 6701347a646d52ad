package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"text/tabwriter"

	"github.com/spf13/pflag"
	ctrl "sigs.k8s.io/controller-runtime"

	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/nodeapply"
	"prepull.io/prepull/verify"
)

// NodeApplyOptions are the flags of "prepull node apply".
type NodeApplyOptions struct {
	RuntimeOptions
	// Files are the files of PrePullLists to apply.
	Files []string
	// Archive is a bundle to import every image from.
	Archive string
	// ArchiveSHA256, when set, is checked against Archive.
	ArchiveSHA256 string
	// VerifyKeys are files of PEM public keys an image's signature in the
	// bundle must verify with before it is imported.
	VerifyKeys []string
	// CredentialProviderConfig and CredentialProviderBinDir are the
	// kubelet's credential provider plugins, run for the pulls as the
	// kubelet runs them.
	CredentialProviderConfig, CredentialProviderBinDir string
}

// NewNodeApplyOptions returns the defaults.
func NewNodeApplyOptions() *NodeApplyOptions {
	return &NodeApplyOptions{RuntimeOptions: newRuntimeOptions()}
}

// AddFlags defines the flags on fs.
func (o *NodeApplyOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&o.Files, "filename", "f", o.Files, `file of PrePullLists ("-" for stdin); repeat for more`)
	fs.StringVar(&o.Archive, "archive", o.Archive, "bundle to import every image from, instead of the lists' sources")
	fs.StringVar(&o.ArchiveSHA256, "archive-sha256", o.ArchiveSHA256, "SHA-256 the --archive must have (64 hex digits), checked before anything is imported")
	fs.StringVar(&o.CredentialProviderConfig, "image-credential-provider-config", o.CredentialProviderConfig, "the kubelet's credential provider plugin config (a file, or a directory of them): pulls use the credentials the node's plugins give")
	fs.StringVar(&o.CredentialProviderBinDir, "image-credential-provider-bin-dir", o.CredentialProviderBinDir, "the directory of the kubelet's credential provider plugins")
	fs.StringArrayVar(&o.VerifyKeys, "verify-key", o.VerifyKeys, "file of a PEM public key (ECDSA, Ed25519, RSA): an image is imported only if a signature the bundle holds for it verifies with one of these keys; repeat for more")
	o.RuntimeOptions.addFlags(fs)
}

var sha256Hex = regexp.MustCompile(`^[a-f0-9]{64}$`)

// Validate reports every invalid flag at once.
func (o *NodeApplyOptions) Validate() error {
	errs := o.RuntimeOptions.validate()
	if len(o.Files) == 0 {
		errs = append(errs, errors.New("-f: give at least one file of PrePullLists"))
	}
	if o.ArchiveSHA256 != "" && !sha256Hex.MatchString(o.ArchiveSHA256) {
		errs = append(errs, fmt.Errorf("--archive-sha256: %q: want 64 lowercase hex digits", o.ArchiveSHA256))
	}
	if o.ArchiveSHA256 != "" && o.Archive == "" {
		errs = append(errs, errors.New("--archive-sha256: needs --archive"))
	}
	return errors.Join(errs...)
}

const nodeUsage = `Usage:
  prepull node apply -f list.yaml [-f more.yaml] [--archive bundle.tar] [--verify-key key.pub]
  prepull node NODE   (see "prepull node --help")

Makes the images of the lists present on this node's runtime, tagged and
pinned, with no API server, prints a report, and exits non-zero when any
image failed. Running it again changes nothing.
`

func runNode(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "apply" {
		fmt.Fprint(os.Stderr, nodeUsage)
		return fmt.Errorf("node: %w", errUsage)
	}
	opts := NewNodeApplyOptions()
	zapOpts, err := parseFlags("prepull node apply", args[1:], opts)
	if err != nil || zapOpts == nil {
		return err
	}
	ctrl.SetLogger(newLogger(zapOpts))
	lists, err := readLists(opts.Files, os.Stdin)
	if err != nil {
		return err
	}
	var keys verify.Keys
	for _, f := range opts.VerifyKeys {
		pem, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("--verify-key: %w", err)
		}
		k, err := verify.ParseKey(pem, f)
		if err != nil {
			return fmt.Errorf("--verify-key: %w", err)
		}
		keys = append(keys, k)
	}
	plugins, err := opts.plugins()
	if err != nil {
		return err
	}
	rt, err := dialRuntime(ctx, opts.RuntimeOptions, "")
	if err != nil {
		return err
	}
	defer rt.Close()

	results := nodeapply.Apply(ctx, lists, nodeapply.Options{
		Images: rt.images, Store: rt.store, Credentials: plugins,
		Archive: opts.Archive, ArchiveSHA256: opts.ArchiveSHA256, ArchiveDir: opts.ArchiveDir, Archives: opts.archives(),
		PullTimeout: opts.PullTimeout, VerifyKeys: keys,
	})
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LIST\tIMAGE\tDIGEST\tHOW\tPINNED\tRESULT")
	failed := 0
	for _, r := range results {
		result := "ok"
		if r.Err != nil {
			failed++
			result = "FAILED: " + r.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", r.List, r.Image, orDash(r.Digest), orDash(r.How), r.Pinned, result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed", failed, len(results))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// plugins are the node's credential provider plugins, nil without
// --image-credential-provider-config.
func (o *NodeApplyOptions) plugins() (nodeapply.NodeCredentials, error) {
	if o.CredentialProviderConfig == "" {
		return nil, nil
	}
	p, err := credprovider.Load(o.CredentialProviderConfig, o.CredentialProviderBinDir)
	if err != nil {
		return nil, fmt.Errorf("--image-credential-provider-config: %w", err)
	}
	return p, nil
}
