package peer

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	served = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prepull_agent_peer_requests_served_total",
		Help: "Blob requests of peer agents, by result (ok, unauthenticated, forbidden, busy).",
	}, []string{"result"})
	bytesServed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "prepull_agent_peer_bytes_served_total",
		Help: "Bytes of blobs this agent served to peers.",
	})
	bytesFetched = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "prepull_agent_bytes_from_peers_total",
		Help: "Bytes of blobs this agent fetched from peers.",
	})
)

func init() {
	metrics.Registry.MustRegister(served, bytesServed, bytesFetched)
}
