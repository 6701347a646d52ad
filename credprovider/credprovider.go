// Package credprovider runs the node's kubelet image credential provider
// plugins as the kubelet does: it reads the kubelet's
// CredentialProviderConfig (kubelet.config.k8s.io/v1), matches an image
// against each provider's matchImages by the kubelet's rules, runs the
// matching plugins with a CredentialProviderRequest
// (credentialprovider.kubelet.k8s.io/v1) on their stdin, and keeps their
// answers for their cacheDuration under their cacheKeyType. So the agent
// pulls a private image with the credentials the node's cloud identity
// gives, without an imagePullSecret.
//
// A plugin configured with tokenAttributes (KEP-4412) is given a token of
// the service account the image's workloads run as, for the plugin's
// audience, from Tokens (the controller's endpoint, for the agent): without
// Tokens, or when the image's lists name no service account, it is not run
// (it is, without a token, when it says requireServiceAccount: false).
package credprovider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1 "k8s.io/kubelet/config/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
	"sigs.k8s.io/yaml"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
)

// ErrProvider marks a plugin's failure: it did not answer in time, its
// answer was not a CredentialProviderResponse, or it exited with an error.
var ErrProvider = errors.New("credential provider failed")

// DefaultTimeout bounds one run of a plugin.
const DefaultTimeout = time.Minute

// apiVersion is the plugin protocol's version prepull speaks.
const apiVersion = "credentialprovider.kubelet.k8s.io/v1"

// Providers are the plugins of one CredentialProviderConfig.
type Providers struct {
	// BinDir holds the plugins' executables, as the kubelet's
	// --image-credential-provider-bin-dir.
	BinDir string
	// Timeout bounds one run of a plugin; zero means DefaultTimeout.
	Timeout time.Duration
	// OnRun, when set, is told of every run of a plugin and its error.
	OnRun func(provider string, err error)
	// Tokens, when set, gives the service-account tokens plugins with
	// tokenAttributes take.
	Tokens Tokens

	providers []kubeletv1.CredentialProvider
	mu        sync.Mutex
	cache     map[cacheKey]cached
}

type cacheKey struct{ provider, key string }

type cached struct {
	resp    *credentialproviderv1.CredentialProviderResponse
	expires time.Time
}

// Tokens gives a token of the service account an image's workloads run as,
// for audience; ErrNoServiceAccount when the image's lists name none.
type Tokens interface {
	Token(ctx context.Context, image, audience string) (*ServiceAccountToken, error)
}

// ServiceAccountToken is a token and what a plugin may ask of its account.
type ServiceAccountToken struct {
	Token string
	// ServiceAccount is "namespace/name".
	ServiceAccount string
	Annotations    map[string]string
}

// ErrNoServiceAccount means no service account is known for the image.
var ErrNoServiceAccount = errors.New("no service account is known for the image")

// Load reads the CredentialProviderConfig at path, or, as the kubelet
// does, those of a directory (its .json, .yaml and .yml files, in
// lexical order, their providers one after another), with their plugins in
// binDir. Its errors name the file and the field.
func Load(path, binDir string) (*Providers, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	if !fi.IsDir() {
		return load(path, binDir)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	all := &Providers{BinDir: binDir}
	for _, e := range entries {
		if e.IsDir() || !slices.Contains([]string{".json", ".yaml", ".yml"}, filepath.Ext(e.Name())) {
			continue
		}
		p, err := load(filepath.Join(path, e.Name()), binDir)
		if err != nil {
			return nil, err
		}
		all.providers = append(all.providers, p.providers...)
	}
	return all, nil
}

func load(path, binDir string) (*Providers, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	var cfg kubeletv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
		return nil, fmt.Errorf("credential provider config %s: %w", path, err)
	}
	if cfg.Kind != "CredentialProviderConfig" || cfg.APIVersion != kubeletv1.SchemeGroupVersion.String() {
		return nil, fmt.Errorf("credential provider config %s: %s/%s, want %s/CredentialProviderConfig", path, cfg.APIVersion, cfg.Kind, kubeletv1.SchemeGroupVersion)
	}
	for i, p := range cfg.Providers {
		field := fmt.Sprintf("%s: providers[%d]", path, i)
		switch {
		case p.Name == "" || strings.ContainsAny(p.Name, "/\\") || p.Name == "." || p.Name == "..":
			return nil, fmt.Errorf("%s.name: %q: must name an executable in %s", field, p.Name, binDir)
		case len(p.MatchImages) == 0:
			return nil, fmt.Errorf("%s.matchImages: required", field)
		case p.APIVersion != apiVersion:
			return nil, fmt.Errorf("%s.apiVersion: %q: prepull speaks %s", field, p.APIVersion, apiVersion)
		}
		for j, m := range p.MatchImages {
			if _, err := parsePattern(m); err != nil {
				return nil, fmt.Errorf("%s.matchImages[%d]: %w", field, j, err)
			}
		}
	}
	return &Providers{BinDir: binDir, providers: cfg.Providers}, nil
}

