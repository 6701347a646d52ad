package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ImageOwner is one PrePullList that wants an image on a node. It carries
// only what the controller decides for the node; the list's own settings
// (retain, onDelete, rollout timeout and backoff limit, pull secrets) are
// read by the agent from the PrePullList itself, where they are defined.
type ImageOwner struct {
	// list is the owning PrePullList as "namespace/name".
	// +required
	// +kubebuilder:validation:MaxLength=317
	List string `json:"list"`
	// releasing is true when the list is being deleted, no longer selects
	// the node, or moved to another digest: the agent takes the list's pin
	// off and applies its onDelete; the controller then drops the owner.
	// +optional
	Releasing bool `json:"releasing,omitempty"`
	// tags are the tag references this list wants to name the image. A
	// tag is claimed by at most one entry of a node.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	Tags []string `json:"tags,omitempty"`
}

// NodeImage is one image a node must hold.
type NodeImage struct {
	// image is the digest reference every node gets, "repo@sha256:…"; or,
	// while a tag is resolved on a node (resolution: Node, or an archive),
	// the tag reference itself, whose digest the agent reports.
	// +required
	// +kubebuilder:validation:MaxLength=400
	Image string `json:"image"`
	// resolveAfter, on a tag resolved on the node, asks the agent to pull
	// the tag again once this time has come, if it last pulled it before:
	// that is how a tag that moved is noticed on this path.
	// +optional
	ResolveAfter *metav1.Time `json:"resolveAfter,omitempty"`
	// archive, when set, is where the agent imports the image from instead
	// of pulling it.
	// +optional
	Archive *ArchiveSource `json:"archive,omitempty"`
	// owners are the lists that want the image, sorted by list.
	// +required
	// +listType=map
	// +listMapKey=list
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	Owners []ImageOwner `json:"owners"`
}

// NodeImageSetSpec is what the node must hold, composed by the controller.
type NodeImageSetSpec struct {
	// plan names the ImagePlan that holds the images the node must hold,
	// shared with every node handed the same images. The controller hands
	// nodes their images this way.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^plan-[0-9a-f]{32}$`
	Plan string `json:"plan,omitempty"`
	// images are images the node must hold beside its plan's; an entry
	// takes the place of the plan's entry of the same image. The
	// controller writes none; they are for a NodeImageSet written by hand.
	// +optional
	// +listType=map
	// +listMapKey=image
	// +kubebuilder:validation:MaxItems=4096
	Images []NodeImage `json:"images,omitempty"`
}

// ImagePhase is where one image stands on one node.
// +kubebuilder:validation:Enum=Pending;Pulling;Present;Lazy;Failed;Released
type ImagePhase string

const (
	// PhasePending: wanted, not started.
	PhasePending ImagePhase = "Pending"
	// PhasePulling: being pulled, or retried after a failure.
	PhasePulling ImagePhase = "Pulling"
	// PhasePresent: present at the digest, with every tag naming it, pinned
	// if any owner wants it pinned.
	PhasePresent ImagePhase = "Present"
	// PhaseLazy: the runtime lists the image, but some of its layers are
	// remote snapshots of a lazy-pulling snapshotter (stargz, SOCI) that
	// fetches their content on first read: a container of it needs the
	// registry until then. It does not count as Present; the controller
	// reports it as a node's failure, with the agent's advice.
	PhaseLazy ImagePhase = "Lazy"
	// PhaseFailed: the backoff limit was reached; lastError says why.
	PhaseFailed ImagePhase = "Failed"
	// PhaseReleased: every owner is releasing and the agent applied their
	// onDelete.
	PhaseReleased ImagePhase = "Released"
)

