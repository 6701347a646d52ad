package testground

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// emptyConfig is the OCI empty descriptor's content, an artifact's config.
const emptyConfig = "{}"

// Artifact makes an OCI artifact of artifactType: an image manifest whose
// config is the empty descriptor (no platform, no program) and whose one
// layer is a tar of files, as tools ship model weights and datasets for
// image volumes.
func Artifact(artifactType string, files []File) (v1.Image, error) {
	base, err := Image(v1.Platform{}, nil, files)
	if err != nil {
		return nil, err
	}
	return &artifact{Image: base, artifactType: artifactType}, nil
}

type artifact struct {
	v1.Image
	artifactType string
}

func (a *artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *artifact) RawConfigFile() ([]byte, error)      { return []byte(emptyConfig), nil }

func (a *artifact) ConfigName() (v1.Hash, error) {
	sum := sha256.Sum256([]byte(emptyConfig))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}

func (a *artifact) Manifest() (*v1.Manifest, error) {
	m, err := a.Image.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	name, _ := a.ConfigName()
	m.Config = v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Size: int64(len(emptyConfig)), Digest: name}
	return m, nil
}

func (a *artifact) RawManifest() ([]byte, error) {
	m, err := a.Manifest()
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		*v1.Manifest
		ArtifactType string `json:"artifactType"`
	}{m, a.artifactType})
}

func (a *artifact) Digest() (v1.Hash, error) {
	raw, err := a.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	sum := sha256.Sum256(raw)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}

func (a *artifact) Size() (int64, error) {
	raw, err := a.RawManifest()
	return int64(len(raw)), err
}
