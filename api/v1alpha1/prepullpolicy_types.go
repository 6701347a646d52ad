package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyLabel, on a Namespace, names the PrePullPolicy its lists are held
// to; a namespace without it is held to DefaultPolicy. Whoever may label
// namespaces chooses their policy: keep that with the cluster's admin.
const PolicyLabel = "prepull.io/policy"

// DefaultPolicy is the PrePullPolicy of a namespace without PolicyLabel.
const DefaultPolicy = "default"

// PrePullPolicy is what the cluster's admin grants the PrePullLists of the
// namespaces it governs: the nodes they may reach, the repositories they
// may name, and which of a list's powers over nodes (archives that place
// bytes under a name, removing images, holding joining nodes, discovering
// workloads) they may use, within quotas. A namespace is governed by the
// policy its prepull.io/policy label names, or by the one named default.
//
// What the API server can decide is refused at admission (the
// ValidatingAdmissionPolicy prepull-tenancy, with this object as its
// parameter); the rest — quotas, discovered images, lists written before
// the policy changed — is refused by the controller, in the list's
// status, naming the policy and the field. Once any PrePullPolicy exists,
// a namespace whose policy does not exist may do nothing.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ppp,categories=prepull
// +kubebuilder:printcolumn:name="Archives",type=boolean,JSONPath=`.spec.archives.allowed`,priority=1
// +kubebuilder:printcolumn:name="Remove",type=boolean,JSONPath=`.spec.allowRemove`
// +kubebuilder:printcolumn:name="Lists",type=integer,JSONPath=`.spec.quotas.lists`
type PrePullPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the governed namespaces' lists may do.
	// +optional
	Spec PrePullPolicySpec `json:"spec,omitempty"`
}

// PrePullPolicySpec grants; what it omits is refused, except where a field
// says otherwise.
type PrePullPolicySpec struct {
	// nodeSelector bounds the nodes a governed list reaches: every list's
	// own selector is intersected with it, and a list whose matchLabels
	// contradict it is refused. Omitted, every node.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	// repositories are the repositories a governed list may name, in full
	// (docker.io/library/nginx, not nginx): each entry is a repository or
	// a path prefix of repositories (registry.example.com/team-a allows
	// registry.example.com/team-a/app). Omitted, any repository.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=255
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$`
	Repositories []string `json:"repositories,omitempty"`
	// archives, when set, lets governed lists use source.archive: bytes
	// from a file or URL placed under the names the list gives.
	// +optional
	Archives *ArchiveGrant `json:"archives,omitempty"`
	// allowRemove lets governed lists say onDelete: Remove.
	// +optional
	AllowRemove bool `json:"allowRemove,omitempty"`
	// nodeGate, when set, lets governed lists hold joining nodes
	// (spec.nodeGate), for at most its maxTimeout.
	// +optional
	NodeGate *NodeGateGrant `json:"nodeGate,omitempty"`
	// allowWorkloads lets governed lists discover images from their
	// namespace's workloads (spec.workloads).
	// +optional
	// +kubebuilder:default=true
	AllowWorkloads *bool `json:"allowWorkloads,omitempty"`
	// quotas bound what a governed namespace's lists hold together.
	// +optional
	Quotas PolicyQuotas `json:"quotas,omitempty"`
}

// ArchiveGrant says which names archives may place.
type ArchiveGrant struct {
	// repositories are the repositories (or path prefixes, as the
	// policy's) an archive list may place images under; they must also be
	// among the policy's repositories when it names any. An archive is the
	// only authority on the bytes behind a name, so grant only
	// repositories that are the namespace's own. Omitted, any repository
	// the policy grants.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=255
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$`
	Repositories []string `json:"repositories,omitempty"`
}

// NodeGateGrant bounds node gates.
type NodeGateGrant struct {
	// maxTimeout is the longest spec.nodeGate.timeout a governed list may
	// give.
	// +optional
	// +kubebuilder:default="10m"
	MaxTimeout *metav1.Duration `json:"maxTimeout,omitempty"`
}

// PolicyQuotas bound a governed namespace's lists together. Omitted, a
// quota is unbounded.
type PolicyQuotas struct {
	// lists is how many lists the namespace may have; the oldest are
	// served, a list past the quota does nothing and says so.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Lists *int32 `json:"lists,omitempty"`
	// imagesPerNode is how many images the namespace's lists may hold on
	// one node: the lists are served oldest first, and a list whose images
	// would take a node past the quota does nothing and says so.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ImagesPerNode *int32 `json:"imagesPerNode,omitempty"`
	// bytesPerNode is how many bytes the namespace's lists' images may
	// take on one node, as the registry lists them (config and layers,
	// compressed, of each image's largest platform: what a pull downloads;
	// unpacked they take about as much again), counted as if every list
	// selected the same node, oldest lists first. The controller reads
	// each digest's manifests at the registry with the list's own
	// credentials before any node gets it; a list whose images it cannot
	// size so (a tag resolved on nodes or from an archive, a manifest it
	// may not read) does nothing and says so, as does a list that would
	// take a node past the quota.
	// +optional
	BytesPerNode *resource.Quantity `json:"bytesPerNode,omitempty"`
}

// PrePullPolicyList is a list of PrePullPolicy.
//
// +kubebuilder:object:root=true
type PrePullPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PrePullPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&PrePullPolicy{}, &PrePullPolicyList{})
}
