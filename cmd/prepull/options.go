package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/bundle"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/controllers/prepulllist"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/doctor"
	"prepull.io/prepull/nodeauth"
)

// ServeOptions are the flags of every long-running command.
type ServeOptions struct {
	// MetricsAddr is where Prometheus metrics are served; "0" turns them off.
	MetricsAddr string
	// ProbeAddr is where /healthz and /readyz are served.
	ProbeAddr string
	// PprofAddr is where Go's profiles are served; "0" (the default) turns
	// them off.
	PprofAddr string
	// Namespace is the controller's namespace, which holds the pull secrets
	// it mirrors for the agents.
	Namespace string
}

func newServeOptions(metrics, probes string) ServeOptions {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "prepull-system"
	}
	return ServeOptions{MetricsAddr: metrics, ProbeAddr: probes, PprofAddr: "0", Namespace: ns}
}

func (o *ServeOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, `address of the Prometheus metrics endpoint; "0" turns it off`)
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, "address of /healthz and /readyz")
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", o.PprofAddr, `address of Go's profiles (/debug/pprof/); "0" turns them off`)
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "the controller's namespace, which holds the pull secrets mirrored for the agents (default: $POD_NAMESPACE, else prepull-system)")
}

func (o *ServeOptions) validate() []error {
	var errs []error
	if o.MetricsAddr != "0" {
		errs = append(errs, validAddr("metrics-bind-address", o.MetricsAddr))
	}
	errs = append(errs, validAddr("health-probe-bind-address", o.ProbeAddr))
	if o.PprofAddr != "0" {
		errs = append(errs, validAddr("pprof-bind-address", o.PprofAddr))
	}
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace: required"))
	}
	return errs
}

// ControllerOptions are the controller's flags.
type ControllerOptions struct {
	ServeOptions
	// LeaderElect makes replicas elect one leader, so that one reconciles.
	LeaderElect bool
	// LeaderElectionNamespace holds the lease; empty means Namespace.
	LeaderElectionNamespace string
	// InsecureRegistries are registry hosts resolved over plain HTTP.
	InsecureRegistries []string
	// ResolveTimeout bounds one tag resolution at a registry.
	ResolveTimeout time.Duration
	// SecretPoll is how often the pull secrets lists name are read again.
	SecretPoll time.Duration
	// EndpointAddr is where the leader serves agents their node's pull
	// credentials ("0" turns it off); EndpointAdvertise is how agents reach
	// it, by default $POD_IP and EndpointAddr's port.
	EndpointAddr, EndpointAdvertise string
	// TokenAudiences are the audiences the endpoint makes service-account
	// tokens for: those of the nodes' credential provider plugins that take
	// a pod's token (tokenAttributes).
	TokenAudiences []string
	// Gate is how gating lists hold nodes: "taint" (the startup taint,
	// removed when the images are present) or "condition" (only the
	// prepull.io/ImagesReady condition, for a readiness tool to act on).
	Gate string
	// StartupTaint is the key of the taint that gating lists hold nodes
	// with.
	StartupTaint string
	// Peers routes images between nodes (their agents' --peer-address):
	// PeerSeeds nodes per image fetch it from its registry, the others
	// from them, within RegistryBudgets ("host=concurrent/perHour").
	Peers           bool
	PeerSeeds       int
	RegistryBudgets []string
}

// NewControllerOptions returns the defaults.
func NewControllerOptions() *ControllerOptions {
	return &ControllerOptions{ServeOptions: newServeOptions(":8080", ":8081"), LeaderElect: true, ResolveTimeout: 30 * time.Second,
		StartupTaint: prepullv1.DefaultStartupTaint, SecretPoll: prepulllist.DefaultSecretPoll, EndpointAddr: ":8443", Gate: "taint",
		PeerSeeds: 1, RegistryBudgets: []string{"docker.io=4/10"}}
}

