package main

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/fields"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/doctor"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/peer"
)

func runAgent(ctx context.Context, args []string) error {
	opts := NewAgentOptions()
	zapOpts, err := parseFlags("prepull agent", args, opts)
	if err != nil || zapOpts == nil {
		return err
	}
	log := newLogger(zapOpts).WithValues("node", opts.NodeName)
	ctrl.SetLogger(log)
	diskBudget, err := opts.diskBudget()
	if err != nil {
		return err
	}

	// The runtime may start after the agent; readiness says so until it
	// answers. Until then, assume containerd, the default endpoint's runtime.
	opts.RegistryHosts, opts.Snapshotter = containerdSettings(opts.ContainerdConfig)
	rt, err := dialRuntime(ctx, opts.RuntimeOptions, "containerd")
	if err != nil {
		return err
	}
	defer rt.Close()
	images, store, runtimeName := rt.images, rt.store, rt.name

	mgr, err := newManager(ctx, opts.ServeOptions, ctrl.Options{
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// The agent watches its own node's NodeImageSet, and, with
			// peers on, the ImageRoutes (one per image handed, each of a
			// few holders), without their managed fields.
			&prepullv1.NodeImageSet{}: {Field: fields.OneTermEqualSelector("metadata.name", opts.NodeName)},
			&prepullv1.ImageRoute{}:   {Transform: cache.TransformStripManagedFields()},
		}},
	})
	if err != nil {
		return err
	}
	r := &nodeimageset.Reconciler{
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		NodeName:           opts.NodeName,
		Namespace:          opts.Namespace,
		Images:             images,
		Store:              store,
		Runtime:            runtimeName,
		MaxConcurrentPulls: opts.MaxConcurrentPulls,
		StatusInterval:     opts.StatusInterval,
		ResyncInterval:     opts.ResyncInterval,
		BackoffBase:        opts.BackoffBase,
		DiskBudget:         diskBudget,
		KeepStrayPins:      !opts.CollectStrayPins,
		ArchiveDir:         opts.ArchiveDir,
		Archives:           opts.archives(),
	}
	if err := agentCredentials(r, opts, mgr.GetAPIReader()); err != nil {
		return err
	}
	if err := servePeers(mgr, r, opts); err != nil {
		return err
	}
	checks := checkNode(rt, opts.CheckOptions, diskBudget)
	checks.PrivateImages = r.PrivateImages
	r.Doctor, r.CredentialVerification = checks.Run, checks.CredentialVerification
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the NodeImageSet reconciler: %w", err)
	}
	if err := mgr.AddReadyzCheck("runtime", runtimeReady(images)); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("api", cacheSynced(mgr)); err != nil {
		return err
	}
	log.Info("Starting agent", "version", version, "runtime", runtimeName, "criEndpoint", opts.CRIEndpoint, "diskBudget", diskBudget)
	return mgr.Start(ctx)
}

// agentCredentials gives r its sources of pull credentials: the
// controller's endpoint (or the mirrors, read directly), and the node's
// credential provider plugins when given.
func agentCredentials(r *nodeimageset.Reconciler, opts *AgentOptions, reader client.Reader) error {
	endpoint := &nodeauth.Client{Reader: reader, Namespace: opts.Namespace, TokenPath: opts.NodeToken}
	r.Credentials = &nodeimageset.EndpointCredentials{Client: endpoint}
	if opts.Credentials == "mirrors" {
		r.Credentials = &nodeimageset.MirrorCredentials{Reader: reader, Namespace: opts.Namespace}
	}
	if opts.CredentialProviderConfig == "" {
		return nil
	}
	plugins, err := credprovider.Load(opts.CredentialProviderConfig, opts.CredentialProviderBinDir)
	if err != nil {
		return fmt.Errorf("--image-credential-provider-config: %w", err)
	}
	plugins.OnRun = nodeimageset.CountPluginRun
	plugins.Tokens = &nodeimageset.EndpointTokens{Client: endpoint}
	r.NodeCredentials = plugins
	return nil
}

// checkNode is the doctor's view of the node's runtime rt.
func checkNode(rt *nodeRuntime, opts CheckOptions, diskBudget float64) doctor.Node {
	pins, _ := rt.store.(cri.PinLister)
	return doctor.Node{Images: rt.images, Pins: pins, Runtime: rt.name,
		ContainerdConfig: opts.ContainerdConfig, KubeletConfig: opts.KubeletConfig, DiskBudget: diskBudget,
		CredentialProviderConfig: opts.CredentialProviderConfig, CredentialProviderBinDir: opts.CredentialProviderBinDir}
}

// nodeRuntime is the node's runtime as the agent and node apply reach it:
// CRI for images, a Store for what CRI cannot do, and the runtime's name.
type nodeRuntime struct {
	images     *cri.Remote
	store      cri.Store
	name       string
	closeStore func()
}

func (rt *nodeRuntime) Close() {
	rt.closeStore()
	rt.images.Close()
}

