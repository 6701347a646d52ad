// Command credplugin is a kubelet image credential provider plugin for
// prepull's tests. It speaks credentialprovider.kubelet.k8s.io/v1 on stdin
// and stdout and answers, for the registry of the image it is asked about,
// the credentials in $CREDPLUGIN_USER and $CREDPLUGIN_PASSWORD, to be kept
// $CREDPLUGIN_CACHE (a duration; none by default) by registry. Each run
// appends the image it was asked about to the file $CREDPLUGIN_LOG.
// $CREDPLUGIN_MODE=hang never answers; =garbage answers what is not JSON.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

type request struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Image      string `json:"image"`
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
