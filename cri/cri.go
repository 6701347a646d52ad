// Package cri is the agent's narrow view of a node's container runtime.
//
// ImageService is the part of the CRI ImageService that prepull needs. It is
// what makes prepull work with any CRI runtime, and pulls go through it so that
// the runtime's own mirrors, rewrites and credentials apply.
//
// Store is what only containerd's own API can do: pin an image against the
// kubelet's image garbage collection, point a tag at a digest that is already
// present, report byte progress of pulls, and import an archive. A runtime that
// is not containerd gets Unsupported, whose every method fails with
// ErrUnsupported, so that the agent can say so in status instead of failing
// silently.
//
// Every error a runtime returns is mapped to one of the sentinels below, so
// callers decide with errors.Is and still see the runtime's own message.
package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"prepull.io/prepull/verify"
)

// Sentinel errors. Implementations wrap them together with the runtime's own
// message, so that both errors.Is and the message a user reads work.
var (
	// ErrNotFound means the image is not present on the node, or, for a pull,
	// that the registry does not have it.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized means the registry refused the credentials, or asked for
	// credentials that were not given.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnavailable means the runtime or the registry could not be reached.
	ErrUnavailable = errors.New("unavailable")
	// ErrTimeout means the call's deadline passed before the runtime answered.
	ErrTimeout = errors.New("timed out")
	// ErrInvalid means the runtime refused the request as malformed, for
	// example an image reference it cannot parse.
	ErrInvalid = errors.New("invalid request")
	// ErrUnsupported means the runtime cannot do this at all, for example
	// pinning on a runtime that is not containerd.
	ErrUnsupported = errors.New("unsupported by the runtime")
)

// PinnedLabel is the containerd image label that containerd's CRI plugin
// reports as pinned, and that the kubelet's image garbage collection honours.
const (
	PinnedLabel      = "io.cri-containerd.pinned"
	PinnedLabelValue = "pinned"
)

// ImageService is the subset of the CRI ImageService the agent uses.
type ImageService interface {
	// PullImage pulls ref (a tag, a digest or tag@digest) with the given
	// credentials, which may be nil, and returns the image ID the runtime
	// reports.
	PullImage(ctx context.Context, ref string, auth *Auth) (string, error)
	// ImageStatus describes the image that ref names on the node, or fails
	// with ErrNotFound.
	ImageStatus(ctx context.Context, ref string) (*Image, error)
	// ListImages lists every image on the node.
	ListImages(ctx context.Context) ([]Image, error)
	// RemoveImage removes the image that ref names, with all its references.
	// Removing an absent image succeeds.
	RemoveImage(ctx context.Context, ref string) error
	// ImageFsInfo reports the usage of the filesystems that hold images.
	ImageFsInfo(ctx context.Context) ([]FilesystemUsage, error)
}

// Image is one image as the runtime reports it.
type Image struct {
	// ID is the runtime's image ID, for containerd the config digest.
	ID string
	// RepoTags are the tag references that name the image, e.g. "reg/app:1.0".
	RepoTags []string
	// RepoDigests are the digest references that name the image, e.g.
	// "reg/app@sha256:…".
	RepoDigests []string
	// Size is the image's size in bytes, as the runtime counts it.
	Size uint64
	// Pinned reports whether the kubelet's image garbage collection must keep
	// the image.
	Pinned bool
}

// Statfs reports the used and total bytes of the filesystem at path.
func Statfs(path string) (used, total uint64, err error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(path, &s); err != nil {
		return 0, 0, err
	}
	total = s.Blocks * uint64(s.Bsize)
	return total - s.Bavail*uint64(s.Bsize), total, nil
}

// FilesystemUsage is the usage of one filesystem that holds images.
type FilesystemUsage struct {
	// Mountpoint is where the filesystem is mounted on the node.
	Mountpoint string
	// UsedBytes is what the images use on it.
	UsedBytes uint64
	// InodesUsed is how many inodes the images use on it.
	InodesUsed uint64
}

