package verify

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// cosign's format.
const (
	// SignatureAnnotation holds, on each layer of a signature manifest, the
	// base64 signature over that layer's payload.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// PayloadMediaType is the media type of a signed payload layer.
	PayloadMediaType types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// ArtifactType is the artifact type of a signature manifest found
	// through the referrers API.
	ArtifactType = "application/vnd.dev.cosign.artifact.sig.v1+json"
)

// Bounds on what a registry or a bundle may make a reader read.
const (
	maxPayload    = 1 << 20
	maxSignatures = 64
)

// SignatureTag is the tag cosign stores digest's signatures under:
// "sha256-<hex>.sig".
func SignatureTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

// Payloads reads the signatures that one signature manifest (its raw JSON)
// holds: each layer of PayloadMediaType whose annotation carries a
// signature, its payload read with open by digest and size and checked
// against that digest here. from names the manifest in messages. Whoever
// holds the blobs — a registry, a bundle, containerd's view of a registry —
// reads them; what they mean is decided once, here.
func Payloads(manifest []byte, from string, open func(d digest.Digest, size int64) (io.ReadCloser, error)) ([]Signature, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	var out []Signature
	for _, l := range m.Layers {
		if l.MediaType != string(PayloadMediaType) || len(out) >= maxSignatures {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(l.Annotations[SignatureAnnotation])
		if err != nil || len(sig) == 0 {
			continue
		}
		if l.Size > maxPayload {
			return nil, fmt.Errorf("%s: payload %s of %d bytes, more than %d", from, l.Digest, l.Size, maxPayload)
		}
		p, err := readPayload(l, open)
		if err != nil {
			return nil, fmt.Errorf("%s: payload %s: %w", from, l.Digest, err)
		}
		out = append(out, Signature{Payload: p, Signature: sig, From: from})
	}
	return out, nil
}

func readPayload(l ocispec.Descriptor, open func(digest.Digest, int64) (io.ReadCloser, error)) ([]byte, error) {
	rc, err := open(l.Digest, l.Size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	p, err := io.ReadAll(io.LimitReader(rc, maxPayload))
	if err != nil {
		return nil, err
	}
	if digest.FromBytes(p) != l.Digest {
		return nil, fmt.Errorf("does not match its digest")
	}
	return p, nil
}
