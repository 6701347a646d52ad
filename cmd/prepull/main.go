// Command prepull is the one binary of prepull: the controller, the node agent
// and the tools around them are its subcommands, so that one image carries
// everything an air-gapped install needs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	// The roots a registry's or an archive server's TLS is checked against
	// when the system has none: the image is FROM scratch, and its only
	// content beside this binary is what go.sum pins.
	_ "golang.org/x/crypto/x509roots/fallback"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `prepull makes container images present, verified and pinned on Kubernetes
nodes before pods need them.

Usage:
  prepull <command> [flags]

Commands:
  controller   run the controller (a Deployment, leader-elected)
  agent        run the node agent (a DaemonSet, one per node)
  bundle       write the images of PrePullLists into one archive, for
               nodes no registry reaches
  node apply   make the images of PrePullLists present and pinned on this
               node, with no API server (node bootstrap, image baking)
  status       show lists' rollouts: nodes, images, pulls under way, failures
  node NODE    show what a node holds, for which lists, and its gate
  doctor       check a node's runtime configuration for what defeats
               pre-pulling (on the node, or through the API for NODE)
  version      print the version

The binary also answers as kubectl-prepull: put it on PATH under that name
and run "kubectl prepull status", "kubectl prepull node NODE" or
"kubectl prepull doctor NODE"; kubectl's --kubeconfig, --context and -n
flags apply.

Run "prepull <command> --help" for a command's flags.
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "prepull:", err)
		os.Exit(1)
	}
}

// errUsage reports a command line that names no known command.
var errUsage = errors.New("unknown or missing command; run \"prepull --help\"")

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "controller":
		return runController(ctx, args[1:])
	case "agent":
		return runAgent(ctx, args[1:])
	case "bundle":
		return runBundle(ctx, args[1:], stdout)
	case "node":
		if len(args) > 1 && args[1] == "apply" {
			return runNode(ctx, args[1:], stdout)
		}
		return runNodeShow(ctx, args[1:], stdout)
	case "status":
		return runStatus(ctx, args[1:], stdout)
	case "doctor":
		return runDoctor(ctx, args[1:], stdout)
	case "version":
		_, err := fmt.Fprintln(stdout, version)
		return err
	case "help", "-h", "--help":
		_, err := fmt.Fprint(stdout, usage)
		return err
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("%q: %w", args[0], errUsage)
	}
}