// Auth carries registry credentials for one pull. Its String method never
// prints a secret, so an Auth can be logged by accident without harm.
type Auth struct {
	// Username and Password are basic-auth credentials.
	Username string
	Password string
	// Auth is the base64 "user:password" form found in docker config files.
	Auth string
	// IdentityToken is an OAuth2 refresh token for the registry.
	IdentityToken string
	// RegistryToken is a bearer token sent to the registry as it is.
	RegistryToken string
	// ServerAddress is the registry the credentials are for, e.g.
	// "registry.example.com:5000" or "https://registry.example.com".
	ServerAddress string
}

// String describes a without revealing any secret.
func (a *Auth) String() string {
	if a == nil {
		return "<no credentials>"
	}
	kind := "none"
	switch {
	case a.IdentityToken != "":
		kind = "identity-token"
	case a.RegistryToken != "":
		kind = "registry-token"
	case a.Username != "" || a.Auth != "":
		kind = "basic"
	}
	return fmt.Sprintf("<%s credentials for %q>", kind, a.ServerAddress)
}

// Store is what only containerd's own API can do. Every method works in the
// namespace that containerd's CRI plugin uses, so that what it does is what the
// kubelet sees.
type Store interface {
	// Pin marks the image that ref names as pinned, and records owner on it.
	// Pinning again for the same owner changes nothing.
	Pin(ctx context.Context, ref, owner string) error
	// Unpin removes owner from the image that ref names. The pin goes with
	// the last owner, unless something other than this Store pinned the image
	// first. Unpinning an absent image or owner succeeds.
	Unpin(ctx context.Context, ref, owner string) error
	// Owners lists the owners recorded on the image that ref names.
	Owners(ctx context.Context, ref string) ([]string, error)
	// SetPins makes owners exactly the owners pinned on the image that ref
	// names — with keepOthers, owners and whoever else is there — in one
	// read and at most one write, as Pin and Unpin would one owner at a
	// time. It returns the owners on ref afterwards, sorted, and whether it
	// changed any.
	SetPins(ctx context.Context, ref string, owners []string, keepOthers bool) ([]string, bool, error)
	// Tag makes tag name exactly the image that digestRef names, which must
	// already be present; a tag that named another image is moved, its
	// labels kept. The tag is pinned for each of owners in the same write,
	// so that it is never seen unpinned and costs one write, not two. It
	// reports whether the tag's record is new: then owners are exactly its
	// pins.
	Tag(ctx context.Context, tag, digestRef string, owners ...string) (bool, error)
	// PullProgress reports how many bytes of the image that digestRef (a
	// digest reference) names are in the runtime, and of how many: the
	// blobs of its manifest for the node's platform, each counted whole
	// once stored and by its download's offset while it downloads. Nothing
	// else's downloads count. Total is 0 while the manifest is not known.
	PullProgress(ctx context.Context, digestRef string) (done, total int64, err error)
	// Import loads an OCI image-layout or docker-save archive into the
	// runtime and makes present each image it holds for which refs returns
	// references: unpacked for the node's platform, then named by exactly
	// those references (a reference that named another image is moved; its
	// labels, pins included, are kept). refs gets the name the archive gives
	// the image ("" when none) and its digest. An image that cannot be made
	// present (no manifest for the node's platform, a missing blob) gets an
	// Err and no reference; the others go on. A malformed archive is an
	// error and names nothing.
	Import(ctx context.Context, archive io.Reader, refs func(name, digest string) []string) ([]ArchiveImage, error)
}

// ImageNameAnnotation names an image in an OCI image layout's index.json;
// containerd's import reads it, so archives for nodes carry it.
const ImageNameAnnotation = "io.containerd.image.name"

// ArchiveImage is one image an archive holds, as Import found it.
type ArchiveImage struct {
	// Name is the reference the archive gives the image, or "".
	Name string
	// Digest is the digest of its manifest or index, "sha256:…".
	Digest string
	// Refs are the references Import made name it.
	Refs []string
	// Err says why Import could not make it present.
	Err error
}

// Unsupported is the Store of a runtime that is not containerd: every method
// fails with ErrUnsupported and names the runtime.
type Unsupported struct {
	// Runtime names the runtime, as CRI Version reports it.
	Runtime string
}

