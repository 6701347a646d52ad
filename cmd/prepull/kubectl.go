package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/inspect"
)

// KubectlOptions are the flags every kubectl-side command shares: kubectl's
// own connection flags (--kubeconfig, --context, -n, …) and -o.
type KubectlOptions struct {
	flags *genericclioptions.ConfigFlags
	// Output is "" for the table, json or yaml.
	Output string
}

func newKubectlOptions() KubectlOptions {
	return KubectlOptions{flags: genericclioptions.NewConfigFlags(true)}
}

func (o *KubectlOptions) addFlags(fs *pflag.FlagSet) {
	o.flags.AddFlags(fs)
	fs.StringVarP(&o.Output, "output", "o", o.Output, "output format: json or yaml (default: a table)")
}

func (o *KubectlOptions) validate() []error {
	switch o.Output {
	case "", "json", "yaml":
		return nil
	}
	return []error{fmt.Errorf("-o: %q: must be json or yaml", o.Output)}
}

// client returns an API client and the namespace kubectl would use.
func (o *KubectlOptions) client() (client.Client, string, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: namespace: %w", err)
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("API client: %w", err)
	}
	return c, ns, nil
}

// print writes v as the output format says, or with table when there is no
// format.
func (o *KubectlOptions) print(w io.Writer, v any, table func(io.Writer) error) error {
	switch o.Output {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return table(w)
}

// StatusOptions are the flags of "prepull status".
type StatusOptions struct {
	KubectlOptions
	AllNamespaces bool
	Watch         bool
	Interval      time.Duration
	// List is the one list to show, or "" for every list of the namespace.
	List string
}

// NewStatusOptions returns the defaults.
func NewStatusOptions() *StatusOptions {
	return &StatusOptions{KubectlOptions: newKubectlOptions(), Interval: time.Second}
}

// AddFlags defines the flags on fs.
func (o *StatusOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs)
	fs.BoolVarP(&o.AllNamespaces, "all-namespaces", "A", o.AllNamespaces, "show the lists of every namespace")
	fs.BoolVarP(&o.Watch, "watch", "w", o.Watch, "redraw until every list shown is Ready")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "time between redraws with --watch")
}

// Validate reports every invalid flag at once.
func (o *StatusOptions) Validate() error {
	errs := o.validate()
	if o.AllNamespaces && o.List != "" {
		errs = append(errs, fmt.Errorf("-A: cannot be used with a list's name (%s)", o.List))
	}
	if o.Interval <= 0 {
		errs = append(errs, fmt.Errorf("--interval: %s: must be positive", o.Interval))
	}
	return errors.Join(errs...)
}

const statusUsage = `Usage:
  kubectl prepull status [LIST] [-A] [--watch] [-o json|yaml]

Shows each PrePullList's Ready nodes and conditions; per image its digest
and the nodes ready and failed; a progress bar per node for the images
being pulled, with bytes and rate; and every failure with its node, reason
and message. --watch redraws until every list shown is Ready.
`

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	opts := NewStatusOptions()
	name, ok, err := parseOne("status", statusUsage, "list's name", args, opts)
	if !ok {
		return err
	}
	opts.List = name
	if err := opts.Validate(); err != nil {
		return err
	}
	c, ns, err := opts.client()
	if err != nil {
		return err
	}
	if opts.AllNamespaces {
		ns = ""
	}
	tty := false
	if f, ok := stdout.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	for {
		reports, err := inspect.Lists(ctx, c, ns, opts.List, time.Now())
		if err != nil {
			return err
		}
		var frame bytes.Buffer
		if err := opts.print(&frame, reports, func(w io.Writer) error { return inspect.PrintLists(w, reports) }); err != nil {
			return err
		}
		if opts.Watch && tty {
			// Home the cursor and clear the screen: the frame redraws in place.
			fmt.Fprint(stdout, "\x1b[H\x1b[2J")
		}
		if _, err := stdout.Write(frame.Bytes()); err != nil {
			return err
		}
		if !opts.Watch || allReady(reports) {
			return nil
		}
		if !tty {
			fmt.Fprintln(stdout)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(opts.Interval):
		}
	}
}

// parseOne parses the flags of command into opts and returns the one
// positional argument, "" when there is none; ok is false, with the error or
// none, when the command must not go on (bad flags, --help).
func parseOne(command, usage, what string, args []string, opts interface{ AddFlags(*pflag.FlagSet) }) (arg string, ok bool, err error) {
	fs := pflag.NewFlagSet("prepull "+command, pflag.ContinueOnError)
	opts.AddFlags(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); errors.Is(err, pflag.ErrHelp) {
		return "", false, nil
	} else if err != nil {
		return "", false, err
	}
	if fs.NArg() > 1 {
		return "", false, fmt.Errorf("%s: at most one %s, got %v", command, what, fs.Args())
	}
	return fs.Arg(0), true, nil
}

func allReady(reports []inspect.ListReport) bool {
	for _, r := range reports {
		if !r.Ready {
			return false
		}
	}
	return len(reports) > 0
}

// NodeShowOptions are the flags of "prepull node NODE".
type NodeShowOptions struct {
	KubectlOptions
	// StartupTaint is the taint key the controller gates nodes with.
	StartupTaint string
	Node         string
}

// AddFlags defines the flags on fs.
func (o *NodeShowOptions) AddFlags(fs *pflag.FlagSet) {
	o.addFlags(fs)
	fs.StringVar(&o.StartupTaint, "startup-taint", o.StartupTaint, "the startup taint's key, as the controller's --startup-taint")
}

// Validate reports every invalid flag at once.
func (o *NodeShowOptions) Validate() error {
	errs := o.validate()
	if o.Node == "" {
		errs = append(errs, errors.New("node: name a node"))
	}
	return errors.Join(errs...)
}

const nodeShowUsage = `Usage:
  kubectl prepull node NODE [-o json|yaml]

Shows what a node holds, for which lists, pinned or not, its bytes and last
error, its image filesystem, and its startup gate.
`

func runNodeShow(ctx context.Context, args []string, stdout io.Writer) error {
	opts := &NodeShowOptions{KubectlOptions: newKubectlOptions(), StartupTaint: prepullv1.DefaultStartupTaint}
	name, ok, err := parseOne("node", nodeShowUsage, "node's name", args, opts)
	if !ok {
		return err
	}
	opts.Node = name
	if err := opts.Validate(); err != nil {
		return err
	}
	c, _, err := opts.client()
	if err != nil {
		return err
	}
	r, err := inspect.Node(ctx, c, opts.Node, opts.StartupTaint)
	if err != nil {
		return err
	}
	return opts.print(stdout, r, func(w io.Writer) error { return inspect.PrintNode(w, r) })
}