// Provider is what the doctor says of one plugin.
type Provider struct {
	Name        string
	MatchImages []string
	// Problem is why it cannot run ("" when its executable is there).
	Problem string
	// Audience is, for a plugin given a service-account token
	// (tokenAttributes), the token's audience.
	Audience string
}

// Describe says what each plugin matches and whether it can run.
func (p *Providers) Describe() []Provider {
	var out []Provider
	for _, c := range p.providers {
		d := Provider{Name: c.Name, MatchImages: c.MatchImages}
		if c.TokenAttributes != nil {
			d.Audience = c.TokenAttributes.ServiceAccountTokenAudience
		}
		fi, err := os.Stat(filepath.Join(p.BinDir, c.Name))
		switch {
		case err != nil:
			d.Problem = err.Error()
		case fi.IsDir() || fi.Mode()&0o111 == 0:
			d.Problem = filepath.Join(p.BinDir, c.Name) + " is not executable"
		}
		out = append(out, d)
	}
	return out
}

// Auth returns the credentials the plugins give for image, nil when none
// of them matches it or gives any for it. The first plugin, in the
// config's order, that gives credentials whose key matches the image
// wins, as in the kubelet. A plugin that fails is an error, unless another
// gives credentials.
func (p *Providers) Auth(ctx context.Context, image string) (*cri.Auth, error) {
	repo, err := imageref.Repository(image)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, c := range p.providers {
		if !matchesAny(c.MatchImages, repo) {
			continue
		}
		tok, run, err := p.token(ctx, c, image)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !run {
			continue
		}
		resp, err := p.response(ctx, c, image, repo, tok)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if a := authFor(resp, repo); a != nil {
			return a, nil
		}
	}
	return nil, errors.Join(errs...)
}

// token is the service-account token c takes for image (nil for none),
// and whether c runs: a plugin with tokenAttributes does not without
// Tokens, nor without a service account when it requires one.
func (p *Providers) token(ctx context.Context, c kubeletv1.CredentialProvider, image string) (*ServiceAccountToken, bool, error) {
	ta := c.TokenAttributes
	if ta == nil {
		return nil, true, nil
	}
	required := ta.RequireServiceAccount == nil || *ta.RequireServiceAccount
	if p.Tokens == nil {
		return nil, !required, nil
	}
	tok, err := p.Tokens.Token(ctx, image, ta.ServiceAccountTokenAudience)
	switch {
	case errors.Is(err, ErrNoServiceAccount):
		return nil, !required, nil
	case err != nil:
		return nil, false, fmt.Errorf("%w: %s: a service-account token for %s: %v", ErrProvider, c.Name, image, err)
	}
	for _, k := range ta.RequiredServiceAccountAnnotationKeys {
		if _, ok := tok.Annotations[k]; !ok {
			return nil, false, fmt.Errorf("%w: %s: service account %s has no annotation %s, which the plugin requires", ErrProvider, c.Name, tok.ServiceAccount, k)
		}
	}
	return tok, true, nil
}

// authFor is the credential of resp whose key matches repo, the key with
// the longest path first.
func authFor(resp *credentialproviderv1.CredentialProviderResponse, repo string) *cri.Auth {
	best := ""
	for key := range resp.Auth {
		if matches(key, repo) && len(key) > len(best) {
			best = key
		}
	}
	if best == "" {
		return nil
	}
	a := resp.Auth[best]
	host, _, _ := strings.Cut(repo, "/")
	return &cri.Auth{Username: a.Username, Password: a.Password, ServerAddress: host}
}

