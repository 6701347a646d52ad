package nodeimageset

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	pullsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_agent_pulls_total",
		Help: "Pull attempts on this node, by result (success, or the failure's reason).",
	}, []string{"result"})
	pullDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "prepull_agent_pull_duration_seconds",
		Help:    "Duration of successful pulls on this node.",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
	})
	pullBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "prepull_agent_pull_bytes",
		Help:    "Size of the images pulled on this node, as the runtime counts it.",
		Buckets: prometheus.ExponentialBuckets(1<<20, 4, 10),
	})
	tagsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "prepull_agent_tags_total",
		Help: "Tags made, or moved, to name their resolved digest on this node.",
	})
	transitionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_agent_image_transitions_total",
		Help: "Images of this node's NodeImageSet that entered a phase, by phase.",
	}, []string{"phase"})
	imagesGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "prepull_agent_images",
		Help: "Images of this node's NodeImageSet, by state (present, pinned).",
	}, []string{"state"})
	pinnedBytesGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "prepull_agent_pinned_bytes",
		Help: "Bytes of the images pinned on this node.",
	})
	fetchedImages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_agent_images_fetched_total",
		Help: "Images this agent made present, by where their bytes came from (Registry, Peer, Archive).",
	}, []string{"source"})
	fetchedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_agent_image_bytes_fetched_total",
		Help: "Size, as the runtime counts it, of the images this agent made present, by where their bytes came from (Registry, Peer, Archive).",
	}, []string{"source"})
)

func init() {
	metrics.Registry.MustRegister(pullsTotal, pullDuration, pullBytes, tagsTotal, transitionsTotal, imagesGauge, pinnedBytesGauge, pluginRuns, fetchedImages, fetchedBytes)
}

var pluginRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "prepull_agent_credential_provider_runs_total",
	Help: "Runs of the node's kubelet credential provider plugins, by plugin and result (ok, failed); an answer kept for its cacheDuration is not a run.",
}, []string{"provider", "result"})

// CountPluginRun counts a run of a credential provider plugin.
func CountPluginRun(provider string, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	pluginRuns.WithLabelValues(provider, result).Inc()
}
