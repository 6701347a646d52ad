package prepulllist

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// Reconcile counts and durations come from controller-runtime
// (controller_runtime_reconcile_total, controller_runtime_reconcile_time_seconds).
var (
	resolutions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_tag_resolutions_total",
		Help: "Tag resolutions at the registry, by result (resolved, failed).",
	}, []string{"result"})

	verifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_signature_verifications_total",
		Help: "Checks of a digest's signatures at its registry, by result (verified, SignatureMissing, SignatureInvalid, SignatureUnavailable); a digest is checked once for the cluster.",
	}, []string{"result"})

	listNodes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "prepull_list_nodes",
		Help: "Selected nodes of each PrePullList, by state (ready, pulling, waiting, failed).",
	}, []string{"namespace", "name", "state"})

	rollouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_list_rollouts_total",
		Help: "Rollouts of each PrePullList that ended Ready (the list turned Ready: created, changed, or a tag moved).",
	}, []string{"namespace", "name"})
)

func init() {
	metrics.Registry.MustRegister(resolutions, verifications, listNodes, rollouts)
}

func recordNodes(l *prepullv1.PrePullList, n prepullv1.NodeCounts) {
	for state, v := range map[string]int32{"ready": n.Ready, "pulling": n.Pulling, "waiting": n.Waiting, "failed": n.Failed} {
		listNodes.WithLabelValues(l.Namespace, l.Name, state).Set(float64(v))
	}
}

func forgetNodes(namespace, name string) {
	listNodes.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
	rollouts.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
}

var routeWrites = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "prepull_controller_route_writes_total",
	Help: "Writes of ImageRoutes (created or updated), with peers on: they grow with each image's holders and grants, not with the fleet.",
})

func init() { metrics.Registry.MustRegister(routeWrites) }
