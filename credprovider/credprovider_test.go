package credprovider_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"prepull.io/prepull/credprovider"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/testground"
)

// plugin builds hack/credplugin into a bin dir of its own, under name.
func plugin(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	if err := testground.BuildCredentialPlugin(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func config(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runs counts the plugin's runs, from its log.
func runs(t *testing.T, log string) int {
	t.Helper()
	b, err := os.ReadFile(log)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// TestPluginsRunAsTheKubeletRunsThem: a real plugin executable, given a
// CredentialProviderRequest on stdin, gives credentials for the images
// its matchImages match and none for others; its answer is kept for its
// cacheDuration by its cacheKeyType (one run per registry, counted by the
// plugin itself); a plugin that hangs is cut at the timeout, and one that
// answers garbage fails with a clear error, the next plugin still asked.
func TestPluginsRunAsTheKubeletRunsThem(t *testing.T) {
	bin := plugin(t, "credplugin")
	if err := os.Link(filepath.Join(bin, "credplugin"), filepath.Join(bin, "hanging")); err != nil {
		t.Fatal(err)
	}
	log, hangLog := filepath.Join(t.TempDir(), "runs"), filepath.Join(t.TempDir(), "hang-runs")
	cfg := config(t, fmt.Sprintf(`providers:
- name: hanging
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["hang.example.com"]
  defaultCacheDuration: 1m
  env: [{name: CREDPLUGIN_MODE, value: hang}, {name: CREDPLUGIN_LOG, value: %[2]q}]
- name: credplugin
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["*.example.com", "127.0.0.1:5000/team", "hang.example.com"]
  defaultCacheDuration: 1m
  env: [{name: CREDPLUGIN_USER, value: alice}, {name: CREDPLUGIN_PASSWORD, value: s3cret}, {name: CREDPLUGIN_LOG, value: %[1]q}, {name: CREDPLUGIN_CACHE, value: 1h}]
- name: tokened
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["token.example.org"]
  defaultCacheDuration: 1m
  tokenAttributes: {serviceAccountTokenAudience: registry, cacheType: ServiceAccount, requireServiceAccount: true}
`, log, hangLog))
	p, err := credprovider.Load(cfg, bin)
	if err != nil {
		t.Fatal(err)
	}
	p.Timeout = time.Second
	ctx := context.Background()

	for _, c := range []struct {
		image string
		user  string
	}{
		{"registry.example.com/app:1", "alice"},
		{"registry.example.com/other@sha256:" + strings.Repeat("a", 64), "alice"},
		{"mirror.example.com/app:1", "alice"},
		{"a.b.example.com/app:1", ""}, // a glob matches one part only
		{"127.0.0.1:5000/team/app:1", "alice"},
		{"127.0.0.1:5000/other/app:1", ""},      // the path is a prefix
		{"127.0.0.1:5001/team/app:1", ""},       // the port must match
		{"registry.example.com:5000/app:1", ""}, // and none matches none
		{"docker.io/library/nginx:1", ""},
		{"token.example.org/app:1", ""}, // tokenAttributes: not run
	} {
		a, err := p.Auth(ctx, c.image)
		got := ""
		if a != nil {
			got = a.Username
		}
		if err != nil || got != c.user {
			t.Errorf("%s: %q, %v; want %q", c.image, got, err, c.user)
		}
	}
	// Two registries: registry.example.com, mirror.example.com, 127.0.0.1:5000.
	if n := runs(t, log); n != 3 {
		t.Errorf("the plugin ran %d times; want once per registry (3), its answer kept by registry", n)
	}

	// The hanging plugin comes first for hang.example.com: cut at the
	// timeout, and the second plugin's credentials are used.
	start := time.Now()
	a, err := p.Auth(ctx, "hang.example.com/app:1")
	if err != nil || a == nil || a.Username != "alice" {
		t.Errorf("after a hanging plugin: %+v, %v; want the next plugin's credentials", a, err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("a hanging plugin held the pull %s", d)
	}

	// Alone, a plugin that answers garbage or hangs fails the image, saying
	// what it did.
	for _, c := range []struct{ name, mode, says string }{
		{"credplugin", "garbage", "not a CredentialProviderResponse"},
		{"hanging", "hang", "no answer within 1s"},
	} {
		alone, err := credprovider.Load(config(t, fmt.Sprintf(`providers:
- name: %s
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["*.example.com"]
  defaultCacheDuration: 0s
  env: [{name: CREDPLUGIN_MODE, value: %s}]
`, c.name, c.mode)), bin)
		if err != nil {
			t.Fatal(err)
		}
		alone.Timeout = time.Second
		if _, err := alone.Auth(ctx, "registry.example.com/app:1"); !errors.Is(err, credprovider.ErrProvider) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("a plugin that %ss: %v, want %q", c.mode, err, c.says)
		}
	}
}

func TestLoadNamesTheField(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"providers:\n- name: ../x\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  matchImages: [a.io]\n  defaultCacheDuration: 1m\n", "providers[0].name"},
		{"providers:\n- name: x\n  apiVersion: credentialprovider.kubelet.k8s.io/v1beta1\n  matchImages: [a.io]\n  defaultCacheDuration: 1m\n", "providers[0].apiVersion"},
		{"providers:\n- name: x\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  matchImages: [\"a.io:*\"]\n  defaultCacheDuration: 1m\n", "providers[0].matchImages[0]"},
		{"providers:\n- name: x\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n  defaultCacheDuration: 1m\n", "providers[0].matchImages"},
	} {
		_, err := credprovider.Load(config(t, c.body), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want an error naming %s", c.body, err, c.want)
		}
	}
}

// tokens is a Tokens of fixed answers, by image.
type tokens map[string]*credprovider.ServiceAccountToken

func (t tokens) Token(_ context.Context, image, audience string) (*credprovider.ServiceAccountToken, error) {
	tok, ok := t[image]
	if !ok {
		return nil, credprovider.ErrNoServiceAccount
	}
	return tok, nil
}

// jwt is an unsigned token of sub for aud, as the test plugin reads it.
func jwt(sub, aud string) string {
	enc := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
	return enc(`{"alg":"none"}`) + "." + enc(fmt.Sprintf(`{"sub":%q,"aud":[%q]}`, sub, aud)) + "." + enc("sig")
}

// TestTokenModePresentsTheWorkloadsToken: a plugin with tokenAttributes is
// given a token of the image's service account for its audience (the real
// plugin checks both and refuses another account), kept by service account
// (cacheType ServiceAccount); it is not run for an image whose lists name
// no service account, and a required annotation the account lacks is an
// error naming it.
func TestTokenModePresentsTheWorkloadsToken(t *testing.T) {
	bin := plugin(t, "credplugin")
	log := filepath.Join(t.TempDir(), "runs")
	cfg := config(t, fmt.Sprintf(`providers:
- name: credplugin
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["*.example.com"]
  defaultCacheDuration: 1m
  tokenAttributes: {serviceAccountTokenAudience: registry.test, cacheType: ServiceAccount, requireServiceAccount: true, optionalServiceAccountAnnotationKeys: [example.com/role]}
  env: [{name: CREDPLUGIN_USER, value: workload}, {name: CREDPLUGIN_PASSWORD, value: w}, {name: CREDPLUGIN_LOG, value: %q},
        {name: CREDPLUGIN_WANT_SUB, value: "system:serviceaccount:shop:puller"}, {name: CREDPLUGIN_WANT_AUD, value: registry.test}]
`, log))
	p, err := credprovider.Load(cfg, bin)
	if err != nil {
		t.Fatal(err)
	}
	p.Tokens = tokens{
		"a.example.com/app:1":   {Token: jwt("system:serviceaccount:shop:puller", "registry.test"), ServiceAccount: "shop/puller"},
		"a.example.com/other:1": {Token: jwt("system:serviceaccount:shop:puller", "registry.test"), ServiceAccount: "shop/puller"},
		"b.example.com/app:1":   {Token: jwt("system:serviceaccount:shop:other", "registry.test"), ServiceAccount: "shop/other"},
	}
	ctx := context.Background()
	for _, img := range []string{"a.example.com/app:1", "a.example.com/other:1"} {
		if a, err := p.Auth(ctx, img); err != nil || a == nil || a.Username != "workload" {
			t.Errorf("%s with the workload's token: %+v, %v", img, a, err)
		}
	}
	if n := runs(t, log); n != 1 {
		t.Errorf("the plugin ran %d times for one service account and registry; want 1", n)
	}
	if _, err := p.Auth(ctx, "b.example.com/app:1"); !errors.Is(err, credprovider.ErrProvider) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("another service account's token: %v; want the plugin's refusal", err)
	}
	if a, err := p.Auth(ctx, "c.example.com/app:1"); a != nil || err != nil {
		t.Errorf("no service account: %+v, %v; want the plugin not run", a, err)
	}
	required := config(t, `providers:
- name: credplugin
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["*.example.com"]
  defaultCacheDuration: 1m
  tokenAttributes: {serviceAccountTokenAudience: registry.test, cacheType: Token, requireServiceAccount: true, requiredServiceAccountAnnotationKeys: [example.com/role]}
`)
	q, err := credprovider.Load(required, bin)
	if err != nil {
		t.Fatal(err)
	}
	q.Tokens = p.Tokens
	if _, err := q.Auth(ctx, "a.example.com/app:1"); err == nil || !strings.Contains(err.Error(), "no annotation example.com/role") {
		t.Errorf("a required annotation missing: %v", err)
	}
}

// TestTheRealECRPluginServesPrepull: ecr-credential-provider, the EKS
// kubelet's plugin built from k8s.io/cloud-provider-aws (written by no one
// here), run by prepull against a stand-in of ECR's GetAuthorizationToken
// on loopback, gives the credentials of an ECR registry name, asked once
// for two images (its answer kept); with them a real containerd pulls an
// image named under that registry from a registry with authentication
// standing in for it, which it refuses without them.
func TestTheRealECRPluginServesPrepull(t *testing.T) {
	plugin := testground.Binary(t, "ecr-credential-provider")
	var calls atomic.Int32
	ecr := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" {
			http.Error(w, "unexpected call "+r.Header.Get("X-Amz-Target"), http.StatusBadRequest)
			return
		}
		calls.Add(1)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		fmt.Fprintf(w, `{"authorizationData":[{"authorizationToken":%q,"expiresAt":%d,"proxyEndpoint":"https://123456789012.dkr.ecr.us-east-1.amazonaws.com"}]}`,
			base64.StdEncoding.EncodeToString([]byte("AWS:ecr-pass")), time.Now().Add(12*time.Hour).Unix())
	}))
	t.Cleanup(ecr.Close)
	cfg := config(t, fmt.Sprintf(`providers:
- name: ecr-credential-provider
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["*.dkr.ecr.*.amazonaws.com"]
  defaultCacheDuration: 12h
  env:
  - {name: AWS_ENDPOINT_URL_ECR, value: %q}
  - {name: AWS_ACCESS_KEY_ID, value: AKIDSTANDIN}
  - {name: AWS_SECRET_ACCESS_KEY, value: stand-in}
  - {name: AWS_EC2_METADATA_DISABLED, value: "true"}
  - {name: AWS_CONFIG_FILE, value: /dev/null}
  - {name: AWS_SHARED_CREDENTIALS_FILE, value: /dev/null}
`, ecr.URL))
	p, err := credprovider.Load(cfg, filepath.Dir(plugin))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	var auth *cri.Auth
	for _, img := range []string{registry + "/team/app:1", registry + "/team/other:1"} {
		a, err := p.Auth(ctx, img)
		if err != nil || a == nil || a.Username != "AWS" || a.Password != "ecr-pass" {
			t.Fatalf("%s: %+v, %v; want ECR's AWS credentials", img, a, err)
		}
		auth = a
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("ECR was asked %d times; want once, the plugin's answer kept for the registry", n)
	}

	ctd := testground.StartContainerd(t)
	reg := testground.StartRegistry(t, testground.WithBasicAuth("AWS", "ecr-pass"))
	ctd.Mirror(registry, reg.Host)
	reg.MustPushRandom(t, "team/app:1", 64<<10, 1)
	images, _ := ctd.Clients(t)
	if _, err := images.PullImage(ctx, registry+"/team/app:1", nil); !errors.Is(err, cri.ErrUnauthorized) {
		t.Errorf("pulled without the plugin's credentials: %v; want it refused", err)
	}
	// containerd sends credentials to the host they name; the stand-in is a
	// mirror at another address, so they name none here.
	mirrored := *auth
	mirrored.ServerAddress = ""
	if _, err := images.PullImage(ctx, registry+"/team/app:1", &mirrored); err != nil {
		t.Errorf("pull with the plugin's credentials: %v", err)
	}
}