// AddFlags defines the flags on fs.
func (o *ControllerOptions) AddFlags(fs *pflag.FlagSet) {
	o.ServeOptions.addFlags(fs)
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "elect one active replica through a Lease")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", o.LeaderElectionNamespace, "namespace of the leader-election Lease (default: --namespace)")
	fs.StringSliceVar(&o.InsecureRegistries, "insecure-registries", o.InsecureRegistries, "registry hosts (host:port) to resolve tags at over plain HTTP")
	fs.DurationVar(&o.ResolveTimeout, "resolve-timeout", o.ResolveTimeout, "deadline of one tag resolution at a registry")
	fs.StringVar(&o.Gate, "gate", o.Gate, `how gating lists (spec.nodeGate) hold nodes: "taint", the startup taint the controller removes, or "condition", only the prepull.io/ImagesReady condition, which a readiness tool (a NodeReadinessRule) holds nodes on; no taint is touched`)
	fs.StringVar(&o.StartupTaint, "startup-taint", o.StartupTaint, "key of the taint nodes register with to wait for gating lists (spec.nodeGate); the controller removes it, and no other")
	fs.DurationVar(&o.SecretPoll, "secret-poll", o.SecretPoll, "how often the pull secrets lists name are read again by name, to notice a rotation")
	fs.StringVar(&o.EndpointAddr, "endpoint-bind-address", o.EndpointAddr, `where the leader serves agents the pull credentials of their own node's images, over TLS; "0" turns it off`)
	fs.StringSliceVar(&o.TokenAudiences, "token-audiences", o.TokenAudiences, "audiences of the nodes' credential provider plugins that take a service-account token (tokenAttributes): the endpoint makes tokens of a list's spec.serviceAccountName for these alone")
	fs.StringVar(&o.EndpointAdvertise, "endpoint-advertise-address", o.EndpointAdvertise, "host:port agents reach the endpoint at, published in the ConfigMap prepull-endpoint (default: $POD_IP and the bind address's port)")
	fs.BoolVar(&o.Peers, "peers", o.Peers, "route images between nodes: a few seed nodes fetch each image from its registry, the others from nodes that hold it (their agents' --peer-address), within the registry budgets")
	fs.IntVar(&o.PeerSeeds, "peer-seeds", o.PeerSeeds, "nodes per image that fetch it from its registry while no node holds it")
	fs.StringSliceVar(&o.RegistryBudgets, "registry-budget", o.RegistryBudgets, `a registry host's budget across the fleet, "host=concurrent/perHour" (0 unbounded; "*" is every other host's); the default keeps to Docker Hub's anonymous limit of 10 pulls an hour`)
}

// Validate reports every invalid flag at once.
func (o *ControllerOptions) Validate() error {
	errs := o.ServeOptions.validate()
	if o.ResolveTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--resolve-timeout: %s: must be positive", o.ResolveTimeout))
	}
	if o.EndpointAddr != "0" {
		errs = append(errs, validAddr("endpoint-bind-address", o.EndpointAddr))
	}
	if _, err := o.routing(); err != nil {
		errs = append(errs, err)
	}
	if o.Gate != "taint" && o.Gate != "condition" {
		errs = append(errs, fmt.Errorf("--gate: %q: must be taint or condition", o.Gate))
	}
	if o.SecretPoll <= 0 {
		errs = append(errs, fmt.Errorf("--secret-poll: %s: must be positive", o.SecretPoll))
	}
	if msgs := validation.IsQualifiedName(o.StartupTaint); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--startup-taint: %q: %s", o.StartupTaint, strings.Join(msgs, "; ")))
	}
	return errors.Join(errs...)
}

// RuntimeOptions are the flags of every command that talks to the node's
// runtime.
type RuntimeOptions struct {
	// CRIEndpoint is the runtime's CRI socket.
	CRIEndpoint string
	// ContainerdAddress is containerd's own API socket, used for what CRI
	// cannot do; empty means the CRI endpoint, which is the same socket for
	// containerd.
	ContainerdAddress string
	// CallTimeout bounds every runtime call but pulls.
	CallTimeout time.Duration
	// PullTimeout bounds one pull, unless the spec sets a shorter one.
	PullTimeout time.Duration
	// ArchiveDir is the directory the archive paths of lists are relative
	// to.
	ArchiveDir string
	// ArchiveHosts and ArchiveMaxBytes are the policy of archives given by
	// URL (bundle.FetchPolicy): the hosts allowed beyond https at public
	// addresses, and the most a download may be.
	ArchiveHosts    []string
	ArchiveMaxBytes int64
	// RegistryHosts is the directory of containerd's hosts.toml files, for
	// what the agent reads from registries itself (an image's size, a
	// resolved tag's signatures); the
	// agent takes it from containerd's configuration, not from a flag.
	RegistryHosts string
	// Snapshotter is the CRI plugin's snapshotter, from containerd's
	// configuration: imports unpack with it, and an image's layers are
	// looked up in it (a lazy-pulling snapshotter leaves them remote).
	Snapshotter string
}

