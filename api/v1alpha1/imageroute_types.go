package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ImageRoute is where the nodes fetch one image from when peers are on
// (prepull controller --peers): the nodes that hold it, which serve it to
// the other nodes whose plans name it, and the nodes that may fetch it
// from its registry now. The controller keeps one per digest reference it
// hands to nodes, and only it writes one; agents read the one of an image
// by name (ImageRouteName) before they fetch the image.
//
// A node fetches from the registry only with a grant: first a few seed
// nodes per image, then a node whose peers all failed, each within the
// registry budget of the image's host. The others wait for holders, which
// the controller adds as they report the image present (at most
// MaxHolders), so that the registry serves each image about once per
// cluster and its writes per image grow with its holders, not with the
// fleet.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=imgroute,categories=prepull
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Waiting",type=string,JSONPath=`.status.waiting`,priority=1
type ImageRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec names the image.
	// +required
	Spec ImageRouteSpec `json:"spec"`
	// status is where it may be fetched from.
	// +optional
	Status ImageRouteStatus `json:"status,omitempty"`
}

// ImageRouteSpec names the image.
type ImageRouteSpec struct {
	// image is the digest reference, as nodes' entries name it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=400
	Image string `json:"image"`
}

// MaxHolders is how many holders an ImageRoute lists.
const MaxHolders = 16

// ImageRouteStatus says where the image may be fetched from.
type ImageRouteStatus struct {
	// holders are nodes that hold the image and serve it to peers: the
	// first MaxHolders by name, so that a rollout writes the route once
	// per holder at most, however many nodes come to hold it.
	// +optional
	// +listType=map
	// +listMapKey=node
	// +kubebuilder:validation:MaxItems=16
	Holders []Peer `json:"holders,omitempty"`
	// registryGrants are the nodes that may fetch the image from its
	// registry (or its archive) now.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=253
	RegistryGrants []string `json:"registryGrants,omitempty"`
	// waiting says why nodes without a grant and without holders wait,
	// e.g. the registry budget of the image's host.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Waiting string `json:"waiting,omitempty"`
}

// Peer is a node's agent serving the images its node holds.
type Peer struct {
	// node is the node's name.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// address is where its agent serves peers, "host:port".
	// +required
	// +kubebuilder:validation:MaxLength=128
	Address string `json:"address"`
	// certSHA256 is the SHA-256 of its agent's certificate (DER, hex): a
	// peer trusts that certificate only.
	// +required
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	CertSHA256 string `json:"certSHA256"`
}

// Reasons of an image that waits for its sources, with peers on (agent's
// status, phase Pending).
const (
	// ReasonWaitingForPeers: no node holds the image yet, and this one has
	// no grant to fetch it from its registry; seed nodes are fetching it.
	ReasonWaitingForPeers = "WaitingForPeers"
	// ReasonWaitingForRegistryBudget: as WaitingForPeers, while the
	// registry budget of the image's host is spent.
	ReasonWaitingForRegistryBudget = "WaitingForRegistryBudget"
	// ReasonPeersUnavailable: every holder failed; the node waits for a
	// grant to fetch the image from its registry, the last resort.
	ReasonPeersUnavailable = "PeersUnavailable"
)

// ImageRouteList is a list of ImageRoutes.
//
// +kubebuilder:object:root=true
type ImageRouteList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ImageRoute `json:"items"`
}

// ImageRouteName is the name of the ImageRoute of the digest reference
// image.
func ImageRouteName(image string) string { return TagResolutionName(image) }

func init() {
	SchemeBuilder.Register(&ImageRoute{}, &ImageRouteList{})
}
