package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
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
func newManager(so ServeOptions, o ctrl.Options) (ctrl.Manager, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	o.Scheme = scheme
	o.Metrics = metricsserver.Options{BindAddress: so.MetricsAddr}
	o.HealthProbeBindAddress = so.ProbeAddr
	mgr, err := ctrl.NewManager(cfg, o)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}

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
