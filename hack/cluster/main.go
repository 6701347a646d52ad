// Command cluster runs prepull's local cluster (package e2e/cluster) and its
// demo:
//
//	go run ./hack/cluster up      # a cluster from the built binaries (-nodes N for N nodes)
//	go run ./hack/cluster demo    # up, deploy prepull, pre-pull, stop the registry, start pods
//	go run ./hack/cluster down    # stop everything and restore the machine
//
// make demo and make demo-down call it as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"prepull.io/prepull/e2e/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	dir := fs.String("dir", "/var/lib/prepull-cluster", "the cluster's directory (the overlay in hack/cluster/overlay names paths in it)")
	bin := fs.String("bin", "bin", "directory of the built binaries")
	nodes := fs.Int("nodes", 1, fmt.Sprintf("how many nodes up and demo bring up (1 to %d)", cluster.MaxNodes))
	install := fs.String("install", string(cluster.Kustomize), "how demo installs prepull: kustomize (hack/cluster/overlay) or helm (deploy/chart/prepull with hack/cluster/values.yaml)")
	if len(os.Args) < 2 {
		return errors.New("usage: cluster up|down|demo [flags]")
	}
	if err := fs.Parse(os.Args[2:]); err != nil {
		return err
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	if *nodes < 1 || *nodes > cluster.MaxNodes {
		return fmt.Errorf("-nodes %d: must be from 1 to %d", *nodes, cluster.MaxNodes)
	}
	c := cluster.New(*dir, binDir, *nodes)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "up":
		return c.Start(ctx, logf)
	case "down":
		if err := c.Down(logf); err != nil {
			return err
		}
		if left := c.Leftovers(); len(left) > 0 {
			return fmt.Errorf("the cluster in %s is down but left: %s", c.Dir, strings.Join(left, "; "))
		}
		logf("cluster in %s is down; the machine is as it was", c.Dir)
		return nil
	case "demo":
		how, err := cluster.ParseInstall(*install)
		if err != nil {
			return err
		}
		return demo(ctx, c, how)
	}
	return fmt.Errorf("unknown command %q: want up, down or demo", os.Args[1])
}

func logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