// response is c's answer for image, from the cache or a run.
func (p *Providers) response(ctx context.Context, c kubeletv1.CredentialProvider, image, repo string, tok *ServiceAccountToken) (*credentialproviderv1.CredentialProviderResponse, error) {
	host, _, _ := strings.Cut(repo, "/")
	// An answer given for a token is kept for its service account
	// (cacheType ServiceAccount), or not at all (Token: every token is new).
	account := ""
	if tok != nil {
		if c.TokenAttributes.CacheType != kubeletv1.ServiceAccountServiceAccountTokenCacheType {
			return p.runOnce(ctx, c, image, tok)
		}
		account = "|sa:" + tok.ServiceAccount
	}
	now := time.Now()
	p.mu.Lock()
	for _, k := range []string{"image:" + repo + account, "registry:" + host + account, "global" + account} {
		if e, ok := p.cache[cacheKey{c.Name, k}]; ok {
			if now.Before(e.expires) {
				p.mu.Unlock()
				return e.resp, nil
			}
			delete(p.cache, cacheKey{c.Name, k})
		}
	}
	p.mu.Unlock()
	resp, err := p.runOnce(ctx, c, image, tok)
	if err != nil {
		return nil, err
	}
	ttl := time.Duration(0)
	if resp.CacheDuration != nil {
		ttl = resp.CacheDuration.Duration
	} else if c.DefaultCacheDuration != nil {
		ttl = c.DefaultCacheDuration.Duration
	}
	if ttl > 0 {
		key := "global" + account
		switch resp.CacheKeyType {
		case credentialproviderv1.ImagePluginCacheKeyType:
			key = "image:" + repo + account
		case credentialproviderv1.RegistryPluginCacheKeyType:
			key = "registry:" + host + account
		}
		p.mu.Lock()
		if p.cache == nil {
			p.cache = map[cacheKey]cached{}
		}
		p.cache[cacheKey{c.Name, key}] = cached{resp: resp, expires: now.Add(ttl)}
		p.mu.Unlock()
	}
	return resp, nil
}

// runOnce runs c and tells OnRun.
func (p *Providers) runOnce(ctx context.Context, c kubeletv1.CredentialProvider, image string, tok *ServiceAccountToken) (*credentialproviderv1.CredentialProviderResponse, error) {
	resp, err := p.run(ctx, c, image, tok)
	if p.OnRun != nil {
		p.OnRun(c.Name, err)
	}
	return resp, err
}

// maxAnswer bounds what a plugin may write.
const maxAnswer = 1 << 20

// run runs c for image, within Timeout, and reads its answer.
func (p *Providers) run(ctx context.Context, c kubeletv1.CredentialProvider, image string, tok *ServiceAccountToken) (*credentialproviderv1.CredentialProviderResponse, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	request := credentialproviderv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{Kind: "CredentialProviderRequest", APIVersion: c.APIVersion}, Image: image}
	if tok != nil {
		request.ServiceAccountToken = tok.Token
		for _, k := range append(slices.Clone(c.TokenAttributes.RequiredServiceAccountAnnotationKeys), c.TokenAttributes.OptionalServiceAccountAnnotationKeys...) {
			if v, ok := tok.Annotations[k]; ok {
				if request.ServiceAccountAnnotations == nil {
					request.ServiceAccountAnnotations = map[string]string{}
				}
				request.ServiceAccountAnnotations[k] = v
			}
		}
	}
	req, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(p.BinDir, c.Name), c.Args...)
	cmd.Env = os.Environ()
	for _, e := range c.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	var stdout, stderr limited
	stdout.max, stderr.max = maxAnswer, 512
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(req), &stdout, &stderr
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("%w: %s: no answer within %s", ErrProvider, c.Name, timeout)
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %v: %s", ErrProvider, c.Name, err, strings.TrimSpace(stderr.String()))
	case stdout.over:
		return nil, fmt.Errorf("%w: %s: its answer is longer than %d bytes", ErrProvider, c.Name, maxAnswer)
	}
	var resp credentialproviderv1.CredentialProviderResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("%w: %s: its answer is not a CredentialProviderResponse: %v", ErrProvider, c.Name, err)
	}
	if resp.Kind != "CredentialProviderResponse" || resp.APIVersion != c.APIVersion {
		return nil, fmt.Errorf("%w: %s: answered %s/%s, want %s/CredentialProviderResponse", ErrProvider, c.Name, resp.APIVersion, resp.Kind, c.APIVersion)
	}
	return &resp, nil
}

// limited is a buffer that keeps at most max bytes and says it was over.
type limited struct {
	bytes.Buffer
	max  int
	over bool
}

func (l *limited) Write(b []byte) (int, error) {
	if room := l.max - l.Len(); len(b) > room {
		l.over = true
		l.Buffer.Write(b[:max(room, 0)])
		return len(b), nil
	}
	return l.Buffer.Write(b)
}

var _ io.Writer = (*limited)(nil)
