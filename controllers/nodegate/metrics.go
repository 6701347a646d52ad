package nodegate

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var gateOpenSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "prepull_node_gate_open_seconds",
	Help:    "Seconds from a node's registration to the removal of its startup taint, by what opened it (images, timeout, ungated).",
	Buckets: prometheus.ExponentialBuckets(1, 2, 14),
}, []string{"by"})

func init() {
	metrics.Registry.MustRegister(gateOpenSeconds)
}
