package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ctrl "sigs.k8s.io/controller-runtime"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/nodeauth"
)

// Authenticator names the node a request's token proves
// (nodeauth.Reviewer).
type Authenticator interface {
	Node(ctx context.Context, r *http.Request) (string, error)
}

// Server serves the blobs of the images its node holds to peer agents.
type Server struct {
	Store cri.PeerStore
	Auth  Authenticator
	// Wants reports whether node's own plan names image (a digest
	// reference), with an owner that is not releasing.
	Wants func(ctx context.Context, node, image string) (bool, error)
	// MaxServing bounds the blobs served at once; a caller past it is
	// told to try another holder (503).
	MaxServing int

	serving chan struct{}
}

// NewServer returns a Server; maxServing 0 means 4.
func NewServer(store cri.PeerStore, auth Authenticator, wants func(ctx context.Context, node, image string) (bool, error), maxServing int) *Server {
	if maxServing <= 0 {
		maxServing = 4
	}
	return &Server{Store: store, Auth: auth, Wants: wants, MaxServing: maxServing, serving: make(chan struct{}, maxServing)}
}

// ServeHTTP answers GET BlobPath+digest?image=digestRef: 401 without a
// token that proves a node, 403 when that node's plan does not name the
// image, 404 when this node holds no such image or the blob is not its
// own, 503 when MaxServing blobs are being served.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d, ok := strings.CutPrefix(r.URL.Path, BlobPath)
	image := r.URL.Query().Get("image")
	if r.Method != http.MethodGet || !ok || digest.Digest(d).Validate() != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if ref, err := imageref.Parse(image); err != nil || ref.Digest == "" {
		http.Error(w, "the query parameter image must be a digest reference", http.StatusBadRequest)
		return
	}
	node, err := s.Auth.Node(ctx, r)
	if err != nil {
		served.WithLabelValues("unauthenticated").Inc()
		http.Error(w, "a peer agent's token is required", http.StatusUnauthorized)
		return
	}
	wants, err := s.Wants(ctx, node, image)
	switch {
	case err != nil:
		http.Error(w, "the caller's plan could not be read", http.StatusServiceUnavailable)
		return
	case !wants:
		served.WithLabelValues("forbidden").Inc()
		ctrl.LoggerFrom(ctx).Info("Refused a peer an image its plan does not name", "peer", node, "image", image)
		http.Error(w, "the caller's node is not handed this image", http.StatusForbidden)
		return
	}
	select {
	case s.serving <- struct{}{}:
		defer func() { <-s.serving }()
	default:
		served.WithLabelValues("busy").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "serving as many peers as allowed", http.StatusServiceUnavailable)
		return
	}
	rc, size, err := s.Store.OpenBlob(ctx, image, d)
	if errors.Is(err, cri.ErrNotFound) {
		http.Error(w, "not held here", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, "the runtime could not open the blob", http.StatusInternalServerError)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	n, _ := io.Copy(w, rc)
	bytesServed.Add(float64(n))
	served.WithLabelValues("ok").Inc()
}

// Serve serves h over TLS with id on address until ctx ends.
func Serve(ctx context.Context, address string, id *Identity, h http.Handler) error {
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return fmt.Errorf("serve peers: %w", err)
	}
	if err := nodeauth.ServeTLS(ctx, ln, id.Certificate, h, nil); err != nil {
		return fmt.Errorf("serve peers: %w", err)
	}
	return nil
}
