// Package nodeauth is how a node's agent proves its node to an endpoint of
// prepull, and how that endpoint is found and trusted.
//
// An agent presents a service-account token that the kubelet projected
// into its pod for the audience Audience: the API server binds it to the
// pod, and so to the pod's node. The endpoint asks the API server about
// the token (a TokenReview with that audience) and takes the node the API
// server names (the authentication.kubernetes.io/node-name extra), for the
// agent's service account only. A token stolen from the agent cannot be
// used against the API server (its audience is not the API server's), and
// a token of another service account, or one bound to no pod, names no
// node.
//
// The endpoint (the controller's leader) serves TLS with a certificate it
// makes at start, and publishes its address and certificate in the
// ConfigMap EndpointConfigMap of its namespace, which agents read by name.
package nodeauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/utils/clock"
)

// Audience is the audience of the tokens agents present.
const Audience = "prepull.io/node"

// TokenPath is where the agent's pod has its projected token.
const TokenPath = "/var/run/secrets/prepull.io/node/token"

// nodeExtra is the user info extra in which the API server names the node
// of the pod a token is bound to.
const nodeExtra = "authentication.kubernetes.io/node-name"

// ErrUnauthenticated means a request carries no token, or one that does
// not prove a node.
var ErrUnauthenticated = errors.New("not an agent's token bound to a pod on a node")

// Reviewer finds the node an agent's token proves, through TokenReviews.
type Reviewer struct {
	// Reviews creates TokenReviews.
	Reviews authenticationv1client.TokenReviewInterface
	// Agent is the agent's service account, as a user name
	// (system:serviceaccount:<namespace>:<name>).
	Agent string
	// Clock times the memo; nil means the real clock.
	Clock clock.PassiveClock

	mu   sync.Mutex
	memo map[[32]byte]review
}

// review is a token's answer, kept for memoTTL.
type review struct {
	node string
	err  error
	at   time.Time
}

// memoTTL is how long a token's answer is kept: a token the kubelet
// rotates or a pod deleted is refused at most this late.
const memoTTL = 30 * time.Second

// Node returns the node the request's bearer token proves, or
// ErrUnauthenticated.
func (v *Reviewer) Node(ctx context.Context, r *http.Request) (string, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", ErrUnauthenticated
	}
	key := sha256.Sum256([]byte(token))
	now := v.now()
	v.mu.Lock()
	if m, ok := v.memo[key]; ok && now.Sub(m.at) < memoTTL {
		v.mu.Unlock()
		return m.node, m.err
	}
	v.mu.Unlock()
	node, err := v.review(ctx, token)
	var transient *reviewError
	if errors.As(err, &transient) {
		return "", err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.memo == nil {
		v.memo = map[[32]byte]review{}
	}
	for k, m := range v.memo {
		if now.Sub(m.at) >= memoTTL {
			delete(v.memo, k)
		}
	}
	v.memo[key] = review{node: node, err: err, at: now}
	return node, err
}

// reviewError is a TokenReview that could not be made: not an answer
// about the token.
type reviewError struct{ err error }

func (e *reviewError) Error() string { return "review the token: " + e.err.Error() }
func (e *reviewError) Unwrap() error { return e.err }

func (v *Reviewer) review(ctx context.Context, token string) (string, error) {
	tr, err := v.Reviews.Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
		Token: token, Audiences: []string{Audience},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", &reviewError{err}
	}
	st := tr.Status
	switch {
	case !st.Authenticated:
		return "", fmt.Errorf("%w: %s", ErrUnauthenticated, st.Error)
	case st.User.Username != v.Agent:
		return "", fmt.Errorf("%w: the token is %s's, not the agent's", ErrUnauthenticated, st.User.Username)
	case len(st.User.Extra[nodeExtra]) != 1 || st.User.Extra[nodeExtra][0] == "":
		return "", fmt.Errorf("%w: the token is bound to no pod on a node", ErrUnauthenticated)
	}
	return st.User.Extra[nodeExtra][0], nil
}

func (v *Reviewer) now() time.Time {
	if v.Clock == nil {
		return time.Now()
	}
	return v.Clock.Now()
}