// NodeImageStatus is the agent's report on one image.
type NodeImageStatus struct {
	// image is the spec entry's image.
	// +required
	// +kubebuilder:validation:MaxLength=400
	Image string `json:"image"`
	// phase is where the image stands.
	// +required
	Phase ImagePhase `json:"phase"`
	// digest is the manifest digest present on the node ("sha256:…"); for a
	// tag resolved on the node, the digest it resolved to.
	// +optional
	// +kubebuilder:validation:MaxLength=80
	Digest string `json:"digest,omitempty"`
	// pinned reports whether the runtime reports the image pinned.
	// +optional
	Pinned bool `json:"pinned,omitempty"`
	// pinOwners are the lists whose pins the image carries on the node.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	PinOwners []string `json:"pinOwners,omitempty"`
	// bytesDone and bytesTotal are the pull's progress.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// pulledAt is when the agent last pulled or imported the image
	// successfully.
	// +optional
	PulledAt *metav1.Time `json:"pulledAt,omitempty"`
	// importedFrom is the SHA-256 of the archive the image was last
	// imported from; empty when it was pulled.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	ImportedFrom string `json:"importedFrom,omitempty"`
	// source is where the image's bytes last came from: Registry (a pull
	// through the runtime), Peer (another node's agent; peer names it),
	// or Archive (an import). Empty when the node held it already.
	// +optional
	Source ImageFetchSource `json:"source,omitempty"`
	// fetchedFrom is the node the image was fetched from, with source Peer.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	FetchedFrom string `json:"fetchedFrom,omitempty"`
	// credentials is the kind of credentials the image was last pulled
	// with (never the credentials): PullSecret (a list's), or
	// CredentialProvider (the node's kubelet credential provider plugins);
	// empty for none, or an import.
	// +optional
	Credentials CredentialKind `json:"credentials,omitempty"`
	// attempts counts the pulls tried.
	// +optional
	Attempts int32 `json:"attempts,omitempty"`
	// reason is a CamelCase word for the last failure, e.g. Unauthorized.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`
	// lastError is the runtime's message for the last failure.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	LastError string `json:"lastError,omitempty"`
	// lastTransitionTime is when the phase last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`
	// signature is what checking the image's signatures in its bundle
	// found, for an owner whose list has spec.verify.
	// +optional
	Signature *SignatureStatus `json:"signature,omitempty"`
}

// FetchCounts count images fetched by where their bytes came from.
type FetchCounts struct {
	// registry, peer and archive count images by source.
	// +optional
	Registry int32 `json:"registry,omitempty"`
	// +optional
	Peer int32 `json:"peer,omitempty"`
	// +optional
	Archive int32 `json:"archive,omitempty"`
	// registryBytes and peerBytes are what those from registries and from
	// peers took.
	// +optional
	RegistryBytes int64 `json:"registryBytes,omitempty"`
	// +optional
	PeerBytes int64 `json:"peerBytes,omitempty"`
}

// Count adds an image of source that took bytes.
func (c *FetchCounts) Count(source ImageFetchSource, bytes int64) {
	switch source {
	case FetchedFromRegistry:
		c.Registry++
		c.RegistryBytes += bytes
	case FetchedFromPeer:
		c.Peer++
		c.PeerBytes += bytes
	case FetchedFromArchive:
		c.Archive++
	}
}

// planSourceLetters are the letters of NodeImageSetStatus.PlanSources.
var planSourceLetters = map[ImageFetchSource]byte{FetchedFromRegistry: 'R', FetchedFromPeer: 'P'}

// PlanSourceLetter is source's letter in NodeImageSetStatus.PlanSources.
func PlanSourceLetter(source ImageFetchSource) byte {
	if l, ok := planSourceLetters[source]; ok {
		return l
	}
	return '-'
}

// PlanSource is the source a letter of NodeImageSetStatus.PlanSources
// names; "" for '-'.
func PlanSource(letter byte) ImageFetchSource {
	for s, l := range planSourceLetters {
		if l == letter {
			return s
		}
	}
	return ""
}

// ImageFetchSource is where an image's bytes came from.
// +kubebuilder:validation:Enum=Registry;Peer;Archive
type ImageFetchSource string

// Sources of an image's bytes.
const (
	FetchedFromRegistry ImageFetchSource = "Registry"
	FetchedFromPeer     ImageFetchSource = "Peer"
	FetchedFromArchive  ImageFetchSource = "Archive"
)

// CredentialKind is where an image's pull credentials came from.
// +kubebuilder:validation:Enum=PullSecret;CredentialProvider
type CredentialKind string

// Kinds of credentials.
const (
	CredentialsPullSecret         CredentialKind = "PullSecret"
	CredentialsCredentialProvider CredentialKind = "CredentialProvider"
)

// ImageFilesystem is the usage of the node's image filesystem.
type ImageFilesystem struct {
	// usedBytes is what images use.
	UsedBytes int64 `json:"usedBytes"`
	// capacityBytes is the filesystem's size, when known.
	// +optional
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
}