// dialRuntime reaches the runtime opts names. A runtime that does not
// answer is an error, unless assume names the runtime to take it for.
func dialRuntime(ctx context.Context, opts RuntimeOptions, assume string) (*nodeRuntime, error) {
	images, err := cri.NewRemote(opts.CRIEndpoint,
		cri.WithCallTimeout(opts.CallTimeout), cri.WithPullTimeout(opts.PullTimeout))
	if err != nil {
		return nil, err
	}
	name, err := images.RuntimeName(ctx)
	switch {
	case err != nil && assume == "":
		images.Close()
		return nil, fmt.Errorf("the runtime at %s does not answer: %w", opts.CRIEndpoint, err)
	case err != nil:
		ctrl.Log.Error(err, "Runtime does not answer yet", "criEndpoint", opts.CRIEndpoint, "assumed", assume)
		name = assume
	}
	store, closeStore, err := openStore(name, opts)
	if err != nil {
		images.Close()
		return nil, err
	}
	return &nodeRuntime{images: images, store: store, name: name, closeStore: closeStore}, nil
}

// openStore chooses the Store for what only containerd can do: containerd's
// own API when the runtime is containerd, else one that answers
// ErrUnsupported for everything and names the runtime.
func openStore(name string, opts RuntimeOptions) (cri.Store, func(), error) {
	if !strings.HasPrefix(name, "containerd") {
		ctrl.Log.Info("Runtime is not containerd: pinning, tagging, progress and import are unsupported", "runtime", name)
		return cri.Unsupported{Runtime: name}, func() {}, nil
	}
	addr := opts.ContainerdAddress
	if addr == "" {
		addr = opts.CRIEndpoint
	}
	copts := []containerd.Option{containerd.WithTimeout(opts.CallTimeout), containerd.WithRegistryHosts(opts.RegistryHosts)}
	if opts.Snapshotter != "" {
		copts = append(copts, containerd.WithSnapshotter(opts.Snapshotter))
	}
	s, err := containerd.New(addr, copts...)
	if err != nil {
		return nil, nil, err
	}
	return s, func() { s.Close() }, nil
}

// containerdSettings are, as the containerd configuration file at path
// sets them, the directory of hosts.toml files that containerd's CRI
// plugin reads (the first of registry.config_path's directories, or
// containerd's default) and the CRI plugin's snapshotter; "" when the file
// cannot be read.
func containerdSettings(path string) (hosts, snapshotter string) {
	if path == "" {
		return "", ""
	}
	cfg, err := doctor.ReadContainerdConfig(path)
	if err != nil {
		ctrl.Log.Info("containerd's configuration cannot be read: what the agent reads from registries itself (an image's size, a resolved tag's signatures) it reads from each registry at its own name, and it takes the snapshotter for overlayfs", "path", path, "error", err.Error())
		return "", ""
	}
	dirs := cmp.Or(cfg.ConfigPath, doctor.DefaultConfigPath)
	first, _, _ := strings.Cut(dirs, ":")
	return first, cfg.Snapshotter
}

// runtimeReady fails while the runtime does not answer CRI calls.
func runtimeReady(images cri.ImageService) healthz.Checker {
	return func(r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if _, err := images.ImageFsInfo(ctx); err != nil {
			return fmt.Errorf("runtime not ready: %w", err)
		}
		return nil
	}
}

// servePeers, with --peer-address, makes r fetch from peer agents first
// and serves the node's images to them over TLS, with a certificate made
// now and published in the node's status.
func servePeers(mgr ctrl.Manager, r *nodeimageset.Reconciler, opts *AgentOptions) error {
	if opts.PeerAddress == "" {
		return nil
	}
	store, ok := r.Store.(cri.PeerStore)
	if !ok {
		ctrl.Log.Info("The runtime is not containerd: peers are off", "runtime", r.Runtime)
		return nil
	}
	// Brackets only for IPv6, as a URL's host wants them.
	host, port, err := net.SplitHostPort(opts.PeerAddress)
	if err != nil {
		return fmt.Errorf("--peer-address: %w", err)
	}
	address := net.JoinHostPort(host, port)
	id, err := peer.NewIdentity(address)
	if err != nil {
		return fmt.Errorf("--peer-address: %w", err)
	}
	reviews, err := authenticationv1client.NewForConfig(mgr.GetConfig())
	if err != nil {
		return err
	}
	r.Peers = &nodeimageset.Peers{
		Self:   prepullv1.Peer{Node: opts.NodeName, Address: address, CertSHA256: id.SHA256},
		Client: &peer.Client{TokenPath: opts.NodeToken},
		Routes: mgr.GetClient(),
	}
	reviewer := &nodeauth.Reviewer{Reviews: reviews.TokenReviews(),
		Agent: "system:serviceaccount:" + opts.Namespace + ":prepull-agent"}
	srv := peer.NewServer(store, reviewer, r.PeerWants, opts.PeerMaxServing)
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return peer.Serve(ctx, address, id, srv)
	}))
}
