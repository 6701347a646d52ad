package nodeauth

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/cert"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// EndpointConfigMap is the ConfigMap, in the controller's namespace, where
// the endpoint publishes its address and certificate.
const EndpointConfigMap = "prepull-endpoint"

// Keys of EndpointConfigMap.
const (
	keyAddress = "address"
	keyCA      = "ca.crt"
)

// Serve serves h over TLS on bind until ctx ends, with a certificate it
// makes for advertise ("host:port", how agents reach it), and publishes
// advertise and the certificate in namespace's EndpointConfigMap.
func Serve(ctx context.Context, c client.Client, namespace, bind, advertise string, h http.Handler) error {
	pair, certPEM, err := SelfSigned(advertise)
	if err != nil {
		return fmt.Errorf("the endpoint's certificate: %w", err)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	err = ServeTLS(ctx, ln, pair, h, func() error { return publish(ctx, c, namespace, advertise, certPEM) })
	if err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	return nil
}

// SelfSigned makes a self-signed certificate for a server reached at
// address ("host:port"): the pair, and the certificate in PEM.
func SelfSigned(address string) (tls.Certificate, []byte, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("address %q: %w", address, err)
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = append(ips, ip)
	}
	certPEM, keyPEM, err := cert.GenerateSelfSignedCertKey(host, ips, nil)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	return pair, certPEM, err
}

// ServeTLS serves h over TLS with cert on ln until ctx ends, and then
// shuts down within 5 seconds. started, when not nil, runs once the server
// is up; its error stops it.
func ServeTLS(ctx context.Context, ln net.Listener, cert tls.Certificate, h http.Handler, started func() error) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx },
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	if started != nil {
		if err := started(); err != nil {
			srv.Close()
			return err
		}
	}
	select {
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shut)
	case err := <-errc:
		return err
	}
}

// publish writes advertise and certPEM to namespace's EndpointConfigMap.
func publish(ctx context.Context, c client.Client, namespace, advertise string, certPEM []byte) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: EndpointConfigMap,
		Labels: map[string]string{"app.kubernetes.io/part-of": "prepull"}}}
	data := map[string]string{keyAddress: advertise, keyCA: string(certPEM)}
	err := c.Get(ctx, client.ObjectKeyFromObject(cm), cm)
	switch {
	case apierrors.IsNotFound(err):
		cm.Data = data
		err = c.Create(ctx, cm)
	case err == nil:
		cm.Data = data
		err = c.Update(ctx, cm)
	}
	if err != nil {
		return fmt.Errorf("publish the endpoint in %s/%s: %w", namespace, EndpointConfigMap, err)
	}
	return nil
}

// Client calls the endpoint published in a namespace as the agent of a
// node: it presents the pod's projected token and trusts only the
// published certificate. It reads the ConfigMap again after a failure to
// connect (a new leader publishes another address and certificate).
type Client struct {
	// Reader reads the ConfigMap; Namespace is the controller's.
	Reader    client.Reader
	Namespace string
	// TokenPath is the projected token; "" means TokenPath.
	TokenPath string

	mu   sync.Mutex
	http *http.Client
	base *url.URL
}

// Get sends a GET of path (with query) and returns the response, which
// the caller closes.
func (c *Client) Get(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	hc, base, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(cmp.Or(c.TokenPath, TokenPath))
	if err != nil {
		return nil, fmt.Errorf("the agent's token: %w", err)
	}
	u := base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := hc.Do(req)
	if err != nil {
		c.forget()
		return nil, fmt.Errorf("prepull's endpoint at %s: %w", base.Host, err)
	}
	return resp, nil
}

func (c *Client) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.http, c.base = nil, nil
}

func (c *Client) dial(ctx context.Context) (*http.Client, *url.URL, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.http != nil {
		return c.http, c.base, nil
	}
	cm := &corev1.ConfigMap{}
	if err := c.Reader.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: EndpointConfigMap}, cm); err != nil {
		return nil, nil, fmt.Errorf("find prepull's endpoint (ConfigMap %s/%s, published by the controller's leader): %w", c.Namespace, EndpointConfigMap, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[keyCA])) || cm.Data[keyAddress] == "" {
		return nil, nil, fmt.Errorf("ConfigMap %s/%s: no address or certificate", c.Namespace, EndpointConfigMap)
	}
	c.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Proxy: nil,
	}}
	c.base = &url.URL{Scheme: "https", Host: cm.Data[keyAddress]}
	return c.http, c.base, nil
}

// ErrorOf is the error a response other than 200 says, its body bounded.
func ErrorOf(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	msg := string(body)
	if msg == "" {
		msg = resp.Status
	}
	return &StatusError{Code: resp.StatusCode, Message: msg}
}

// StatusError is an endpoint's refusal.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("prepull's endpoint answered %d: %s", e.Code, e.Message)
}

// IsForbidden reports whether err is the endpoint's 401 or 403.
func IsForbidden(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized)
}
