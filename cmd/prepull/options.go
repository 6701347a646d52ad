package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"
)

// ControllerOptions are the controller's flags.
type ControllerOptions struct {
	// MetricsAddr is where Prometheus metrics are served; "0" turns them off.
	MetricsAddr string
	// ProbeAddr is where /healthz and /readyz are served.
	ProbeAddr string
	// LeaderElect makes replicas elect one leader, so that one reconciles.
	LeaderElect bool
	// LeaderElectionNamespace holds the lease; empty means Namespace.
	LeaderElectionNamespace string
	// Namespace is the controller's own namespace, which holds the mirrored
	// pull secrets the agents read.
	Namespace string
	// InsecureRegistries are registry hosts resolved over plain HTTP.
	InsecureRegistries []string
	// ResolveTimeout bounds one tag resolution at a registry.
	ResolveTimeout time.Duration
}

// NewControllerOptions returns the defaults.
func NewControllerOptions() *ControllerOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "prepull-system"
	}
	return &ControllerOptions{MetricsAddr: ":8080", ProbeAddr: ":8081", LeaderElect: true, Namespace: ns, ResolveTimeout: 30 * time.Second}
}

// AddFlags defines the flags on fs.
func (o *ControllerOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, `address of the Prometheus metrics endpoint; "0" turns it off`)
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, "address of /healthz and /readyz")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "elect one active replica through a Lease")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", o.LeaderElectionNamespace, "namespace of the leader-election Lease (default: --namespace)")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "the controller's namespace, where pull secrets are mirrored for the agents (default: $POD_NAMESPACE, else prepull-system)")
	fs.StringSliceVar(&o.InsecureRegistries, "insecure-registries", o.InsecureRegistries, "registry hosts (host:port) to resolve tags at over plain HTTP")
	fs.DurationVar(&o.ResolveTimeout, "resolve-timeout", o.ResolveTimeout, "deadline of one tag resolution at a registry")
}

// Validate reports every invalid flag at once.
func (o *ControllerOptions) Validate() error {
	var errs []error
	if o.MetricsAddr != "0" {
		errs = append(errs, validAddr("metrics-bind-address", o.MetricsAddr))
	}
	errs = append(errs, validAddr("health-probe-bind-address", o.ProbeAddr))
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace: required"))
	}
	if o.ResolveTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--resolve-timeout: %s: must be positive", o.ResolveTimeout))
	}
	return errors.Join(errs...)
}

// AgentOptions are the node agent's flags.
type AgentOptions struct {
	// NodeName is the node the agent serves; from NODE_NAME by default, which
	// the DaemonSet sets from the downward API.
	NodeName string
	// CRIEndpoint is the runtime's CRI socket.
	CRIEndpoint string
	// ContainerdAddress is containerd's own API socket, used for what CRI
	// cannot do; empty means the CRI endpoint, which is the same socket for
	// containerd.
	ContainerdAddress string
	// ProbeAddr is where /healthz and /readyz are served.
	ProbeAddr string
	// CallTimeout bounds every runtime call but pulls.
	CallTimeout time.Duration
	// PullTimeout bounds one pull.
	PullTimeout time.Duration
}

// NewAgentOptions returns the defaults.
func NewAgentOptions() *AgentOptions {
	return &AgentOptions{
		NodeName:    os.Getenv("NODE_NAME"),
		CRIEndpoint: "/run/containerd/containerd.sock",
		ProbeAddr:   ":8082",
		CallTimeout: 30 * time.Second,
		PullTimeout: 10 * time.Minute,
	}
}

// AddFlags defines the flags on fs.
func (o *AgentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "the node this agent serves (default: $NODE_NAME)")
	fs.StringVar(&o.CRIEndpoint, "cri-endpoint", o.CRIEndpoint, "path of the runtime's CRI socket")
	fs.StringVar(&o.ContainerdAddress, "containerd-address", o.ContainerdAddress, "path of containerd's API socket (default: the CRI endpoint)")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, "address of /healthz and /readyz")
	fs.DurationVar(&o.CallTimeout, "runtime-call-timeout", o.CallTimeout, "deadline of each runtime call but pulls")
	fs.DurationVar(&o.PullTimeout, "pull-timeout", o.PullTimeout, "deadline of one image pull")
}

// Validate reports every invalid flag at once.
func (o *AgentOptions) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name: required (or set NODE_NAME from the downward API)"))
	}
	if o.CRIEndpoint == "" {
		errs = append(errs, errors.New("--cri-endpoint: required"))
	}
	if o.CallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--runtime-call-timeout: %s: must be positive", o.CallTimeout))
	}
	if o.PullTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--pull-timeout: %s: must be positive", o.PullTimeout))
	}
	errs = append(errs, validAddr("health-probe-bind-address", o.ProbeAddr))
	return errors.Join(errs...)
}

func validAddr(flag, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--%s: %q: %w", flag, addr, err)
	}
	return nil
}
