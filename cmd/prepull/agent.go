package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
)

func runAgent(ctx context.Context, args []string) error {
	opts := NewAgentOptions()
	fs := pflag.NewFlagSet("prepull agent", pflag.ContinueOnError)
	opts.AddFlags(fs)
	zapOpts := bindLogFlags(fs)
	if err := fs.Parse(args); errors.Is(err, pflag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	log := zap.New(zap.UseFlagOptions(zapOpts)).WithValues("node", opts.NodeName)
	ctrl.SetLogger(log)
	ctx = logr.NewContext(ctx, log)

	images, err := cri.NewRemote(opts.CRIEndpoint,
		cri.WithCallTimeout(opts.CallTimeout), cri.WithPullTimeout(opts.PullTimeout))
	if err != nil {
		return err
	}
	defer images.Close()
	store, closeStore, err := openStore(ctx, images, opts)
	if err != nil {
		return err
	}
	defer closeStore()
	_, pinErr := store.Owners(ctx, "prepull.io/probe:none")
	log.Info("Runtime capabilities", "pinTagImport", !errors.Is(pinErr, cri.ErrUnsupported))

	srv := &http.Server{Addr: opts.ProbeAddr, Handler: probes(images), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("Agent serving probes", "address", opts.ProbeAddr, "criEndpoint", opts.CRIEndpoint)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("probe server: %w", err)
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// openStore chooses the Store for what only containerd can do: containerd's
// own API when the runtime is containerd, else one that answers
// ErrUnsupported for everything and names the runtime.
func openStore(ctx context.Context, images *cri.Remote, opts *AgentOptions) (cri.Store, func(), error) {
	log := logr.FromContextOrDiscard(ctx)
	name, err := images.RuntimeName(ctx)
	if err != nil {
		// The runtime may start after the agent; readiness says so until it
		// answers. Assume containerd, the default endpoint's runtime.
		log.Error(err, "Runtime does not answer yet", "criEndpoint", opts.CRIEndpoint)
		name = "containerd"
	}
	if !strings.HasPrefix(name, "containerd") {
		log.Info("Runtime is not containerd: pinning, tagging, progress and import are unsupported", "runtime", name)
		return cri.Unsupported{Runtime: name}, func() {}, nil
	}
	addr := opts.ContainerdAddress
	if addr == "" {
		addr = opts.CRIEndpoint
	}
	s, err := containerd.New(addr, containerd.WithTimeout(opts.CallTimeout))
	if err != nil {
		return nil, nil, err
	}
	log.Info("Connected to the runtime", "runtime", name, "containerdAddress", addr)
	return s, func() { s.Close() }, nil
}

// probes serves /healthz (the process is alive) and /readyz (the runtime
// answers CRI calls).
func probes(images cri.ImageService) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if _, err := images.ImageFsInfo(ctx); err != nil {
			http.Error(w, "runtime not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
