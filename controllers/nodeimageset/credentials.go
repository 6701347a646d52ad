package nodeimageset

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/nodeauth"
	"prepull.io/prepull/pullsecret"
)

// Credentials finds the pull credentials of an image of the node's spec.
type Credentials interface {
	// Auth returns the credentials for image's registry, whose entry names
	// the mirrors of pull secrets given; nil when they hold none for it.
	Auth(ctx context.Context, image string, mirrors []string) (*cri.Auth, error)
}

// NodeCredentials finds the credentials the node itself has for an image:
// the kubelet's credential provider plugins (package credprovider).
type NodeCredentials interface {
	Auth(ctx context.Context, image string) (*cri.Auth, error)
}

// EndpointCredentials asks the controller's endpoint, as the node's agent
// (package nodeauth): it serves the credentials of this node's own images
// only, so the agent needs no access to any Secret.
type EndpointCredentials struct {
	Client *nodeauth.Client
}

// Auth asks the endpoint for image's credentials.
func (c *EndpointCredentials) Auth(ctx context.Context, image string, _ []string) (*cri.Auth, error) {
	resp, err := c.Client.Get(ctx, pullsecret.ServedPath, url.Values{"image": {image}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
	default:
		return nil, fmt.Errorf("the pull credentials of %s: %w", image, nodeauth.ErrorOf(resp))
	}
	var s pullsecret.Served
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("the pull credentials of %s: %w", image, err)
	}
	return &cri.Auth{Username: s.Username, Password: s.Password, IdentityToken: s.IdentityToken, ServerAddress: s.ServerAddress}, nil
}

// MirrorCredentials reads the mirrors of the pull secrets in the
// controller's namespace itself: the agent then needs get on Secrets there,
// which lets it read every node's mirrors (prepull agent
// --credentials=mirrors).
type MirrorCredentials struct {
	Reader    client.Reader
	Namespace string
}

// Auth reads the mirrors in order and returns the first credentials for
// image's registry.
func (c *MirrorCredentials) Auth(ctx context.Context, image string, mirrors []string) (*cri.Auth, error) {
	cred, host, ok, err := pullsecret.ForImage(ctx, c.Reader, c.Namespace, mirrors, image)
	if !ok || err != nil {
		return nil, err
	}
	return &cri.Auth{Username: cred.Username, Password: cred.Password, IdentityToken: cred.IdentityToken, ServerAddress: host}, nil
}

// EndpointTokens asks the controller's endpoint, as the node's agent, for
// the service-account tokens that credential provider plugins with
// tokenAttributes take: a token of the service account the lists owning
// the image on this node name, for the plugin's audience.
type EndpointTokens struct {
	Client *nodeauth.Client

	mu sync.Mutex
	// held are the tokens asked for, by image and audience, kept for
	// tokenReuse: one pull reads the plugin several times (its size, the
	// pull itself), and each read would otherwise make a token.
	held map[[2]string]heldToken
}

type heldToken struct {
	tok *credprovider.ServiceAccountToken
	at  time.Time
}

// tokenReuse is how long a token is used again: half the life the
// controller gives it.
const tokenReuse = 5 * time.Minute

// Token asks the endpoint for a token for image and audience, or uses the
// one it gave within tokenReuse.
func (c *EndpointTokens) Token(ctx context.Context, image, audience string) (*credprovider.ServiceAccountToken, error) {
	key, now := [2]string{image, audience}, time.Now()
	c.mu.Lock()
	for k, h := range c.held {
		if now.Sub(h.at) >= tokenReuse {
			delete(c.held, k)
		}
	}
	h, ok := c.held[key]
	c.mu.Unlock()
	if ok {
		return h.tok, nil
	}
	tok, err := c.ask(ctx, image, audience)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.held == nil {
		c.held = map[[2]string]heldToken{}
	}
	c.held[key] = heldToken{tok: tok, at: now}
	c.mu.Unlock()
	return tok, nil
}

// ask asks the endpoint for a token for image and audience.
func (c *EndpointTokens) ask(ctx context.Context, image, audience string) (*credprovider.ServiceAccountToken, error) {
	resp, err := c.Client.Get(ctx, pullsecret.TokenPath, url.Values{"image": {image}, "audience": {audience}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, credprovider.ErrNoServiceAccount
	case http.StatusOK:
	default:
		return nil, nodeauth.ErrorOf(resp)
	}
	var t pullsecret.ServedToken
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return nil, err
	}
	return &credprovider.ServiceAccountToken{Token: t.Token, ServiceAccount: t.ServiceAccount, Annotations: t.Annotations}, nil
}
