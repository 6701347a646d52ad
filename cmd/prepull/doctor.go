package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/doctor"
)

// DoctorOptions are the flags of "prepull doctor": on the node, the
// runtime and the files to read; through the API, kubectl's flags.
type DoctorOptions struct {
	RuntimeOptions
	CheckOptions
	KubectlOptions
	// DiskBudget is the agent's --disk-budget to check usage against.
	DiskBudget float64
	// Node, when set, reads the checks the node's agent reported instead
	// of running them here.
	Node string
}

// NewDoctorOptions returns the defaults: the agent's, and the kubelet's
// configuration where kubeadm puts it.
func NewDoctorOptions() *DoctorOptions {
	return &DoctorOptions{
		RuntimeOptions: newRuntimeOptions(),
		CheckOptions:   CheckOptions{ContainerdConfig: "/etc/containerd/config.toml", KubeletConfig: "/var/lib/kubelet/config.yaml"},
		KubectlOptions: newKubectlOptions(),
		DiskBudget:     NewAgentOptions().DiskBudget,
	}
}

// AddFlags defines the flags on fs.
func (o *DoctorOptions) AddFlags(fs *pflag.FlagSet) {
	o.RuntimeOptions.addFlags(fs)
	o.CheckOptions.addFlags(fs)
	o.KubectlOptions.addFlags(fs)
	fs.Float64Var(&o.DiskBudget, "disk-budget", o.DiskBudget, "the agent's --disk-budget, to check the image filesystem against (by default the agent's default, from --kubelet-config)")
}

// Validate reports every invalid flag at once.
func (o *DoctorOptions) Validate() error {
	errs := o.KubectlOptions.validate()
	if o.Node == "" {
		errs = append(errs, o.RuntimeOptions.validate()...)
	}
	if (o.DiskBudget < 0 || o.DiskBudget > 1) && o.DiskBudget != AutoDiskBudget {
		errs = append(errs, fmt.Errorf("--disk-budget: %g: must be from 0 to 1", o.DiskBudget))
	}
	return errors.Join(errs...)
}

// diskBudget is the budget to check against: --disk-budget as given, or
// the agent's default on this node (the kubelet's defaults when its
// configuration cannot be read, which a check reports).
func (o *DoctorOptions) diskBudget() float64 {
	if o.DiskBudget != AutoDiskBudget {
		return o.DiskBudget
	}
	lim, err := doctor.KubeletDiskLimit(o.KubeletConfig)
	if err != nil {
		lim, _ = doctor.KubeletDiskLimit("")
	}
	return lim.Budget()
}

const doctorUsage = `Usage:
  prepull doctor [--cri-endpoint SOCKET] [--containerd-config FILE] [--kubelet-config FILE]
  kubectl prepull doctor NODE

Checks a node for what silently defeats pre-pulling, each with a
pass/warn/fail line and what to do. Without NODE it runs on this node,
through the runtime's CRI socket and the configuration files, with no API
server. With NODE it shows what that node's agent found (no node access
needed). It exits non-zero when a check fails.
`

func runDoctor(ctx context.Context, args []string, stdout io.Writer) error {
	opts := NewDoctorOptions()
	name, ok, err := parseOne("doctor", doctorUsage, "node's name", args, opts)
	if !ok {
		return err
	}
	opts.Node = name
	if err := opts.Validate(); err != nil {
		return err
	}
	var checks []prepullv1.RuntimeCheck
	if opts.Node != "" {
		c, _, err := opts.client()
		if err != nil {
			return err
		}
		set := &prepullv1.NodeImageSet{}
		if err := c.Get(ctx, client.ObjectKey{Name: opts.Node}, set); err != nil {
			return fmt.Errorf("NodeImageSet %s: %w", opts.Node, err)
		}
		if len(set.Status.Checks) == 0 {
			return fmt.Errorf("node %s: its agent has reported no checks yet (it runs them at start: kubectl -n prepull-system get pods -o wide)", opts.Node)
		}
		checks = set.Status.Checks
	} else {
		rt, err := dialRuntime(ctx, opts.RuntimeOptions, "")
		if err != nil {
			return err
		}
		defer rt.Close()
		checks = checkNode(rt, opts.CheckOptions, opts.diskBudget()).Run(ctx)
	}
	if err := opts.print(stdout, checks, func(w io.Writer) error { return printChecks(w, checks) }); err != nil {
		return err
	}
	var failed []string
	for _, c := range checks {
		if c.Result == prepullv1.CheckFail {
			failed = append(failed, c.Name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d checks failed: %s", len(failed), len(checks), strings.Join(failed, ", "))
	}
	return nil
}

func printChecks(w io.Writer, checks []prepullv1.RuntimeCheck) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(string(c.Result)), c.Name, c.Message)
		if c.Advice != "" {
			fmt.Fprintf(tw, "\t\t→ %s\n", c.Advice)
		}
	}
	return tw.Flush()
}
