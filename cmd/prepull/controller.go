package main

import (
	"context"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"prepull.io/prepull/controllers/nodegate"
	"prepull.io/prepull/controllers/prepulllist"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/pullsecret"
	"prepull.io/prepull/verify"
)

func runController(ctx context.Context, args []string) error {
	opts := NewControllerOptions()
	zapOpts, err := parseFlags("prepull controller", args, opts)
	if err != nil || zapOpts == nil {
		return err
	}
	ctrl.SetLogger(newLogger(zapOpts))

	leaseNS := opts.LeaderElectionNamespace
	if leaseNS == "" {
		leaseNS = opts.Namespace
	}
	insecure := map[string]bool{}
	for _, h := range opts.InsecureRegistries {
		insecure[h] = true
	}
	gates := nodegate.NewBook()
	routing, err := opts.routing()
	if err != nil {
		return err
	}
	r := &prepulllist.Reconciler{
		Namespace:      opts.Namespace,
		Resolver:       &prepulllist.RegistryResolver{Insecure: insecure, Timeout: opts.ResolveTimeout},
		SecretPoll:     opts.SecretPoll,
		TokenAudiences: opts.TokenAudiences,
		Signatures:     &verify.Registry{Insecure: insecure, Timeout: opts.ResolveTimeout},
		Gates:          gates,
		StartupTaint:   opts.StartupTaint,
		Peers:          routing,
	}
	mgr, err := newManager(ctx, opts.ServeOptions, ctrl.Options{
		LeaderElection:          opts.LeaderElect,
		LeaderElectionID:        "prepull-controller.prepull.io",
		LeaderElectionNamespace: leaseNS,
		Cache: r.CacheOptions(cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Only the mirrored pull secrets are watched; a list's own
			// secrets are read one by one, never cached cluster-wide.
			&corev1.Secret{}: {Namespaces: map[string]cache.Config{opts.Namespace: {}}},
		}}),
	})
	if err != nil {
		return err
	}
	r.Client, r.APIReader = mgr.GetClient(), mgr.GetAPIReader()
	r.Recorder = mgr.GetEventRecorder("prepull-controller")
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the PrePullList controller: %w", err)
	}
	gate := &nodegate.Reconciler{Client: mgr.GetClient(), Book: gates,
		Taint: opts.StartupTaint, ConditionOnly: opts.Gate == "condition", Recorder: r.Recorder}
	if err := gate.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the node gate: %w", err)
	}
	if err := addEndpoint(mgr, r, opts); err != nil {
		return err
	}
	// Ready: caches synced and, on the leader, a list reconciled.
	if err := mgr.AddReadyzCheck("api", cacheSynced(mgr)); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("reconciled", r.Reconciled(mgr.Elected())); err != nil {
		return err
	}
	ctrl.Log.Info("Starting controller", "version", version)
	return mgr.Start(ctx)
}

// addEndpoint serves, on the leader, the endpoint that gives agents the
// pull credentials of their own node's images (package nodeauth proves the
// node), and publishes it for them.
func addEndpoint(mgr ctrl.Manager, r *prepulllist.Reconciler, opts *ControllerOptions) error {
	if opts.EndpointAddr == "0" {
		return nil
	}
	advertise := opts.endpointAdvertise()
	if advertise == "" {
		ctrl.Log.Info("No --endpoint-advertise-address and no $POD_IP: the credentials endpoint is off, and agents with --credentials=endpoint get no pull credentials")
		return nil
	}
	reviews, err := authenticationv1client.NewForConfig(mgr.GetConfig())
	if err != nil {
		return err
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return err
	}
	reviewer := &nodeauth.Reviewer{Reviews: reviews.TokenReviews(),
		Agent: "system:serviceaccount:" + opts.Namespace + ":prepull-agent"}
	mux := http.NewServeMux()
	mux.Handle(pullsecret.ServedPath, r.Credentials(reviewer))
	mux.Handle(pullsecret.TokenPath, r.Tokens(reviewer))
	// A Runnable without NeedLeaderElection runs on the leader only.
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		ctrl.Log.Info("Serving agents their nodes' pull credentials", "address", opts.EndpointAddr, "advertised", advertise)
		return nodeauth.Serve(ctx, direct, opts.Namespace, opts.EndpointAddr, advertise, mux)
	}))
}
