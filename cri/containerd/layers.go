package containerd

import (
	"context"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"

	"prepull.io/prepull/cri"
)

var _ cri.LayerInspector = (*Store)(nil)

// RemoteLayers looks up the snapshot of each of the image's layers, by
// its chain ID, in the Store's snapshotter (WithSnapshotter: the CRI
// plugin's). A layer without a snapshot is not counted remote: the image
// is not unpacked there, which a container's creation does from the
// content store.
func (s *Store) RemoteLayers(ctx context.Context, ref string) (int, int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	img, err := s.client.GetImage(ctx, ref)
	if err != nil {
		return 0, 0, s.snapshotter, wrap("inspect layers", ref, err)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return 0, 0, s.snapshotter, wrap("inspect layers", ref, err)
	}
	sn := s.client.SnapshotService(s.snapshotter)
	remote := 0
	for _, chainID := range identity.ChainIDs(diffIDs) {
		info, err := sn.Stat(ctx, chainID.String())
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return 0, 0, s.snapshotter, wrap("inspect layers", ref, err)
		case info.Labels[cri.RemoteSnapshotLabel] != "":
			remote++
		}
	}
	return remote, len(diffIDs), s.snapshotter, nil
}
