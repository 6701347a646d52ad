package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// options is a command's flags.
type options interface {
	AddFlags(*pflag.FlagSet)
	Validate() error
}

// parseFlags parses args into opts and the logging flags, and validates
// opts. It returns nil options and no error for --help.
func parseFlags(name string, args []string, opts options) (*zap.Options, error) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	opts.AddFlags(fs)
	zapOpts := bindLogFlags(fs)
	if err := fs.Parse(args); errors.Is(err, pflag.ErrHelp) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return zapOpts, nil
}

// newScheme knows the Kubernetes types and prepull's.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := prepullv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}

// newLogger is the binaries' logger: zap as the --zap-* flags say, at most
// at verbosity maxLogLevel.
func newLogger(opts *zap.Options) logr.Logger {
	l := zap.New(zap.UseFlagOptions(opts))
	return logr.New(cappedSink{l.GetSink()})
}

// maxLogLevel is the highest verbosity the binaries log at, whatever
// --zap-log-level asks: from level 8, client-go logs the bodies of API
// requests and responses, and those of Secrets hold pull credentials.
const maxLogLevel = 7

// cappedSink drops what is logged above maxLogLevel.
type cappedSink struct{ logr.LogSink }

func (s cappedSink) Enabled(level int) bool {
	return level <= maxLogLevel && s.LogSink.Enabled(level)
}

func (s cappedSink) Info(level int, msg string, kv ...any) {
	if level <= maxLogLevel {
		s.LogSink.Info(level, msg, kv...)
	}
}

func (s cappedSink) WithValues(kv ...any) logr.LogSink {
	return cappedSink{s.LogSink.WithValues(kv...)}
}

func (s cappedSink) WithName(name string) logr.LogSink { return cappedSink{s.LogSink.WithName(name)} }

// WithCallDepth keeps the callers zap reports right through the wrapper.
func (s cappedSink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := s.LogSink.(logr.CallDepthLogSink); ok {
		return cappedSink{cd.WithCallDepth(depth)}
	}
	return s
}

// bindLogFlags defines zap's --zap-* logging flags on fs and returns the
// options they fill.
func bindLogFlags(fs *pflag.FlagSet) *zap.Options {
	opts := &zap.Options{}
	gfs := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	opts.BindFlags(gfs)
	fs.AddGoFlagSet(gfs)
	return opts
}

// newManager builds a controller manager with the scheme, the metrics and
// probe endpoints of so and a liveness check; o sets the rest.
//
// It first waits for the API server: building a manager reads the API's
// discovery, and a replica started while the API server is away (an
// outage, a control-plane upgrade) would otherwise exit and be restarted
// with the kubelet's growing back-off, long after the API server is back.
func newManager(ctx context.Context, so ServeOptions, o ctrl.Options) (ctrl.Manager, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if err := waitForAPIServer(ctx, cfg, so.ProbeAddr); err != nil {
		return nil, err
	}
	o.Scheme = scheme
	o.Metrics = metricsserver.Options{BindAddress: so.MetricsAddr}
	o.HealthProbeBindAddress = so.ProbeAddr
	o.PprofBindAddress = so.PprofAddr
	mgr, err := ctrl.NewManager(cfg, o)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}

// waitForAPIServer returns once the API server at cfg serves prepull's API
// group, asking again every apiRetryInterval, or when ctx ends. Answering
// is not enough: an API server that has just started serves its own groups
// before it serves the CRDs', and a manager built then fails to map
// prepull's kinds.
// Meanwhile the probe address answers: live, and not ready, so that the
// kubelet's liveness probe does not restart a replica that only waits.
func waitForAPIServer(ctx context.Context, cfg *rest.Config, probeAddr string) error {
	// Discovery calls take no context: a timeout bounds a call to an API
	// server that accepts and does not answer.
	dcfg := rest.CopyConfig(cfg)
	dcfg.Timeout = 5 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(dcfg)
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	ping := func() error {
		_, err := dc.ServerResourcesForGroupVersion(prepullv1.GroupVersion.String())
		return err
	}
	if ping() == nil {
		return nil
	}
	if probeAddr != "" && probeAddr != "0" {
		stop, err := serveWaiting(probeAddr)
		if err != nil {
			return err
		}
		defer stop()
	}
	err = wait.PollUntilContextCancel(ctx, apiRetryInterval, false, func(context.Context) (bool, error) {
		if err := ping(); err != nil {
			ctrl.Log.Info("Waiting for the API server", "host", cfg.Host, "error", err.Error())
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("wait for the API server at %s: %w", cfg.Host, err)
	}
	return nil
}

// serveWaiting serves the probes of a replica waiting for the API server
// on addr until stop, which frees addr for the manager's own probes.
func serveWaiting(addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health probes on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "waiting for the API server", http.StatusServiceUnavailable)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		_ = srv.Close()
		<-done
	}, nil
}

// apiRetryInterval is the wait between two tries of an API server that
// does not answer: a waiting replica starts within that time of its return.
const apiRetryInterval = time.Second

// cacheSynced fails until the manager's caches have read what they watch
// from the API server.
func cacheSynced(mgr ctrl.Manager) healthz.Checker {
	return func(r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("not synced with the API server")
		}
		return nil
	}
}