var _ Store = Unsupported{}

func (u Unsupported) err(what string) error {
	return fmt.Errorf("%s on runtime %q: %w", what, u.Runtime, ErrUnsupported)
}

// Pin fails with ErrUnsupported.
func (u Unsupported) Pin(context.Context, string, string) error { return u.err("pin") }

// Unpin fails with ErrUnsupported.
func (u Unsupported) Unpin(context.Context, string, string) error { return u.err("unpin") }

// Owners fails with ErrUnsupported.
func (u Unsupported) Owners(context.Context, string) ([]string, error) {
	return nil, u.err("list pin owners")
}

// SetPins fails with ErrUnsupported.
func (u Unsupported) SetPins(context.Context, string, []string, bool) ([]string, bool, error) {
	return nil, false, u.err("pin")
}

// Tag fails with ErrUnsupported.
func (u Unsupported) Tag(context.Context, string, string, ...string) (bool, error) {
	return false, u.err("tag")
}

// PullProgress fails with ErrUnsupported.
func (u Unsupported) PullProgress(context.Context, string) (int64, int64, error) {
	return 0, 0, u.err("pull progress")
}

// Import fails with ErrUnsupported.
func (u Unsupported) Import(context.Context, io.Reader, func(string, string) []string) ([]ArchiveImage, error) {
	return nil, u.err("import")
}

// ImageWatcher is a Store that can tell when an image record changes, so that
// a pin or a tag someone else took away is restored at once rather than at the
// next periodic resync.
type ImageWatcher interface {
	// WatchImages sends the name of every image record created, updated or
	// deleted, until ctx ends or the runtime stops sending; then it closes
	// the channel.
	WatchImages(ctx context.Context) (<-chan string, error)
}

// PullSizer is a Store that can tell, before a pull, how many bytes it will
// write: the image's blobs for the node's platform, and of those the ones
// the runtime does not hold yet.
type PullSizer interface {
	// PullBlobs lists the config and layers a pull of digestRef fetches for
	// the node's platform: from the runtime's manifests when it holds them,
	// else from the registry as a pull reaches it, with auth.
	PullBlobs(ctx context.Context, digestRef string, auth *Auth) ([]Blob, error)
	// Missing is how many bytes of blobs the runtime lacks: a blob it holds
	// counts nothing, one downloading counts what it has left.
	Missing(ctx context.Context, blobs []Blob) (int64, error)
}

// Blob is one blob of an image, as its manifest lists it.
type Blob struct {
	Digest string
	Size   int64
}

// RegistryReader is a Store that reads from registries as the runtime's own
// pulls reach them (mirrors, schemes, certificates): a tag's digest without
// pulling it, and an image's signatures, so that a node verifies an image
// before any of it is pulled.
type RegistryReader interface {
	Resolve(ctx context.Context, tagRef string, auth *Auth) (string, error)
	Signatures(ctx context.Context, digestRef string, auth *Auth) ([]verify.Signature, error)
}

// RemoteSnapshotLabel is the label a lazy-pulling snapshotter (stargz,
// SOCI) sets on a snapshot it mounts from the registry instead of
// unpacking, fetching its content on first read.
const RemoteSnapshotLabel = "containerd.io/snapshot/remote"

// LayerInspector is a Store that can tell whether an image's layers are
// on the node: unpacked, or only mounted from the registry by a
// lazy-pulling snapshotter.
type LayerInspector interface {
	// RemoteLayers counts the layers, for the node's platform, of the
	// image ref names, and those of them whose snapshot in the CRI
	// plugin's snapshotter carries RemoteSnapshotLabel. It also names the
	// snapshotter.
	RemoteLayers(ctx context.Context, ref string) (remote, total int, snapshotter string, err error)
}

// Fetcher opens a blob, by digest ("sha256:…"), from outside the runtime
// (a peer); size is what its descriptor says, -1 when not known.
type Fetcher func(ctx context.Context, digest string, size int64) (io.ReadCloser, error)

