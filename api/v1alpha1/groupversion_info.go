// Package v1alpha1 is the prepull.io/v1alpha1 API.
//
// A PrePullList (namespaced) is what an operator writes: images, the nodes
// that must hold them, and how. A NodeImageSet (cluster-scoped, named after its
// node) is the per-node desired state the controller composes from every list,
// and the per-node truth the node's agent reports. The controller owns every
// PrePullList status and every NodeImageSet spec; the agent of node N owns
// NodeImageSet N's status and nothing else, so no two processes write the
// same field.
//
// +kubebuilder:object:generate=true
// +groupName=prepull.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "prepull.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
