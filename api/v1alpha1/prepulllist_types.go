package v1alpha1

import (
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// RetainPolicy says whether the images are pinned on the nodes.
// +kubebuilder:validation:Enum=Pinned;Unpinned
type RetainPolicy string

const (
	// RetainPinned pins the images, so the kubelet's image garbage
	// collection never removes them.
	RetainPinned RetainPolicy = "Pinned"
	// RetainUnpinned leaves the images to the kubelet's garbage collection
	// once pulled.
	RetainUnpinned RetainPolicy = "Unpinned"
)

// DeletePolicy says what happens on the nodes when a list is deleted or stops
// selecting a node.
// +kubebuilder:validation:Enum=Unpin;Remove
type DeletePolicy string

const (
	// DeleteUnpin takes the list's pins off and leaves the images.
	DeleteUnpin DeletePolicy = "Unpin"
	// DeleteRemove also removes each image that no other list wants.
	DeleteRemove DeletePolicy = "Remove"
)

// ResolutionPolicy says where tags are resolved to digests.
// +kubebuilder:validation:Enum=Registry;Node
type ResolutionPolicy string

const (
	// ResolveAtRegistry has the controller ask the registry for each tag's
	// digest, once per refresh, with the list's pull secrets.
	ResolveAtRegistry ResolutionPolicy = "Registry"
	// ResolveOnNode is for clusters whose controller cannot reach the
	// registry: one node pulls the tag through its runtime's own mirrors, and
	// every other node is handed the digest that node got.
	ResolveOnNode ResolutionPolicy = "Node"
)

// PrePullImage is one image of a list.
type PrePullImage struct {
	// image is a reference by tag ("registry.example.com/app:1.4"), by digest
	// ("app@sha256:…") or both ("app:1.4@sha256:…"). A tag is resolved to one
	// digest for every node; with a digest, the digest is what every node
	// gets and the tag, if any, is made to name it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// Admission takes exactly the references the controller parses:
	// the registry may be a host, an IP or a bracketed IPv6 address, with a
	// port; a first component with neither a '.' nor a ':' is not a
	// registry but the repository's, and the repository is in lower case;
	// digests are sha256; a bare 64-hex name (which reads as an image ID)
	// is refused.
	// +kubebuilder:validation:XValidation:rule="self.matches('^(?:(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+(?::[0-9]+)?|(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]):[0-9]+|[[][a-fA-F0-9:]+[]](?::[0-9]+)?)/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$') && !self.matches('^[a-f0-9]{64}$')",messageExpression="'not a valid image reference: ' + self + ' (want [registry/]repository[:tag][@sha256:<64 hex>], repository in lower case, a registry with a . or a :)'"
	Image string `json:"image"`
}

// RolloutSpec paces how the images reach the nodes.
type RolloutSpec struct {
	// maxConcurrentNodes is how many nodes at a time are handed a new digest,
	// as a number or a percentage of the selected nodes (rounded up, at least
	// one). The others wait their turn.
	// +optional
	// +kubebuilder:default="25%"
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self > 0 : self.matches('^[1-9][0-9]?%$|^100%$')",message="must be a positive number of nodes or a percentage from 1% to 100%"
	MaxConcurrentNodes *intstr.IntOrString `json:"maxConcurrentNodes,omitempty"`
	// timeout bounds one pull of one image on one node.
	// +optional
	// +kubebuilder:default="10m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// backoffLimit is how many times a node retries a failed pull, with
	// backoff, before it reports the image Failed.
	// +optional
	// +kubebuilder:default=6
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	BackoffLimit *int32 `json:"backoffLimit,omitempty"`
}

// ImageSource says where a list's images come from.
// +kubebuilder:validation:XValidation:rule="!has(self.archive) || has(self.archive.path) != has(self.archive.url)",message="archive: give exactly one of path and url"
// +kubebuilder:validation:XValidation:rule="!has(self.archive) || !has(self.archive.path) || !self.archive.path.matches('(^|/)[.][.](/|$)')",message="archive.path must not contain '..'"
type ImageSource struct {
	// archive makes every node import the list's images from an OCI
	// image-layout archive (a bundle that "prepull bundle" writes) instead
	// of pulling them from a registry. Tags are then resolved from the
	// archive itself, and refreshInterval and resolution do not apply.
	// +optional
	Archive *ArchiveSource `json:"archive,omitempty"`
}

// ArchiveSource is an OCI image-layout archive: a file on each node, or a URL
// the nodes download it from. Exactly one of path and url is given.
type ArchiveSource struct {
	// path is the archive's path on the node, relative to the agent's
	// archive directory (its --archive-dir flag, /var/lib/prepull/archives
	// by default).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[^/]`
	Path string `json:"path,omitempty"`
	// url is an http:// or https:// URL the agent downloads the archive
	// from, typically a Service inside the cluster.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https?://`
	URL string `json:"url,omitempty"`
	// sha256 is the archive's SHA-256 as 64 lowercase hex digits. The agent
	// checks it before it imports anything, and refuses an archive that
	// does not match.
	// +required
	// +kubebuilder:validation:Pattern=`^[a-f0-9]{64}$`
	SHA256 string `json:"sha256"`
}

// PathIn is the archive's path on a node whose archive directory is dir, or
// "" for an archive given by URL. The API refuses absolute paths and "..";
// cleaning under "/" keeps even a path that slipped past it inside dir.
func (a *ArchiveSource) PathIn(dir string) string {
	if a.URL != "" {
		return ""
	}
	return filepath.Join(dir, filepath.Clean("/"+a.Path))
}

// Location is the archive's path or URL, for messages.
func (a *ArchiveSource) Location() string {
	if a.URL != "" {
		return a.URL
	}
	return a.Path
}

// PrePullListSpec is what an operator wants present on which nodes.
// +kubebuilder:validation:XValidation:rule="(has(self.images) && size(self.images) > 0) || has(self.workloads)",message="spec.images: give at least one image, or spec.workloads"
type PrePullListSpec struct {
	// images are the images to make present; each at most once. A list
	// names images, discovers them from workloads, or both.
	// +optional
	// +listType=map
	// +listMapKey=image
	// +kubebuilder:validation:MaxItems=256
	Images []PrePullImage `json:"images,omitempty"`
	// workloads, when set, adds the images of the workloads it selects in
	// the list's own namespace: every container and init container image
	// of their pod templates, resolved like the images above, and released
	// gracePeriod after no selected workload uses it any more.
	// +optional
	Workloads *WorkloadSource `json:"workloads,omitempty"`
	// nodeSelector selects the nodes by label. Omitted or empty ({}), it
	// selects every node of the cluster.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	// imagePullSecrets are docker-registry Secrets in the list's namespace,
	// used both to resolve tags and by the nodes to pull.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=8
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// serviceAccountName is the service account, in the list's namespace,
	// that the images' workloads run as: for the nodes' credential provider
	// plugins that take a pod's service-account token (tokenAttributes,
	// KEP-4412), the agent presents a token of it, made by the controller
	// for the plugin's audience when the node's agent asks for an image of
	// this list. Omitted, an image discovered from workloads takes the
	// account of the first workload using it.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// refreshInterval is how often tags are resolved again; a tag that moved
	// rolls its new digest out. At least one minute.
	// +optional
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="must be at least 1m"
	RefreshInterval *metav1.Duration `json:"refreshInterval,omitempty"`
	// retain says whether the images are pinned against the kubelet's image
	// garbage collection.
	// +optional
	// +kubebuilder:default=Pinned
	Retain RetainPolicy `json:"retain,omitempty"`
	// onDelete says what happens to the images on a node when the list is
	// deleted or stops selecting the node.
	// +optional
	// +kubebuilder:default=Unpin
	OnDelete DeletePolicy `json:"onDelete,omitempty"`
	// resolution says where tags are resolved to digests.
	// +optional
	// +kubebuilder:default=Registry
	Resolution ResolutionPolicy `json:"resolution,omitempty"`
	// rollout paces how the images reach the nodes.
	// +optional
	// +kubebuilder:default={}
	Rollout RolloutSpec `json:"rollout,omitempty"`
	// source says where the images come from; omitted, from their
	// registries.
	// +optional
	Source *ImageSource `json:"source,omitempty"`
	// nodeGate, when set, holds every node the list selects from work until
	// the list's images are present on it: nodes that register with the
	// controller's startup taint keep it until every gating list that
	// selects them is present there, or its timeout passed. Omitted, the
	// list holds no node.
	// +optional
	NodeGate *NodeGate `json:"nodeGate,omitempty"`
	// verify, when set, checks each image's signatures (cosign's format:
	// the image's sha256-<hex>.sig tag, or its referrers) against the keys
	// given: at the registry, once per digest for the cluster, before any
	// node gets it; for source.archive, on each node, from the signatures
	// the bundle holds, before the image is imported; for resolution: Node,
	// by the node that resolves the tag, before it pulls the digest.
	// +optional
	Verify *VerifyPolicy `json:"verify,omitempty"`
}

// VerifyPolicy says which keys an image's signature must be made with, and
// what an image without one does.
type VerifyPolicy struct {
	// keys are PEM public keys (ECDSA, Ed25519 or RSA) in the list's
	// namespace; a signature by any one of them verifies.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	Keys []PublicKeySource `json:"keys"`
	// mode: Enforce hands a node only digests whose signature verified,
	// and keeps a tag on its last verified digest when it moves to one
	// that does not; Audit hands every digest, and status and events say
	// which did not verify.
	// +optional
	// +kubebuilder:default=Enforce
	Mode VerifyMode `json:"mode,omitempty"`
}

// VerifyMode says what an image whose signature does not verify does.
// +kubebuilder:validation:Enum=Enforce;Audit
type VerifyMode string

// The verification modes.
const (
	VerifyEnforce VerifyMode = "Enforce"
	VerifyAudit   VerifyMode = "Audit"
)

// PublicKeySource is one public key: a key of a Secret or of a ConfigMap
// in the list's namespace.
// +kubebuilder:validation:XValidation:rule="has(self.secret) != has(self.configMap)",message="give exactly one of secret and configMap"
type PublicKeySource struct {
	// secret names a Secret and its key holding the PEM.
	// +optional
	Secret *KeyReference `json:"secret,omitempty"`
	// configMap names a ConfigMap and its key holding the PEM.
	// +optional
	ConfigMap *KeyReference `json:"configMap,omitempty"`
}

// KeyReference is a key of a Secret or ConfigMap.
type KeyReference struct {
	// name is the object's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// key is the key of its data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// String names the key for messages: "secret ns/name[key]".
func (k PublicKeySource) String(namespace string) string {
	switch {
	case k.Secret != nil:
		return fmt.Sprintf("secret %s/%s[%s]", namespace, k.Secret.Name, k.Secret.Key)
	case k.ConfigMap != nil:
		return fmt.Sprintf("configmap %s/%s[%s]", namespace, k.ConfigMap.Name, k.ConfigMap.Key)
	}
	return "no key"
}

// WorkloadSource discovers images from the workloads of a list's namespace.
// A list never discovers across namespaces.
type WorkloadSource struct {
	// selector selects the workloads by label; {} selects every workload of
	// the namespace.
	// +required
	Selector *metav1.LabelSelector `json:"selector"`
	// kinds are the kinds of workloads looked at; omitted, every kind.
	// ReplicaSets owned by a Deployment, Jobs owned by a CronJob and Pods
	// owned by a controller are read through their owner, not on their
	// own.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=7
	Kinds []WorkloadKind `json:"kinds,omitempty"`
	// gracePeriod is how long an image that no selected workload uses any
	// more stays in the list, so that a rolling update's brief overlap
	// does not release and pull again.
	// +optional
	// +kubebuilder:default="10m"
	GracePeriod *metav1.Duration `json:"gracePeriod,omitempty"`
	// placement says which nodes a discovered image goes to: ListNodes,
	// every node the list's nodeSelector selects; WorkloadNodes, of those,
	// only the nodes where one of the workloads using it could be
	// scheduled by its pod template's nodeSelector, required node affinity
	// and tolerations of the nodes' NoSchedule and NoExecute taints.
	// Preferred affinity, topology spread, pod affinity and resources are
	// not considered, nor the taints that say a node is not ready yet
	// (node.kubernetes.io/*, the cloud provider's uninitialized taint,
	// prepull's startup taint). An image no workload uses any more stays,
	// for its grace period, only where it already is.
	// +optional
	// +kubebuilder:default=ListNodes
	Placement Placement `json:"placement,omitempty"`
}

// Placement says which nodes a discovered image goes to.
// +kubebuilder:validation:Enum=ListNodes;WorkloadNodes
type Placement string

// The placements of discovered images.
const (
	PlaceOnListNodes     Placement = "ListNodes"
	PlaceOnWorkloadNodes Placement = "WorkloadNodes"
)

// WorkloadKind is a kind of workload images are discovered from.
// +kubebuilder:validation:Enum=Deployment;StatefulSet;DaemonSet;ReplicaSet;Job;CronJob;Pod
type WorkloadKind string

// The kinds of workloads.
const (
	KindDeployment  WorkloadKind = "Deployment"
	KindStatefulSet WorkloadKind = "StatefulSet"
	KindDaemonSet   WorkloadKind = "DaemonSet"
	KindReplicaSet  WorkloadKind = "ReplicaSet"
	KindJob         WorkloadKind = "Job"
	KindCronJob     WorkloadKind = "CronJob"
	KindPod         WorkloadKind = "Pod"
)

// DefaultGracePeriod is how long a discovered image no workload uses stays.
const DefaultGracePeriod = 10 * time.Minute

// DiscoveredImage is an image found in the selected workloads.
type DiscoveredImage struct {
	// image is the image as the workloads name it.
	// +required
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`
	// workloads are the workloads that use it, "Kind/name", at most 8.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	Workloads []string `json:"workloads,omitempty"`
	// unusedSince is when the last workload stopped using it; the image is
	// released gracePeriod later. Unset while a workload uses it.
	// +optional
	UnusedSince *metav1.Time `json:"unusedSince,omitempty"`
	// message says why the image is not pulled: its reference cannot be
	// parsed.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
	// warning is advice, e.g. that a container's imagePullPolicy Always
	// makes it contact the registry at every start.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Warning string `json:"warning,omitempty"`
}

// NodeGate says how a list holds the nodes it selects.
type NodeGate struct {
	// timeout is how long after a node registered its gate waits for this
	// list's images; then it opens anyway, with a Warning event, so that a
	// registry that does not answer never strands a node.
	// +optional
	// +kubebuilder:default="10m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// Condition types of a PrePullList.
const (
	// ConditionReady is True when every selected node holds every image, at
	// the resolved digest, pinned if the list says so.
	ConditionReady = "Ready"
	// ConditionProgressing is True while images are still reaching nodes.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when an image cannot be resolved or a node
	// failed to make an image present; the other images and nodes go on.
	ConditionDegraded = "Degraded"
	// ConditionDiscovered, on a list with spec.workloads, is True when the
	// selector matches workloads, False when it matches none; its message
	// names the workloads whose images or secrets are wrong.
	ConditionDiscovered = "Discovered"
	// ConditionVerified, on a list with spec.verify, is True when every
	// image's digest verified; False names the first that did not, with
	// its reason.
	ConditionVerified = "Verified"
	// ConditionPrivateImagesOpen, on a list with pull secrets, is True
	// when the kubelet of some selected node lets any pod there run the
	// images prepull pulled, private ones included, without credentials
	// (its imagePullCredentialsVerificationPolicy, as the node's agent
	// reads it); its message names those nodes. False when every node's
	// kubelet checks a pod's credentials; Unknown while no agent said.
	ConditionPrivateImagesOpen = "PrivateImagesOpen"
)

// Condition reasons of a PrePullList.
const (
	// ReasonAllNodesReady: every selected node holds every image.
	ReasonAllNodesReady = "AllNodesReady"
	// ReasonNodesNotReady: some selected nodes do not hold every image yet.
	ReasonNodesNotReady = "NodesNotReady"
	// ReasonNoNodesSelected: the selector matches no node.
	ReasonNoNodesSelected = "NoNodesSelected"
	// ReasonRollingOut: nodes are pulling or waiting their turn.
	ReasonRollingOut = "RollingOut"
	// ReasonResolving (Progressing True): images wait for a node to
	// resolve their tags (resolution: Node, or an archive); the message
	// says which node and what it is to do.
	ReasonResolving = "Resolving"
	// ReasonRolloutComplete: no node is pulling or waiting.
	ReasonRolloutComplete = "RolloutComplete"
	// ReasonResolutionFailed: a tag could not be resolved to a digest.
	ReasonResolutionFailed = "ResolutionFailed"
	// ReasonNodesFailed: some nodes reported an image Failed.
	ReasonNodesFailed = "NodesFailed"
	// ReasonPullSecretUnavailable: an imagePullSecret is missing or is not a
	// docker-registry Secret.
	ReasonPullSecretUnavailable = "PullSecretUnavailable"
	// ReasonNodeGateTimedOut: the gate's timeout let selected nodes through
	// without every image, and they still lack some.
	ReasonNodeGateTimedOut = "NodeGateTimedOut"
	// ReasonWorkloadsFound: spec.workloads selects workloads.
	ReasonWorkloadsFound = "WorkloadsFound"
	// ReasonNoWorkloadsMatch: spec.workloads selects no workload.
	ReasonNoWorkloadsMatch = "NoWorkloadsMatch"
	// ReasonPullPolicyAlways (an event): a discovered container's effective
	// imagePullPolicy is Always, so it contacts the registry at every start.
	ReasonPullPolicyAlways = "PullPolicyAlways"
	// ReasonVerificationPending: some image has no digest to check yet.
	ReasonVerificationPending = "VerificationPending"
	// ReasonVerifiedOnNodes: the images come from an archive, whose
	// signatures each node checks in the bundle.
	ReasonVerifiedOnNodes = "VerifiedOnNodes"
	// ReasonSignaturesVerified: every image's digest verified.
	ReasonSignaturesVerified = "SignaturesVerified"
	// ReasonSignatureMissing: no signature of an image's digest was found.
	ReasonSignatureMissing = "SignatureMissing"
	// ReasonSignatureInvalid: signatures were found, none verifies for the
	// digest with the list's keys.
	ReasonSignatureInvalid = "SignatureInvalid"
	// ReasonSignatureUnavailable: the signatures could not be read.
	ReasonSignatureUnavailable = "SignatureUnavailable"
	// ReasonKeyUnavailable: a key of spec.verify is missing or not a PEM
	// public key.
	ReasonKeyUnavailable = "KeyUnavailable"
	// ReasonAsExpected: nothing is degraded.
	ReasonAsExpected = "AsExpected"
	// ReasonInvalidSpec: a field admission could not check is invalid (the
	// message names it); the list changes nothing on any node until it is
	// fixed.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonPolicyRefused: the list's PrePullPolicy does not grant what it
	// asks (the message names the policy and the field), or a quota of it
	// leaves the list out; the list does nothing until that changes.
	ReasonPolicyRefused = "PolicyRefused"
	// ReasonKubeletDoesNotVerify (PrivateImagesOpen True): some selected
	// node's kubelet lets any pod run images present on it.
	ReasonKubeletDoesNotVerify = "KubeletDoesNotVerify"
	// ReasonKubeletVerifies (PrivateImagesOpen False): every selected
	// node's kubelet checks a pod's credentials for a private image.
	ReasonKubeletVerifies = "KubeletVerifies"
	// ReasonKubeletPolicyUnknown (PrivateImagesOpen Unknown): no agent
	// of a selected node read its kubelet's policy.
	ReasonKubeletPolicyUnknown = "KubeletPolicyUnknown"
	// ReasonReleasing (Ready False, Progressing True): the list is deleted
	// and waits for the agents of the nodes that still hold its images to
	// release them; the message counts those nodes.
	ReasonReleasing = "Releasing"
)

// ImageResolution is the state of one image of a list.
type ImageResolution struct {
	// image is the image as the list names it.
	// +required
	// +kubebuilder:validation:MaxLength=255
	Image string `json:"image"`
	// digest is the digest every node gets ("sha256:…"), empty until
	// resolved.
	// +optional
	// +kubebuilder:validation:MaxLength=80
	Digest string `json:"digest,omitempty"`
	// resolvedAt is when the tag was last resolved.
	// +optional
	ResolvedAt *metav1.Time `json:"resolvedAt,omitempty"`
	// artifactType says the digest is an OCI artifact rather than an
	// image: its manifest's artifactType, else its config's media type.
	// An artifact is made present, tagged and pinned like an image, with
	// no platform to choose and nothing to run (a pod mounts it as an
	// image volume). Empty for an image, and for a digest the controller
	// did not read (a tag resolved on nodes or from an archive, or, with
	// peers on, an image of a registry host with a budget of pulls an
	// hour, unless a bytes quota needs its size).
	// +optional
	// +kubebuilder:validation:MaxLength=255
	ArtifactType string `json:"artifactType,omitempty"`
	// bytes is the digest's size as spec.quotas.bytesPerNode of the list's
	// PrePullPolicy counts it: the config and layers the registry lists,
	// compressed, for its largest platform — at most what a node
	// downloads. Set only under such a quota.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// nodesReady counts the selected nodes that hold the image at digest.
	// +optional
	NodesReady int32 `json:"nodesReady"`
	// nodesFailed counts the selected nodes that reported it Failed.
	// +optional
	NodesFailed int32 `json:"nodesFailed"`
	// message is the registry's answer when the last resolution failed;
	// nodes keep the digest resolved before, if any.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
	// warning is advice about the entry, e.g. that pods using the tag latest
	// contact the registry at every start whatever the node holds.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Warning string `json:"warning,omitempty"`
	// signature is what checking the digest's signatures found, for a list
	// with spec.verify.
	// +optional
	Signature *SignatureStatus `json:"signature,omitempty"`
}

// SignatureStatus is what checking one digest's signatures found.
type SignatureStatus struct {
	// verified is whether a signature of digest verified with one of the
	// list's keys.
	// +required
	Verified bool `json:"verified"`
	// digest is the digest checked ("sha256:…"); under Enforce, when it did
	// not verify, the image's digest stays the last one that did.
	// +optional
	// +kubebuilder:validation:MaxLength=80
	Digest string `json:"digest,omitempty"`
	// key is the fingerprint of the key that verified, "sha256:" and the
	// hex SHA-256 of its DER form.
	// +optional
	// +kubebuilder:validation:MaxLength=80
	Key string `json:"key,omitempty"`
	// reason says why it did not verify: SignatureMissing,
	// SignatureInvalid, SignatureUnavailable or KeyUnavailable.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`
	// message says what was found and which keys were tried.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// NodeCounts counts the selected nodes by state.
type NodeCounts struct {
	// selected counts the nodes the selector matches.
	Selected int32 `json:"selected"`
	// ready counts the selected nodes that hold every image.
	Ready int32 `json:"ready"`
	// pulling counts the selected nodes handed images they do not hold yet.
	Pulling int32 `json:"pulling"`
	// waiting counts the selected nodes waiting their turn in the rollout.
	Waiting int32 `json:"waiting"`
	// failed counts the selected nodes that reported an image Failed.
	Failed int32 `json:"failed"`
}

// NodeFailure is one image that failed on one node.
type NodeFailure struct {
	// node is the node's name.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// image is the image as the list names it.
	// +required
	// +kubebuilder:validation:MaxLength=255
	Image string `json:"image"`
	// reason is a CamelCase word for the failure, e.g. Unauthorized.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`
	// message is the runtime's own message.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// MaxFailures bounds the sample of failures kept in a PrePullList's status.
const MaxFailures = 10

// PrePullListStatus is what the controller observed.
type PrePullListStatus struct {
	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// conditions are Ready, Progressing and Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// images is the state of each image, in the order of spec.images.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	Images []ImageResolution `json:"images,omitempty"`
	// nodes counts the selected nodes by state.
	// +optional
	Nodes NodeCounts `json:"nodes,omitempty"`
	// readyNodes is "ready/selected", for display.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	ReadyNodes string `json:"readyNodes,omitempty"`
	// imageCount is the number of images in the list, for display.
	// +optional
	ImageCount int32 `json:"imageCount,omitempty"`
	// failures is a sample of at most 10 failed images on nodes.
	// +optional
	// +kubebuilder:validation:MaxItems=10
	Failures []NodeFailure `json:"failures,omitempty"`
	// failureCount counts every failed image on every node, sampled or not.
	// +optional
	FailureCount int32 `json:"failureCount,omitempty"`
	// nodeGate counts the selected nodes the list's gate holds, and those
	// its timeout let through without the list's images; set for a list
	// with spec.nodeGate.
	// +optional
	NodeGate *NodeGateStatus `json:"nodeGate,omitempty"`
	// pullSecretsVersion changes whenever the credentials of the list's
	// pull secrets change (it is made from the versions of their mirrors,
	// never from their data). Agents try the list's images again at once
	// when it changes: a rotated or fixed secret takes effect without a
	// spec change and without waiting out a back-off.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	PullSecretsVersion string `json:"pullSecretsVersion,omitempty"`
	// discovered are the images spec.workloads found, and those kept for
	// their grace period.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	Discovered []DiscoveredImage `json:"discovered,omitempty"`
	// discoveredPullSecrets are the Secrets of the list's namespace that the
	// selected workloads and their service accounts pull with; they are
	// mirrored and used like spec.imagePullSecrets.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	DiscoveredPullSecrets []string `json:"discoveredPullSecrets,omitempty"`
	// verifyKeys are the public keys of spec.verify as the controller read
	// them, for the agents: images that come from an archive are verified
	// on the node, from the signatures the bundle holds, and the agents
	// read no Secret or ConfigMap of the list's namespace.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	VerifyKeys []VerifyKeyStatus `json:"verifyKeys,omitempty"`
}

// VerifyKeyStatus is one public key of spec.verify.
type VerifyKeyStatus struct {
	// source names where the key was read, "secret ns/name[key]".
	// +required
	// +kubebuilder:validation:MaxLength=600
	Source string `json:"source"`
	// fingerprint is "sha256:" and the hex SHA-256 of the key's DER form.
	// +required
	// +kubebuilder:validation:MaxLength=80
	Fingerprint string `json:"fingerprint"`
	// pem is the public key.
	// +required
	// +kubebuilder:validation:MaxLength=16384
	PEM string `json:"pem"`
}

// NodeGateStatus counts a gating list's nodes.
type NodeGateStatus struct {
	// waiting counts the selected nodes that still carry the startup taint.
	// +optional
	Waiting int32 `json:"waiting,omitempty"`
	// timedOut counts the selected nodes whose gate opened at the timeout
	// while the list's images were not all present, and still are not.
	// +optional
	TimedOut int32 `json:"timedOut,omitempty"`
}

// PrePullList makes images present on nodes before pods need them.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ppl,categories=prepull
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.readyNodes`,description="nodes holding every image / selected nodes"
// +kubebuilder:printcolumn:name="Images",type=integer,JSONPath=`.status.imageCount`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PrePullList struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the operator wants.
	// +required
	Spec PrePullListSpec `json:"spec"`
	// status is what the controller observed.
	// +optional
	Status PrePullListStatus `json:"status,omitempty"`
}

// PrePullListList is a list of PrePullLists.
//
// +kubebuilder:object:root=true
type PrePullListList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PrePullList `json:"items"`
}

func init() {
	SchemeBuilder.Register(&PrePullList{}, &PrePullListList{})
}
