package containerd

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/imageref"
	"prepull.io/prepull/verify"
)

var _ cri.RegistryReader = (*Store)(nil)

// Resolve returns the digest tagRef names at its registry, reached as the
// CRI plugin's pulls reach it, without pulling anything.
func (s *Store) Resolve(ctx context.Context, tagRef string, auth *cri.Auth) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, desc, err := s.resolver(ctx, auth).Resolve(ctx, tagRef)
	if err != nil {
		return "", wrap("resolve", tagRef, err)
	}
	return desc.Digest.String(), nil
}

// Signatures returns the signatures, in cosign's format, of the image
// digestRef names, read from its registry as the CRI plugin reaches it: the
// manifest at its signature tag, and its referrers of cosign's artifact
// type. None is no error.
func (s *Store) Signatures(ctx context.Context, digestRef string, auth *cri.Auth) ([]verify.Signature, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	r, err := imageref.Parse(digestRef)
	if err != nil {
		return nil, err
	}
	if r.Digest == "" {
		return nil, fmt.Errorf("signatures of %s: %w: not a digest reference", digestRef, cri.ErrInvalid)
	}
	resolver := s.resolver(ctx, auth)
	var manifests []ocispec.Descriptor
	tag := r.Repo + ":" + verify.SignatureTag(r.Digest)
	_, desc, err := resolver.Resolve(ctx, tag)
	switch {
	case err == nil:
		manifests = append(manifests, desc)
	case !errdefs.IsNotFound(err):
		return nil, wrap("signatures", tag, err)
	}
	fetcher, err := resolver.Fetcher(ctx, r.Repo+"@"+r.Digest)
	if err != nil {
		return nil, wrap("signatures", digestRef, err)
	}
	if rf, ok := fetcher.(remotes.ReferrersFetcher); ok {
		refs, err := rf.FetchReferrers(ctx, digest.Digest(r.Digest), remotes.WithReferrerArtifactTypes(verify.ArtifactType))
		if err != nil && !errdefs.IsNotFound(err) {
			return nil, wrap("signatures among the referrers", digestRef, err)
		}
		manifests = append(manifests, refs...)
	}
	var out []verify.Signature
	for _, m := range manifests {
		sigs, err := readSignatures(ctx, fetcher, m)
		if err != nil {
			return nil, wrap("signatures", digestRef, err)
		}
		out = append(out, sigs...)
	}
	return out, nil
}

// readSignatures reads the signatures the signature manifest m holds.
func readSignatures(ctx context.Context, f remotes.Fetcher, m ocispec.Descriptor) ([]verify.Signature, error) {
	raw, err := fetchSmall(ctx, f, m)
	if err != nil {
		return nil, err
	}
	return verify.Payloads(raw, "signature "+m.Digest.String(), func(d digest.Digest, size int64) (io.ReadCloser, error) {
		return f.Fetch(ctx, ocispec.Descriptor{MediaType: string(verify.PayloadMediaType), Digest: d, Size: size})
	})
}