func newRuntimeOptions() RuntimeOptions {
	return RuntimeOptions{CRIEndpoint: "/run/containerd/containerd.sock", CallTimeout: cri.DefaultCallTimeout, PullTimeout: prepullv1.DefaultPullTimeout,
		ArchiveDir: "/var/lib/prepull/archives", ArchiveMaxBytes: bundle.DefaultMaxDownload}
}

func (o *RuntimeOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.CRIEndpoint, "cri-endpoint", o.CRIEndpoint, "path of the runtime's CRI socket")
	fs.StringVar(&o.ContainerdAddress, "containerd-address", o.ContainerdAddress, "path of containerd's API socket (default: the CRI endpoint)")
	fs.DurationVar(&o.CallTimeout, "runtime-call-timeout", o.CallTimeout, "deadline of each runtime call but pulls")
	fs.DurationVar(&o.PullTimeout, "pull-timeout", o.PullTimeout, "deadline of one image pull or import, unless a list sets a shorter one")
	fs.StringVar(&o.ArchiveDir, "archive-dir", o.ArchiveDir, "directory that the archive paths of lists (source.archive.path) are relative to")
	fs.StringSliceVar(&o.ArchiveHosts, "archive-hosts", o.ArchiveHosts, "hosts (host or host:port) that archives given by URL may also come from over plain http, at a loopback or link-local address, or by a redirect; any other URL must be https to a public address, on its own host")
	fs.Int64Var(&o.ArchiveMaxBytes, "archive-max-bytes", o.ArchiveMaxBytes, "the most bytes an archive download may be")
}

// archives is the policy of archives given by URL.
func (o *RuntimeOptions) archives() bundle.FetchPolicy {
	return bundle.FetchPolicy{Hosts: o.ArchiveHosts, MaxBytes: o.ArchiveMaxBytes}
}

func (o *RuntimeOptions) validate() []error {
	var errs []error
	if o.CRIEndpoint == "" {
		errs = append(errs, errors.New("--cri-endpoint: required"))
	}
	if o.CallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--runtime-call-timeout: %s: must be positive", o.CallTimeout))
	}
	if o.PullTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--pull-timeout: %s: must be positive", o.PullTimeout))
	}
	if !filepath.IsAbs(o.ArchiveDir) {
		errs = append(errs, fmt.Errorf("--archive-dir: %q: must be an absolute path", o.ArchiveDir))
	}
	if o.ArchiveMaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("--archive-max-bytes: %d: must be positive", o.ArchiveMaxBytes))
	}
	return errs
}

// AgentOptions are the node agent's flags.
type AgentOptions struct {
	ServeOptions
	RuntimeOptions
	// NodeName is the node the agent serves; from NODE_NAME by default, which
	// the DaemonSet sets from the downward API.
	NodeName string
	// MaxConcurrentPulls bounds the pulls under way at once on the node.
	MaxConcurrentPulls int
	// StatusInterval is the least time between two status writes.
	StatusInterval time.Duration
	// ResyncInterval is how often everything is verified again.
	ResyncInterval time.Duration
	// BackoffBase is the first wait after a failed pull; it doubles.
	BackoffBase time.Duration
	// DiskBudget is the fraction of the image filesystem past which no
	// pull starts; 0 turns the budget off, AutoDiskBudget derives it from
	// the kubelet's configuration (diskBudget).
	DiskBudget float64
	// CollectStrayPins takes off pins whose owner no spec entry names.
	CollectStrayPins bool
	CheckOptions
	// Credentials is where the agent gets pull credentials: "endpoint" (the
	// controller's, proving its node with the token at NodeToken) or
	// "mirrors" (the mirrored Secrets, read directly).
	Credentials, NodeToken string
	// PeerAddress, when set, is where the agent serves its node's images
	// to peer agents, and fetches from them first; PeerMaxServing bounds
	// the blobs it serves at once.
	PeerAddress    string
	PeerMaxServing int
}

