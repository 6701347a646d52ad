// Package pullsecret reads the credentials of docker-registry Secrets
// (kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg) and matches
// them to a registry host, for the controller's tag resolution and for the
// agent's pulls. It never formats a credential into an error.
package pullsecret

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"prepull.io/prepull/imageref"
)

// Credential is one registry's credentials from a Secret.
type Credential struct {
	// Server is the registry host as the Secret names it, e.g.
	// "registry.example.com:5000".
	Server   string
	Username string
	Password string
	// IdentityToken is an OAuth2 refresh token, when the config has one.
	IdentityToken string
}

// String names the registry without revealing the credential.
func (c Credential) String() string { return fmt.Sprintf("<credentials for %q>", c.Server) }

type entry struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
}

// Parse returns the credentials in a docker-registry Secret.
func Parse(s *corev1.Secret) ([]Credential, error) {
	var auths map[string]entry
	switch {
	case s.Data[corev1.DockerConfigJsonKey] != nil:
		var cfg struct {
			Auths map[string]entry `json:"auths"`
		}
		if err := json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg); err != nil {
			return nil, fmt.Errorf("secret %s/%s: key %s is not a docker config: %w", s.Namespace, s.Name, corev1.DockerConfigJsonKey, jsonSyntax(err))
		}
		auths = cfg.Auths
	case s.Data[corev1.DockerConfigKey] != nil:
		if err := json.Unmarshal(s.Data[corev1.DockerConfigKey], &auths); err != nil {
			return nil, fmt.Errorf("secret %s/%s: key %s is not a docker config: %w", s.Namespace, s.Name, corev1.DockerConfigKey, jsonSyntax(err))
		}
	default:
		return nil, fmt.Errorf("secret %s/%s: has neither %s nor %s: not a docker-registry secret", s.Namespace, s.Name, corev1.DockerConfigJsonKey, corev1.DockerConfigKey)
	}
	out := make([]Credential, 0, len(auths))
	for server, e := range auths {
		c := Credential{Server: Host(server), Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth != "" && c.Username == "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("secret %s/%s: the auth of %q is not base64", s.Namespace, s.Name, server)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("secret %s/%s: the auth of %q is not user:password", s.Namespace, s.Name, server)
			}
			c.Username, c.Password = user, pass
		}
		out = append(out, c)
	}
	return out, nil
}

// jsonSyntax keeps only the position of a JSON error: the message of a type
// error can quote the Secret's content.
func jsonSyntax(err error) error {
	if se, ok := err.(*json.SyntaxError); ok {
		return fmt.Errorf("invalid JSON at byte %d", se.Offset)
	}
	return fmt.Errorf("unexpected JSON structure")
}

// Host returns the registry host of a docker config key, which may be a bare
// host, a URL, or a host with a path ("https://index.docker.io/v1/").
func Host(server string) string {
	if strings.Contains(server, "://") {
		if u, err := url.Parse(server); err == nil {
			server = u.Host
		}
	}
	server, _, _ = strings.Cut(server, "/")
	if server == "index.docker.io" || server == "registry-1.docker.io" {
		return "docker.io"
	}
	return server
}

// Find returns the first credential for host among creds.
func Find(creds []Credential, host string) (Credential, bool) {
	host = Host(host)
	for _, c := range creds {
		if c.Server == host {
			return c, true
		}
	}
	return Credential{}, false
}

// ServedPath is the path of the controller's endpoint that serves an agent
// the credentials of one of its node's images (?image=).
const ServedPath = "/v1/credentials"

// Served is what ServedPath answers: the credentials of one image's
// registry.
type Served struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identityToken,omitempty"`
	// ServerAddress is the registry host they are for.
	ServerAddress string `json:"serverAddress"`
}

// TokenPath is the path of the controller's endpoint that serves an agent a
// service-account token for one of its node's images (?image=&audience=),
// for a credential provider plugin that takes one.
const TokenPath = "/v1/token"

// ServedToken is what TokenPath answers.
type ServedToken struct {
	// Token is a token of ServiceAccount ("namespace/name") for the
	// audience asked.
	Token          string `json:"token"`
	ServiceAccount string `json:"serviceAccount"`
	// Annotations are the service account's annotations, which a plugin
	// may ask for.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ForImage returns the credential for image's registry among the
// docker-registry Secrets names, read in order from namespace with r, and
// that registry's host; a Secret r does not find is skipped (the
// controller mirrors only the Secrets that exist and parse; the list's
// status says which do not).
func ForImage(ctx context.Context, r client.Reader, namespace string, names []string, image string) (Credential, string, bool, error) {
	repo, err := imageref.Repository(image)
	if err != nil {
		return Credential{}, "", false, err
	}
	host, _, _ := strings.Cut(repo, "/")
	for _, name := range names {
		s := &corev1.Secret{}
		if err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return Credential{}, host, false, fmt.Errorf("pull secret %s/%s: %w", namespace, name, err)
		}
		creds, err := Parse(s)
		if err != nil {
			return Credential{}, host, false, err
		}
		if c, ok := Find(creds, host); ok {
			return c, host, true, nil
		}
	}
	return Credential{}, host, false, nil
}
