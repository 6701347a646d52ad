package cri

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultCallTimeout is the deadline of Remote's calls but pulls.
const DefaultCallTimeout = 30 * time.Second

// Remote is the ImageService of a CRI runtime reached over gRPC.
type Remote struct {
	conn        *grpc.ClientConn
	images      runtimeapi.ImageServiceClient
	runtime     runtimeapi.RuntimeServiceClient
	callTimeout time.Duration
	pullTimeout time.Duration
}

var (
	_ ImageService    = (*Remote)(nil)
	_ ContainerLister = (*Remote)(nil)
)

// RemoteOption configures a Remote.
type RemoteOption func(*Remote)

// WithCallTimeout sets the deadline of every call but pulls.
func WithCallTimeout(d time.Duration) RemoteOption {
	return func(r *Remote) { r.callTimeout = d }
}

// WithPullTimeout sets the deadline of a pull. A context with an earlier
// deadline still wins. Without it, a pull has its context's deadline only:
// the agent gives each pull its list's timeout.
func WithPullTimeout(d time.Duration) RemoteOption {
	return func(r *Remote) { r.pullTimeout = d }
}

// NewRemote returns a Remote for the runtime listening at endpoint, a unix
// socket path or a "unix://" address. It does not connect: the first call does,
// so that an agent can start before its runtime.
func NewRemote(endpoint string, opts ...RemoteOption) (*Remote, error) {
	target := endpoint
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
	)
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %q: %w", endpoint, err)
	}
	r := &Remote{
		conn:        conn,
		images:      runtimeapi.NewImageServiceClient(conn),
		runtime:     runtimeapi.NewRuntimeServiceClient(conn),
		callTimeout: DefaultCallTimeout,
	}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Close closes the connection.
func (r *Remote) Close() error { return r.conn.Close() }

// RuntimeName asks the runtime for its name and version, e.g. "containerd
// v2.4.2". The agent uses it to choose a Store.
func (r *Remote) RuntimeName(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	resp, err := r.runtime.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", wrapError("runtime version", "", err)
	}
	return resp.GetRuntimeName() + " " + resp.GetRuntimeVersion(), nil
}

// PullImage pulls ref through the runtime.
func (r *Remote) PullImage(ctx context.Context, ref string, auth *Auth) (string, error) {
	if r.pullTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.pullTimeout)
		defer cancel()
	}
	resp, err := r.images.PullImage(ctx, &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
		Auth:  authConfig(auth),
		// containerd ignores the runtime handler of a pull without a sandbox
		// config, so one is always sent.
		SandboxConfig: &runtimeapi.PodSandboxConfig{},
	})
	if err != nil {
		return "", wrapError("pull", ref, err)
	}
	return resp.GetImageRef(), nil
}

// authConfig converts a to CRI's form. containerd matches credentials to a
// registry by the host of ServerAddress parsed as a URL, and silently drops
// them when it has no scheme, so a bare host gets one.
func authConfig(a *Auth) *runtimeapi.AuthConfig {
	if a == nil {
		return nil
	}
	server := a.ServerAddress
	if server != "" && !strings.Contains(server, "://") {
		server = "https://" + server
	}
	return &runtimeapi.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		Auth:          a.Auth,
		ServerAddress: server,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	}
}

// ImageStatus describes the image ref names, or fails with ErrNotFound.
func (r *Remote) ImageStatus(ctx context.Context, ref string) (*Image, error) {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	resp, err := r.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
	})
	if err != nil {
		return nil, wrapError("image status", ref, err)
	}
	if resp.GetImage() == nil {
		return nil, &Error{Op: "image status", Ref: ref, Kind: ErrNotFound,
			Err: fmt.Errorf("no such image on the node")}
	}
	img := fromCRI(resp.GetImage())
	return &img, nil
}

// ListImages lists the images on the node.
func (r *Remote) ListImages(ctx context.Context) ([]Image, error) {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	resp, err := r.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, wrapError("list images", "", err)
	}
	out := make([]Image, 0, len(resp.GetImages()))
	for _, i := range resp.GetImages() {
		out = append(out, fromCRI(i))
	}
	return out, nil
}

// ImagesInUse is the set of image IDs and references of the node's
// containers, in any state (the kubelet's image garbage collection counts
// an exited container's image in use too).
func (r *Remote) ImagesInUse(ctx context.Context) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	resp, err := r.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, wrapError("list containers", "", err)
	}
	out := map[string]bool{}
	for _, c := range resp.GetContainers() {
		for _, ref := range []string{c.GetImageRef(), c.GetImage().GetImage(), c.GetImageId()} {
			if ref != "" {
				out[ref] = true
			}
		}
	}
	return out, nil
}

// RemoveImage removes the image ref names; an absent image is no error.
func (r *Remote) RemoveImage(ctx context.Context, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	_, err := r.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
	})
	err = wrapError("remove image", ref, err)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// ImageFsInfo reports the usage of the image filesystems.
func (r *Remote) ImageFsInfo(ctx context.Context) ([]FilesystemUsage, error) {
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	resp, err := r.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		return nil, wrapError("image filesystem info", "", err)
	}
	var out []FilesystemUsage
	for _, fs := range resp.GetImageFilesystems() {
		out = append(out, FilesystemUsage{
			Mountpoint: fs.GetFsId().GetMountpoint(),
			UsedBytes:  fs.GetUsedBytes().GetValue(),
			InodesUsed: fs.GetInodesUsed().GetValue(),
		})
	}
	return out, nil
}

func fromCRI(i *runtimeapi.Image) Image {
	return Image{
		ID:          i.GetId(),
		RepoTags:    i.GetRepoTags(),
		RepoDigests: i.GetRepoDigests(),
		Size:        i.GetSize(),
		Pinned:      i.GetPinned(),
	}
}
