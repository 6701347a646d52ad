package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/nodeauth"
)

// Client fetches blobs from peer agents as its node's agent.
type Client struct {
	// TokenPath is the agent pod's projected token; "" means
	// nodeauth.TokenPath.
	TokenPath string
	// Stall is how long a transfer may go without a byte before the peer
	// is dropped; 0 means 15 seconds.
	Stall time.Duration
}

// Fetcher returns a cri.Fetcher reading the blobs of image (a digest
// reference) from holder, trusting only holder's certificate. What it
// reads counts in FromPeers.
func (c *Client) Fetcher(holder prepullv1.Peer, image string) cri.Fetcher {
	hc := &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		// The holder's certificate, as the controller published it, is
		// the trust: not a name and a CA.
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("the peer showed no certificate")
				}
				sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
				if hex.EncodeToString(sum[:]) != holder.CertSHA256 {
					return fmt.Errorf("peer %s showed another certificate than the one it published", holder.Node)
				}
				return nil
			}},
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   4,
	}}
	return func(ctx context.Context, dgst string, size int64) (io.ReadCloser, error) {
		token, err := os.ReadFile(c.tokenPath())
		if err != nil {
			return nil, fmt.Errorf("the agent's token: %w", err)
		}
		u := url.URL{Scheme: "https", Host: holder.Address, Path: BlobPath + dgst, RawQuery: url.Values{"image": {image}}.Encode()}
		ctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			cancel()
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
		resp, err := hc.Do(req)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("peer %s: %w", holder.Node, err)
		}
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("peer %s answered %s: %s", holder.Node, resp.Status, strings.TrimSpace(string(msg)))
		}
		if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size {
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("peer %s: blob %s of %d bytes, want %d: %w", holder.Node, dgst, resp.ContentLength, size, cri.ErrCorrupt)
		}
		return newStallReader(resp.Body, cancel, c.stall()), nil
	}
}

func (c *Client) tokenPath() string {
	if c.TokenPath != "" {
		return c.TokenPath
	}
	return nodeauth.TokenPath
}

func (c *Client) stall() time.Duration {
	if c.Stall > 0 {
		return c.Stall
	}
	return 15 * time.Second
}

// stallReader cancels a transfer that goes stall without a byte, and
// counts what it reads.
type stallReader struct {
	body   io.ReadCloser
	cancel context.CancelFunc
	timer  *time.Timer
	stall  time.Duration
}

func newStallReader(body io.ReadCloser, cancel context.CancelFunc, stall time.Duration) *stallReader {
	return &stallReader{body: body, cancel: cancel, timer: time.AfterFunc(stall, cancel), stall: stall}
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if n > 0 {
		s.timer.Reset(s.stall)
		bytesFetched.Add(float64(n))
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.timer.Stop()
	s.cancel()
	return s.body.Close()
}
