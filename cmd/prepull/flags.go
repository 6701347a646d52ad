package main

import (
	"flag"

	"github.com/spf13/pflag"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// bindLogFlags defines zap's --zap-* logging flags on fs and returns the
// options they fill.
func bindLogFlags(fs *pflag.FlagSet) *zap.Options {
	opts := &zap.Options{}
	gfs := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	opts.BindFlags(gfs)
	fs.AddGoFlagSet(gfs)
	return opts
}
