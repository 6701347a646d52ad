// Command containerd-stargz serves the stargz snapshotter of
// github.com/containerd/stargz-snapshotter (a lazy-pulling snapshotter:
// it mounts eStargz layers from their registry over FUSE and fetches their
// files on first read) as a containerd proxy snapshotter on a unix socket,
// for the test ground's containerd (hack/build-tool.sh stargz). The
// module's own command is not served by the Go module proxy; its library
// is.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml"
	"google.golang.org/grpc"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "containerd-stargz:", err)
		os.Exit(1)
	}
}

func run() error {
	address := flag.String("address", "", "unix socket to serve the snapshotter on")
	root := flag.String("root", "", "directory of the snapshotter's state and caches")
	configFile := flag.String("config", "", "TOML file of the snapshotter's service configuration (optional)")
	flag.Parse()
	if *address == "" || *root == "" {
		return errors.New("--address and --root are required")
	}
	var cfg service.Config
	if *configFile != "" {
		data, err := os.ReadFile(*configFile)
		if err != nil {
			return err
		}
		if err := toml.Unmarshal(data, &cfg); err != nil {
			return fmt.Errorf("%s: %w", *configFile, err)
		}
	}
	if err := service.Supported(*root); err != nil {
		return fmt.Errorf("the stargz snapshotter cannot run here: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &cfg)
	if err != nil {
		return err
	}
	defer sn.Close()
	if err := os.Remove(*address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", *address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		srv.Stop()
		return nil
	case err := <-served:
		return err
	}
}
