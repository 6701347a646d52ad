package bundle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// FetchPolicy says where archives may be downloaded from, and how much: a
// list names a URL, and every node's agent fetches it from the node's
// network, so by default only https, never a loopback, link-local or
// metadata address (what a node reaches that the cluster's tenants should
// not), no redirect to another host, and a bounded size and time.
type FetchPolicy struct {
	// Hosts are the hosts ("host" or "host:port") the operator allows
	// beyond that: over plain http, at any address, and as the target of a
	// redirect.
	Hosts []string
	// MaxBytes bounds a download, and the decompressed copy a compressed
	// bundle is verified from; 0 means DefaultMaxDownload. Both are written
	// to the temporary directory, one import at a time on a node: twice
	// MaxBytes is what that directory needs.
	MaxBytes int64
	// Admit, when set, is asked before a download is written (with its
	// announced length) and before an import starts (with the archive's
	// size); its error stops them. The agent's disk budget answers it.
	Admit func(bytes int64) error
	// Claim, when set, is asked before an import makes tag reference ref
	// name the image of digest; its error leaves the tag as it is and is
	// the reference's Err, the archive's other images going on. The agent
	// answers it so that an archive never moves a tag it did not place.
	Claim func(ctx context.Context, ref, digest string) error
	// ConnectTimeout bounds a connection, Timeout a whole download; zero
	// means DefaultConnectTimeout and DefaultDownloadTimeout.
	ConnectTimeout, Timeout time.Duration
}

// Defaults of FetchPolicy.
const (
	DefaultMaxDownload     = 8 << 30
	DefaultConnectTimeout  = 10 * time.Second
	DefaultDownloadTimeout = time.Hour
)

// ErrRefused means a download was not made, or not followed, because the
// policy does not allow it.
var ErrRefused = errors.New("refused by the agent's archive policy")

// admit asks Admit, if any, about an archive of n bytes.
func (p FetchPolicy) admit(n int64) error {
	if p.Admit == nil || n <= 0 {
		return nil
	}
	return p.Admit(n)
}

// listed reports whether host ("host:port") is one the operator allows,
// by its name alone or with its port.
func (p FetchPolicy) listed(host string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	return slices.Contains(p.Hosts, host) || slices.Contains(p.Hosts, name)
}

// allows reports why u may not be fetched under p, or nil.
func (p FetchPolicy) allows(u *url.URL) error {
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && p.listed(u.Host):
	case u.Scheme == "http":
		return fmt.Errorf("%w: plain http to %s, which the operator does not list (the agent's --archive-hosts)", ErrRefused, u.Host)
	default:
		return fmt.Errorf("%w: scheme %q", ErrRefused, u.Scheme)
	}
	return nil
}

// Client is an HTTP client that holds to p: its redirects, the addresses it
// connects to, and its timeouts. MaxBytes is Fetch's to hold.
func (p FetchPolicy) Client() *http.Client {
	dialer := &net.Dialer{Timeout: cmp.Or(p.ConnectTimeout, DefaultConnectTimeout)}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		var errs []error
		for _, ip := range ips {
			// The address checked is the one dialled: a name that resolves
			// anew between the two cannot slip past.
			if why := forbidden(ip.IP); why != "" && !p.listed(addr) {
				errs = append(errs, fmt.Errorf("%w: %s resolves to %s, %s", ErrRefused, host, ip.IP, why))
				continue
			}
			c, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.IP.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	return &http.Client{
		Transport: tr,
		Timeout:   cmp.Or(p.Timeout, DefaultDownloadTimeout),
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return fmt.Errorf("%w: more than 5 redirects", ErrRefused)
			}
			if req.URL.Host != via[0].URL.Host && !p.listed(req.URL.Host) {
				return fmt.Errorf("%w: a redirect to another host, %s, which the operator does not list", ErrRefused, req.URL.Host)
			}
			return p.allows(req.URL)
		},
	}
}

// metadataAddresses are the cloud instance metadata services that are not
// link-local.
var metadataAddresses = []net.IP{
	net.ParseIP("fd00:ec2::254"),   // AWS, IPv6
	net.ParseIP("100.100.100.200"), // Alibaba Cloud
}

// forbidden says why a download may not connect to ip, or "".
func forbidden(ip net.IP) string {
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "a link-local address (where cloud metadata services answer)"
	case ip.IsUnspecified(), ip.IsMulticast():
		return "not an address to download from"
	case slices.ContainsFunc(metadataAddresses, ip.Equal):
		return "a cloud metadata address"
	}
	return ""
}
