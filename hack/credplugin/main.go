// Command credplugin is a kubelet image credential provider plugin for
// prepull's tests. It speaks credentialprovider.kubelet.k8s.io/v1 on stdin
// and stdout and answers, for the registry of the image it is asked about,
// the credentials in $CREDPLUGIN_USER and $CREDPLUGIN_PASSWORD, to be kept
// $CREDPLUGIN_CACHE (a duration; none by default) by registry. Each run
// appends the image it was asked about to the file $CREDPLUGIN_LOG.
// $CREDPLUGIN_MODE=hang never answers; =garbage answers what is not JSON.
// With $CREDPLUGIN_WANT_SUB, it answers only a request whose
// serviceAccountToken is of that subject
// (system:serviceaccount:<namespace>:<name>) and for the audience
// $CREDPLUGIN_WANT_AUD, as a registry granting per workload would; it reads
// the token's claims without checking its signature.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

type request struct {
	Kind                string `json:"kind"`
	APIVersion          string `json:"apiVersion"`
	Image               string `json:"image"`
	ServiceAccountToken string `json:"serviceAccountToken"`
}

// claims are what the plugin reads of a token.
type claims struct {
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"`
}

// checkToken refuses a token not of wantSub for wantAud.
func checkToken(token, wantSub, wantAud string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return fmt.Errorf("no service-account token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return err
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return err
	}
	var auds []string
	if json.Unmarshal(c.Aud, &auds) != nil {
		var one string
		_ = json.Unmarshal(c.Aud, &one)
		auds = []string{one}
	}
	if c.Sub != wantSub || !slices.Contains(auds, wantAud) {
		return fmt.Errorf("a token of %s for %v, want %s for %s", c.Sub, auds, wantSub, wantAud)
	}
	return nil
}

type auth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type response struct {
	Kind          string          `json:"kind"`
	APIVersion    string          `json:"apiVersion"`
	CacheKeyType  string          `json:"cacheKeyType"`
	CacheDuration string          `json:"cacheDuration,omitempty"`
	Auth          map[string]auth `json:"auth"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil || req.Kind != "CredentialProviderRequest" {
		fmt.Fprintf(os.Stderr, "credplugin: not a CredentialProviderRequest: %v\n", err)
		os.Exit(1)
	}
	if log := os.Getenv("CREDPLUGIN_LOG"); log != "" {
		f, err := os.OpenFile(log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, req.Image)
			f.Close()
		}
	}
	if want := os.Getenv("CREDPLUGIN_WANT_SUB"); want != "" {
		if err := checkToken(req.ServiceAccountToken, want, os.Getenv("CREDPLUGIN_WANT_AUD")); err != nil {
			fmt.Fprintf(os.Stderr, "credplugin: refused: %v\n", err)
			os.Exit(1)
		}
	}
	switch os.Getenv("CREDPLUGIN_MODE") {
	case "hang":
		time.Sleep(time.Hour)
	case "garbage":
		fmt.Println("<html>not a credential</html>")
		return
	}
	registry, _, _ := strings.Cut(req.Image, "/")
	resp := response{Kind: "CredentialProviderResponse", APIVersion: req.APIVersion, CacheKeyType: "Registry",
		CacheDuration: os.Getenv("CREDPLUGIN_CACHE"),
		Auth:          map[string]auth{registry: {Username: os.Getenv("CREDPLUGIN_USER"), Password: os.Getenv("CREDPLUGIN_PASSWORD")}}}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		os.Exit(1)
	}
}