// NodeImageSetStatus is what the node's agent observed.
type NodeImageSetStatus struct {
	// observedGeneration is the spec generation the agent last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// images is the agent's report per spec image, but for the images of
	// plan that are present as asked (see plan).
	// +optional
	// +listType=map
	// +listMapKey=image
	// +kubebuilder:validation:MaxItems=4096
	Images []NodeImageStatus `json:"images,omitempty"`
	// plan is the ImagePlan the spec named when the agent acted on it. An
	// image of that plan which images does not list is present as asked:
	// Present at its digest, pinned by exactly the plan entry's owners
	// that are not releasing, with no failure, signature report or archive
	// to tell. Only what differs is listed, so that a node holding what it
	// was handed reports it in a few bytes, however many images it holds.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Plan string `json:"plan,omitempty"`
	// planPresent counts the images of plan reported present that way, and
	// planBytes is what they took to pull or import.
	// +optional
	PlanPresent int32 `json:"planPresent,omitempty"`
	// +optional
	PlanBytes int64 `json:"planBytes,omitempty"`
	// planSources says where the images counted in planPresent came from,
	// one letter each, in the order of their names: R a registry, P a
	// peer, - not known (present before the agent fetched it). Empty when
	// none is known.
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	// +kubebuilder:validation:Pattern=`^[RP-]*$`
	PlanSources string `json:"planSources,omitempty"`
	// imageFilesystem is the usage of the node's image filesystem.
	// +optional
	ImageFilesystem *ImageFilesystem `json:"imageFilesystem,omitempty"`
	// peer is where the node's agent serves the images it holds to peers,
	// when peers are on.
	// +optional
	Peer *Peer `json:"peer,omitempty"`
	// fetched counts the images of the spec the agent fetched since it
	// started, by where their bytes came from, and those bytes.
	// +optional
	Fetched *FetchCounts `json:"fetched,omitempty"`
	// credentialVerification is the node's kubelet's
	// imagePullCredentialsVerificationPolicy as the agent read it from
	// the kubelet's configuration: NeverVerifyPreloadedImages (also when
	// unset), NeverVerify, NeverVerifyAllowlistedImages, AlwaysVerify, or
	// Off when its KubeletEnsureSecretPulledImages gate is off; empty
	// when not known. Under NeverVerifyPreloadedImages, NeverVerify and
	// Off any pod of the node may run an image prepull pulled there,
	// private ones included, without credentials.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	CredentialVerification string `json:"credentialVerification,omitempty"`
	// runtime names the node's container runtime and version.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Runtime string `json:"runtime,omitempty"`
	// checks are the agent's checks of the node's runtime configuration
	// (prepull doctor), run when it starts and every few minutes.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Checks []RuntimeCheck `json:"checks,omitempty"`
}

// CheckResult is how one check of a node's configuration came out.
// +kubebuilder:validation:Enum=Pass;Warn;Fail
type CheckResult string

const (
	// CheckPass: nothing there defeats pre-pulling.
	CheckPass CheckResult = "Pass"
	// CheckWarn: pre-pulling works, less well than it could, or the check
	// could not see what it needs.
	CheckWarn CheckResult = "Warn"
	// CheckFail: the configuration defeats what prepull promises.
	CheckFail CheckResult = "Fail"
)

// RuntimeCheck is one check of a node's runtime configuration.
type RuntimeCheck struct {
	// name names the check, e.g. registry-hosts.
	// +required
	// +kubebuilder:validation:MaxLength=64
	Name string `json:"name"`
	// result is Pass, Warn or Fail.
	// +required
	Result CheckResult `json:"result"`
	// message says what the check found.
	// +required
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message"`
	// advice says what to do about it; empty on Pass.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Advice string `json:"advice,omitempty"`
}

// NodeImageSet is the images one node must hold, and what it holds. It is
// named after its node and goes when the node goes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nis,categories=prepull
// +kubebuilder:printcolumn:name="Plan",type=string,JSONPath=`.spec.plan`
// +kubebuilder:printcolumn:name="Runtime",type=string,JSONPath=`.status.runtime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeImageSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is written by the controller only.
	// +optional
	Spec NodeImageSetSpec `json:"spec,omitempty"`
	// status is written by the node's agent only.
	// +optional
	Status NodeImageSetStatus `json:"status,omitempty"`
}

// NodeImageSetList is a list of NodeImageSets.
//
// +kubebuilder:object:root=true
type NodeImageSetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeImageSet `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NodeImageSet{}, &NodeImageSetList{})
}
