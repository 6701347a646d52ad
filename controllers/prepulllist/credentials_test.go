package prepulllist_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/pullsecret"
)

// TestTheEndpointServesAnAgentItsOwnNodesCredentials: on a real API server,
// the controller's endpoint, asked by an agent with a token bound to its
// pod on a node (audience prepull.io/node, checked by a TokenReview),
// serves the pull credentials of an image that node's spec names; the
// agent of another node is refused them (403), and so are a token of
// another service account, one for the API server's audience, and none
// (401).
func TestTheEndpointServesAnAgentItsOwnNodesCredentials(t *testing.T) {
	e := setup(t)
	cs, err := kubernetes.NewForConfig(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := e.namespace(t, "creds")
	holder := e.node(t, "creds-1", map[string]string{"pool": "creds"})
	other := e.node(t, "creds-2", map[string]string{"pool": "elsewhere"})
	img := e.private.MustPushRandom(t, "private/served:v1", 1024, 1)
	cfg := fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":"s3cret"}}}`, e.private.Host)
	e.mustCreate(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "regcred"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(cfg)}})
	e.mustCreate(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "puller", Annotations: map[string]string{"example.com/role": "pull"}}})
	l := list(ns, "served", img.Tag)
	l.Spec.NodeSelector = selector(map[string]string{"pool": "creds"})
	l.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	l.Spec.ServiceAccountName = "puller"
	e.mustCreate(t, l)
	eventually(t, "the image handed to its node", func() error {
		if e.entry(holder.Name, img.Digest) == nil {
			return fmt.Errorf("no entry")
		}
		return nil
	})

	// The endpoint, as the controller's leader serves it.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr := fmt.Sprintf("127.0.0.1:%d", testground.FreePort(t))
	reviewer := &nodeauth.Reviewer{Reviews: cs.AuthenticationV1().TokenReviews(), Agent: "system:serviceaccount:" + controllerNS + ":prepull-agent"}
	e.reconciler.TokenAudiences = []string{"registry.test"}
	mux := http.NewServeMux()
	mux.Handle(pullsecret.ServedPath, e.reconciler.Credentials(reviewer))
	mux.Handle(pullsecret.TokenPath, e.reconciler.Tokens(reviewer))
	go func() {
		if err := nodeauth.Serve(ctx, e.c, controllerNS, addr, addr, mux); err != nil {
			t.Errorf("endpoint: %v", err)
		}
	}()
	waitTCP(t, addr)

	// The agents' pods and their tokens.
	for _, sa := range []string{"prepull-agent", "intruder"} {
		e.mustCreate(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: controllerNS, Name: sa}})
	}
	token := func(sa string, node *corev1.Node, audience string) string {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: controllerNS, GenerateName: sa + "-"},
			Spec: corev1.PodSpec{NodeName: node.Name, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "a", Image: "agent"}}}}
		e.mustCreate(t, pod)
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: new(int64(600)),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}
		got, err := cs.CoreV1().ServiceAccounts(controllerNS).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(p, []byte(got.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ask := func(tokenPath string) (string, error) {
		c := &nodeimageset.EndpointCredentials{Client: &nodeauth.Client{Reader: e.c, Namespace: controllerNS, TokenPath: tokenPath}}
		a, err := c.Auth(ctx, img.Digest, nil)
		if err != nil || a == nil {
			return "", err
		}
		return a.Username + ":" + a.Password + "@" + a.ServerAddress, nil
	}
	if got, err := ask(token("prepull-agent", holder, nodeauth.Audience)); err != nil || got != "alice:s3cret@"+e.private.Host {
		t.Errorf("the agent of the node holding the image: %q, %v; want alice's credentials", got, err)
	}
	for _, c := range []struct {
		who   string
		token string
		code  int
	}{
		{"the agent of a node whose spec does not name the image", token("prepull-agent", other, nodeauth.Audience), 403},
		{"another service account's token", token("intruder", holder, nodeauth.Audience), 401},
		{"the agent's token for the API server", token("prepull-agent", holder, "https://kubernetes.default.svc"), 401},
	} {
		_, err := ask(c.token)
		var se *nodeauth.StatusError
		if !errors.As(err, &se) || se.Code != c.code {
			t.Errorf("%s: %v; want %d", c.who, err, c.code)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the refusal carries the credential", c.who)
		}
	}
	// Tokens of the list's service account, for plugins with
	// tokenAttributes: for the allowed audience, to the holder's agent.
	holderToken := token("prepull-agent", holder, nodeauth.Audience)
	askToken := func(agentToken, audience string) (*credprovider.ServiceAccountToken, error) {
		c := &nodeimageset.EndpointTokens{Client: &nodeauth.Client{Reader: e.c, Namespace: controllerNS, TokenPath: agentToken}}
		return c.Token(ctx, img.Digest, audience)
	}
	got, err := askToken(holderToken, "registry.test")
	if err != nil {
		t.Fatalf("the holder's agent asking a token for its image: %v", err)
	}
	review, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
		Token: got.Token, Audiences: []string{"registry.test"}}}, metav1.CreateOptions{})
	if err != nil || !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:"+ns+":puller" {
		t.Errorf("the token served: %+v, %v; want one of %s/puller for registry.test", review.Status, err, ns)
	}
	if got.ServiceAccount != ns+"/puller" || got.Annotations["example.com/role"] != "pull" {
		t.Errorf("the token's account %q and annotations %v", got.ServiceAccount, got.Annotations)
	}
	// A list that discovers its images: the account its workloads run as.
	web := e.private.MustPushRandom(t, "private/web:v1", 1024, 1)
	e.mustCreate(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "runner"}})
	labels := map[string]string{"app": "web"}
	e.mustCreate(t, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", Labels: labels}, Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			ServiceAccountName: "runner", Containers: []corev1.Container{{Name: "web", Image: web.Tag}}}}}})
	discovering := list(ns, "discovering")
	discovering.Spec.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{MatchLabels: labels}}
	discovering.Spec.NodeSelector = selector(map[string]string{"pool": "creds"})
	discovering.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	e.mustCreate(t, discovering)
	eventually(t, "the discovered image handed to its node", func() error {
		if e.entry(holder.Name, web.Digest) == nil {
			return fmt.Errorf("no entry")
		}
		return nil
	})
	tokens := &nodeimageset.EndpointTokens{Client: &nodeauth.Client{Reader: e.c, Namespace: controllerNS, TokenPath: holderToken}}
	if got, err := tokens.Token(ctx, web.Digest, "registry.test"); err != nil || got.ServiceAccount != ns+"/runner" {
		t.Errorf("a token for the discovered image: %+v, %v; want one of its workload's account %s/runner", got, err, ns)
	}

	for _, c := range []struct {
		who, token, audience string
		code                 int
	}{
		{"another node's agent", token("prepull-agent", other, nodeauth.Audience), "registry.test", 403},
		{"an audience not allowed (the API server's)", holderToken, "https://kubernetes.default.svc", 403},
	} {
		_, err := askToken(c.token, c.audience)
		var se *nodeauth.StatusError
		if !errors.As(err, &se) || se.Code != c.code {
			t.Errorf("a token asked by %s: %v; want %d", c.who, err, c.code)
		}
	}

	empty := filepath.Join(t.TempDir(), "none")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ask(empty); !nodeauth.IsForbidden(err) {
		t.Errorf("no token: %v; want it refused", err)
	}
}

// waitTCP waits until something listens at addr.
func waitTCP(t *testing.T, addr string) {
	t.Helper()
	testground.Eventually(t, 10*time.Second, "the endpoint listening at "+addr, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
}