// CheckOptions are the files the doctor reads on a node, besides what the
// runtime says over CRI.
type CheckOptions struct {
	// ContainerdConfig is containerd's configuration file; "" skips its
	// checks.
	ContainerdConfig string
	// KubeletConfig is the kubelet's configuration file; "" skips its
	// checks.
	KubeletConfig string
	// CredentialProviderConfig and CredentialProviderBinDir are the
	// kubelet's credential provider plugins, which the agent runs as the
	// kubelet does; "" for none.
	CredentialProviderConfig, CredentialProviderBinDir string
}

func (o *CheckOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.ContainerdConfig, "containerd-config", o.ContainerdConfig, `containerd's configuration file, for the doctor's checks of its image settings ("" skips them)`)
	fs.StringVar(&o.KubeletConfig, "kubelet-config", o.KubeletConfig, `the kubelet's configuration file, for the doctor's checks of image GC and credential verification ("" skips them)`)
	fs.StringVar(&o.CredentialProviderConfig, "image-credential-provider-config", o.CredentialProviderConfig, "the kubelet's credential provider plugin config (a file, or a directory of them), to pull with the credentials the node's plugins give, as the kubelet does")
	fs.StringVar(&o.CredentialProviderBinDir, "image-credential-provider-bin-dir", o.CredentialProviderBinDir, "the directory of the kubelet's credential provider plugins")
}

// NewAgentOptions returns the defaults.
func NewAgentOptions() *AgentOptions {
	return &AgentOptions{
		NodeName:           os.Getenv("NODE_NAME"),
		ServeOptions:       newServeOptions(":8083", ":8082"),
		RuntimeOptions:     newRuntimeOptions(),
		MaxConcurrentPulls: nodeimageset.DefaultMaxConcurrentPulls,
		StatusInterval:     nodeimageset.DefaultStatusInterval,
		ResyncInterval:     nodeimageset.DefaultResyncInterval,
		BackoffBase:        nodeimageset.DefaultBackoffBase,
		DiskBudget:         AutoDiskBudget,
		CollectStrayPins:   true,
		Credentials:        "endpoint",
		NodeToken:          nodeauth.TokenPath,
		CheckOptions:       CheckOptions{ContainerdConfig: "/etc/containerd/config.toml"},
		PeerMaxServing:     4,
	}
}

// AddFlags defines the flags on fs.
func (o *AgentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "the node this agent serves (default: $NODE_NAME)")
	o.RuntimeOptions.addFlags(fs)
	o.ServeOptions.addFlags(fs)
	fs.IntVar(&o.MaxConcurrentPulls, "max-concurrent-pulls", o.MaxConcurrentPulls, "pulls under way at once on this node")
	fs.DurationVar(&o.StatusInterval, "status-interval", o.StatusInterval, "least time between two writes of the node's status")
	fs.DurationVar(&o.ResyncInterval, "resync-interval", o.ResyncInterval, "how often images, tags and pins are verified again")
	fs.DurationVar(&o.BackoffBase, "backoff-base", o.BackoffBase, fmt.Sprintf("first wait after a failed pull; it doubles per attempt up to %s, with jitter", nodeimageset.DefaultBackoffMax))
	fs.Float64Var(&o.DiskBudget, "disk-budget", o.DiskBudget, fmt.Sprintf("fraction of the image filesystem past which no pull starts (0 turns it off); by default %.2f below the kubelet's lowest disk threshold (its image GC high threshold, its imagefs and nodefs eviction thresholds, read from --kubelet-config, or the kubelet's defaults without it), and refused above that threshold", doctor.DiskMargin))
	o.CheckOptions.addFlags(fs)
	fs.StringVar(&o.Credentials, "credentials", o.Credentials, `where pull credentials come from: "endpoint", the controller's, which serves this node's images' only (proving the node with --node-token), or "mirrors", the mirrored Secrets read directly (needs get on Secrets in the controller's namespace, every node's)`)
	fs.StringVar(&o.NodeToken, "node-token", o.NodeToken, "the service-account token projected for the audience "+nodeauth.Audience+", which proves the node to the controller's endpoint")
	fs.BoolVar(&o.CollectStrayPins, "collect-stray-pins", o.CollectStrayPins, "take off prepull pins whose owning list no longer wants the image on this node (turn off only when several agents share one runtime)")
	fs.StringVar(&o.PeerAddress, "peer-address", o.PeerAddress, `where this agent serves its node's images to peer agents over TLS, and where they reach it, host:port (the pod's own address under the host network, e.g. [$(POD_IP)]:8085); with it the agent fetches images from peers first, as the controller routes them (its --peers); "" turns peers off`)
	fs.IntVar(&o.PeerMaxServing, "peer-max-serving", o.PeerMaxServing, "blobs this agent serves to peers at once; a peer past it fetches from another holder")
}

