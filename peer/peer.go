// Package peer is how the nodes' agents serve one another the images their
// nodes hold, so that a fleet fetches each image from its registry about
// once.
//
// An agent serves, over TLS with a certificate it makes at start, the
// blobs of images present on its node, by digest and read only, to peer
// agents only: a request carries the caller's pod-bound token (package
// nodeauth), which names the caller's node, and is answered only when that
// node's own plan names the image (so a private image goes only to nodes
// whose lists were handed it) and the blob is one of that image's. The
// caller trusts only the certificate whose SHA-256 the controller
// published for that node (an ImageRoute's holders, read from the node's
// NodeImageSet status, which only its agent writes), and the runtime
// checks every blob against its digest as it is written.
package peer

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"

	"prepull.io/prepull/nodeauth"
)

// BlobPath is where an agent serves blobs: BlobPath + digest, with the
// image's digest reference in the query parameter "image".
const BlobPath = "/v1/blobs/"

// Identity is an agent's TLS certificate and its SHA-256, which peers pin.
type Identity struct {
	Certificate tls.Certificate
	// SHA256 is the certificate's (DER) SHA-256, hex.
	SHA256 string
}

// NewIdentity makes a self-signed certificate for the agent serving at
// address ("host:port").
func NewIdentity(address string) (*Identity, error) {
	pair, _, err := nodeauth.SelfSigned(address)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(pair.Certificate[0])
	return &Identity{Certificate: pair, SHA256: hex.EncodeToString(sum[:])}, nil
}