// PeerStore is a Store that can serve the images it holds to peers and
// make an image present from blobs a peer serves.
type PeerStore interface {
	// FetchImage makes the image digestRef names present — unpacked for
	// the node's platform and named digestRef — from the blobs fetch
	// opens: its manifest (an index, and its manifest for the node's
	// platform), config and layers, those the content store lacks. Each
	// blob is checked against its digest (and size) as it is written; one
	// that does not match is ErrCorrupt, and nothing of it is kept. admit,
	// when not nil, is asked before the config and layers of a manifest
	// are fetched with the bytes of those the content store lacks; its
	// error stops the fetch, and is returned.
	FetchImage(ctx context.Context, digestRef string, fetch Fetcher, admit func(need int64) error) error
	// OpenBlob opens, for a peer, a blob of the image digestRef names:
	// ErrNotFound when the node holds no such image or the blob is none
	// of its own.
	OpenBlob(ctx context.Context, digestRef, digest string) (io.ReadCloser, int64, error)
}

// ErrCorrupt means bytes did not match the digest they were fetched by.
var ErrCorrupt = errors.New("the bytes do not match their digest")

// PinLister is a Store that can list every reference carrying pin owners, so
// that an agent can take off pins whose owners it no longer knows of (the
// list went while the agent was away).
type PinLister interface {
	// PinnedRefs maps each image reference that carries owners to them.
	PinnedRefs(ctx context.Context) (map[string][]string, error)
}

// BroughtLabel marks an image record that prepull brought onto the node:
// it pulled or imported the image when the node did not hold it. Only an
// image so marked is prepull's to remove.
const BroughtLabel = "prepull.io/brought"

// SourceLabel records where prepull last fetched an image record's bytes
// from (Registry, Peer or Archive), and FetchedFromLabel the peer: an
// agent restarted still tells where its images came from.
const (
	SourceLabel      = "prepull.io/source"
	FetchedFromLabel = "prepull.io/fetched-from"
)

// Provenance is a Store that records, on the runtime's own image records
// (so that it outlives the agent), which images prepull brought.
type Provenance interface {
	// MarkBrought records that prepull brought the image ref names.
	MarkBrought(ctx context.Context, ref string) error
	// Brought reports whether it was recorded; ErrNotFound when ref names
	// no image.
	Brought(ctx context.Context, ref string) (bool, error)
	// MarkSource records where prepull last fetched the image ref names
	// from (a prepullv1.ImageFetchSource), and the peer when from is not
	// "".
	MarkSource(ctx context.Context, ref, source, from string) error
	// Source reads what MarkSource recorded ("" and "" when nothing was);
	// ErrNotFound when ref names no image.
	Source(ctx context.Context, ref string) (source, from string, err error)
}

// ContainerLister is an ImageService that can tell which images the
// node's containers use, in any state: an image in use is not removed.
type ContainerLister interface {
	// ImagesInUse is the set of image IDs and references the node's
	// containers were created from.
	ImagesInUse(ctx context.Context) (map[string]bool, error)
}

// soonEvery is how often Soon asks again: CRI's ImageStatus is a local
// call of well under a millisecond, and containerd's CRI plugin shows a
// change made through containerd's own API a few milliseconds after it.
const soonEvery = 2 * time.Millisecond

// Soon reports whether cond holds now or within a few seconds, asking every
// soonEvery: for what the runtime shows a moment after it is made.
func Soon(ctx context.Context, cond func(context.Context) bool) bool {
	return wait.PollUntilContextTimeout(ctx, soonEvery, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		return cond(ctx), nil
	}) == nil
}

// StatusSoon is the status of ref, allowing the runtime a few seconds to
// show an image just made: containerd's CRI plugin learns of images made
// through its own API (imports, tags) from events, a moment later.
func StatusSoon(ctx context.Context, images ImageService, ref string) (*Image, error) {
	var img *Image
	var err error
	Soon(ctx, func(ctx context.Context) bool {
		img, err = images.ImageStatus(ctx, ref)
		return err == nil || !errors.Is(err, ErrNotFound)
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return img, err
}