// Validate reports every invalid flag at once.
func (o *AgentOptions) Validate() error {
	errs := append(o.ServeOptions.validate(), o.RuntimeOptions.validate()...)
	if o.NodeName == "" {
		errs = append(errs, errors.New("--node-name: required (or set NODE_NAME from the downward API)"))
	}
	if o.MaxConcurrentPulls < 1 {
		errs = append(errs, fmt.Errorf("--max-concurrent-pulls: %d: must be at least 1", o.MaxConcurrentPulls))
	}
	for flag, d := range map[string]time.Duration{"status-interval": o.StatusInterval, "resync-interval": o.ResyncInterval, "backoff-base": o.BackoffBase} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("--%s: %s: must be positive", flag, d))
		}
	}
	if o.Credentials != "endpoint" && o.Credentials != "mirrors" {
		errs = append(errs, fmt.Errorf("--credentials: %q: must be endpoint or mirrors", o.Credentials))
	}
	if (o.DiskBudget < 0 || o.DiskBudget > 1) && o.DiskBudget != AutoDiskBudget {
		errs = append(errs, fmt.Errorf("--disk-budget: %g: must be from 0 to 1", o.DiskBudget))
	}
	return errors.Join(errs...)
}

// AutoDiskBudget, as --disk-budget's value, derives the budget from the
// kubelet's configuration.
const AutoDiskBudget = -1

// diskBudget is the budget the agent keeps: --disk-budget, refused above
// the kubelet's lowest disk threshold (a node filled past it by images the
// kubelet may not remove evicts pods), or doctor.DiskMargin below that
// threshold when not given; 0 for none.
func (o *AgentOptions) diskBudget() (float64, error) {
	if o.DiskBudget == 0 {
		return 0, nil
	}
	lim, err := doctor.KubeletDiskLimit(o.KubeletConfig)
	if err != nil {
		return 0, fmt.Errorf("--kubelet-config: %w", err)
	}
	if o.DiskBudget == AutoDiskBudget {
		return lim.Budget(), nil
	}
	if err := doctor.CheckBudget(o.DiskBudget, lim); err != nil {
		return 0, fmt.Errorf("--disk-budget: %w", err)
	}
	return o.DiskBudget, nil
}

func validAddr(flag, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--%s: %q: %w", flag, addr, err)
	}
	return nil
}

// endpointAdvertise is how agents reach the endpoint: the flag, else
// $POD_IP with the bind address's port; "" when neither says.
func (o *ControllerOptions) endpointAdvertise() string {
	if o.EndpointAdvertise != "" {
		return o.EndpointAdvertise
	}
	ip := os.Getenv("POD_IP")
	_, port, err := net.SplitHostPort(o.EndpointAddr)
	if ip == "" || err != nil {
		return ""
	}
	return net.JoinHostPort(ip, port)
}

// routing is the controller's routing of images between nodes, nil when
// --peers is off.
func (o *ControllerOptions) routing() (*prepulllist.PeerRouting, error) {
	if o.PeerSeeds < 1 {
		return nil, fmt.Errorf("--peer-seeds: %d: must be at least 1", o.PeerSeeds)
	}
	p := &prepulllist.PeerRouting{Seeds: o.PeerSeeds, Budgets: map[string]prepulllist.RegistryBudget{}}
	for _, b := range o.RegistryBudgets {
		host, limits, ok := strings.Cut(b, "=")
		var concurrent, perHour int
		if ok {
			_, err := fmt.Sscanf(limits, "%d/%d", &concurrent, &perHour)
			ok = err == nil && concurrent >= 0 && perHour >= 0 && host != ""
		}
		if !ok {
			return nil, fmt.Errorf("--registry-budget: %q: want host=concurrent/perHour, e.g. docker.io=4/10", b)
		}
		if host == "*" {
			p.Budget = prepulllist.RegistryBudget{Concurrent: concurrent, PerHour: perHour}
			continue
		}
		p.Budgets[host] = prepulllist.RegistryBudget{Concurrent: concurrent, PerHour: perHour}
	}
	if !o.Peers {
		return nil, nil
	}
	return p, nil
}
