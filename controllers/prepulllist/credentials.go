package prepulllist

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/pullsecret"
)

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create
// +kubebuilder:rbac:groups="",namespace=prepull-system,resources=configmaps,verbs=get;create;update

// Credentials serves the agent of a node, proven by reviewer, the pull
// credentials of ?image=, one of the images its node's spec names: those
// of the pull secrets of the lists that own the entry there (their mirrors
// in the controller's namespace), for the image's registry. 204 when they
// have none for it; 403 when the node's spec does not name the image; 401
// for a request that proves no node. An agent so obtains the credentials of
// its own node's images only.
func (r *Reconciler) Credentials(reviewer *nodeauth.Reviewer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := req.Context()
		node, ok := proven(w, req, reviewer)
		if !ok {
			return
		}
		image := req.URL.Query().Get("image")
		e, ok := r.fleet.entry(node, image)
		if !ok {
			http.Error(w, fmt.Sprintf("node %s's spec does not name image %q", node, image), http.StatusForbidden)
			return
		}
		cred, found, err := r.credentialOf(ctx, &e)
		if err != nil {
			ctrl.LoggerFrom(ctx).Info("Credentials not served", "node", node, "image", image, "error", err.Error())
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !found {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeSecret(w, cred)
	})
}

// proven is the node the request's agent proves, or false when it proves
// none (401) or cannot be checked (503), the answer written.
func proven(w http.ResponseWriter, req *http.Request, reviewer *nodeauth.Reviewer) (string, bool) {
	node, err := reviewer.Node(req.Context(), req)
	switch {
	case errors.Is(err, nodeauth.ErrUnauthenticated):
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return "", false
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return "", false
	}
	return node, true
}

// writeSecret answers v, which holds a secret: JSON, never cached.
func writeSecret(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// entry is node's entry for image, as the fleet holds it.
func (f *fleet) entry(node, image string) (prepullv1.NodeImage, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := f.nodes[node]
	if rec == nil || image == "" {
		return prepullv1.NodeImage{}, false
	}
	images := rec.spec.images()
	i, ok := slices.BinarySearchFunc(images, image, func(e prepullv1.NodeImage, img string) int { return strings.Compare(e.Image, img) })
	if !ok {
		return prepullv1.NodeImage{}, false
	}
	return *images[i].DeepCopy(), true
}

// credentialOf is the credential for e's registry among the mirrors of
// e's active owners' pull secrets, read from the cache.
func (r *Reconciler) credentialOf(ctx context.Context, e *prepullv1.NodeImage) (pullsecret.Served, bool, error) {
	settings := e.Settings(func(owner string) *prepullv1.PrePullList {
		key, ok := prepullv1.OwnerKey(owner)
		l := &prepullv1.PrePullList{}
		if !ok || r.Get(ctx, key, l) != nil {
			return nil
		}
		return l
	})
	c, host, ok, err := pullsecret.ForImage(ctx, r.Client, r.Namespace, settings.PullSecrets, e.Image)
	if !ok || err != nil {
		return pullsecret.Served{}, false, err
	}
	return pullsecret.Served{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, ServerAddress: host}, true, nil
}

// tokenTTL is how long a token served for a plugin lasts.
const tokenTTL = 10 * time.Minute

// Tokens serves the agent of a node, proven by reviewer, a token of the
// service account that the lists owning ?image= on its node name
// (spec.serviceAccountName), for ?audience=, one of TokenAudiences: what a
// credential provider plugin with tokenAttributes takes (KEP-4412). 403
// when the node's spec does not name the image or the audience is not
// allowed; 404 when no owning list names a service account. A token is
// never logged.
func (r *Reconciler) Tokens(reviewer *nodeauth.Reviewer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := req.Context()
		node, ok := proven(w, req, reviewer)
		if !ok {
			return
		}
		image, audience := req.URL.Query().Get("image"), req.URL.Query().Get("audience")
		if !slices.Contains(r.TokenAudiences, audience) || audience == "" {
			http.Error(w, fmt.Sprintf("audience %q is not one the controller makes tokens for (--token-audiences)", audience), http.StatusForbidden)
			return
		}
		e, ok := r.fleet.entry(node, image)
		if !ok {
			http.Error(w, fmt.Sprintf("node %s's spec does not name image %q", node, image), http.StatusForbidden)
			return
		}
		sa := r.serviceAccountOf(ctx, &e)
		if sa == nil {
			http.Error(w, fmt.Sprintf("no list that owns %s on node %s names a service account (spec.serviceAccountName)", image, node), http.StatusNotFound)
			return
		}
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{audience}, ExpirationSeconds: ptr.To(int64(tokenTTL / time.Second))}}
		if err := r.SubResource("token").Create(ctx, sa, tr); err != nil {
			http.Error(w, fmt.Sprintf("a token of service account %s/%s: %v", sa.Namespace, sa.Name, err), http.StatusServiceUnavailable)
			return
		}
		writeSecret(w, pullsecret.ServedToken{Token: tr.Status.Token,
			ServiceAccount: sa.Namespace + "/" + sa.Name, Annotations: sa.Annotations})
	})
}

// serviceAccountOf is the service account of the first of e's active
// owners that knows one (accountOf), read from the API (its annotations
// are not cached), or nil.
func (r *Reconciler) serviceAccountOf(ctx context.Context, e *prepullv1.NodeImage) *corev1.ServiceAccount {
	for _, o := range e.Owners {
		key, ok := prepullv1.OwnerKey(o.List)
		l := &prepullv1.PrePullList{}
		if o.Releasing || !ok || r.Get(ctx, key, l) != nil {
			continue
		}
		name := r.accountOf(ctx, l, append(slices.Clone(o.Tags), e.Image))
		if name == "" {
			continue
		}
		sa := &corev1.ServiceAccount{}
		if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: name}, sa); err != nil {
			continue
		}
		return sa
	}
	return nil
}

// accountOf is the service account l says the workloads of an image (by
// any of names) run as: its spec.serviceAccountName, else, for an image
// it discovered, that of the first of the workloads using it ("default"
// when its pod template names none); "" when it knows none.
func (r *Reconciler) accountOf(ctx context.Context, l *prepullv1.PrePullList, names []string) string {
	if l.Spec.ServiceAccountName != "" {
		return l.Spec.ServiceAccountName
	}
	for _, d := range l.Status.Discovered {
		if !slices.Contains(names, d.Image) {
			continue
		}
		for _, w := range d.Workloads {
			kind, name, _ := strings.Cut(w, "/")
			for _, k := range workloadKinds {
				obj := k.object()
				if string(k.kind) != kind || r.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: name}, obj) != nil {
					continue
				}
				return cmp.Or(k.template(obj).Spec.ServiceAccountName, "default")
			}
		}
	}
	return ""
}
