package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TagResolution is the one digest a tag reference names for the whole
// cluster. The controller keeps one per distinct tag that any PrePullList
// names, whatever the list's resolution or source, and hands every node that
// digest; a list's status.images[].digest is read from it.
//
// It is a cluster-scoped object of its own, not a field of a list's status,
// because it belongs to no single list: several lists in several namespaces
// share it, it must outlive any one of them, and it must survive a
// controller restart or a change of leader without the tag being resolved
// again. Only the controller writes it.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=tagres,categories=prepull
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Digest",type=string,JSONPath=`.status.digest`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.source`
// +kubebuilder:printcolumn:name="Resolved",type=date,JSONPath=`.status.resolvedAt`
type TagResolution struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec names the tag.
	// +required
	Spec TagResolutionSpec `json:"spec"`
	// status is the tag's digest.
	// +optional
	Status TagResolutionStatus `json:"status,omitempty"`
}

// TagResolutionSpec names the tag reference.
type TagResolutionSpec struct {
	// image is the tag reference, "repo:tag", as lists name it once
	// normalized.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=400
	Image string `json:"image"`
}

// ResolutionSource says where a TagResolution's digest came from.
// +kubebuilder:validation:Enum=Registry;Node;Archive
type ResolutionSource string

const (
	// SourceRegistry: the controller asked the registry.
	SourceRegistry ResolutionSource = "Registry"
	// SourceNode: a node pulled the tag and reported its digest.
	SourceNode ResolutionSource = "Node"
	// SourceArchive: a node imported the tag from an archive.
	SourceArchive ResolutionSource = "Archive"
)

// TagResolutionStatus is the tag's digest and how it was found.
type TagResolutionStatus struct {
	// digest is the digest every node gets for the tag, "sha256:…".
	// +optional
	// +kubebuilder:validation:MaxLength=80
	Digest string `json:"digest,omitempty"`
	// source is where digest came from. When lists naming the tag disagree
	// on where to resolve it, the registry wins over a node, and a node's
	// pull over an archive.
	// +optional
	Source ResolutionSource `json:"source,omitempty"`
	// resolvedAt is when digest was last confirmed.
	// +optional
	ResolvedAt *metav1.Time `json:"resolvedAt,omitempty"`
	// attemptedAt is when the registry was last asked.
	// +optional
	AttemptedAt *metav1.Time `json:"attemptedAt,omitempty"`
	// readers are who read digest at the registry themselves, for a tag
	// resolved there: "" for anonymous access, else a list's namespace and
	// the version of its pull secrets. A list is handed digest only once
	// its own credentials (or anonymous access) read it; the newest 64 are
	// kept. A failure is its reader's alone, and is not recorded here: it
	// changes neither what another list is handed nor when the tag
	// refreshes.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=128
	Readers []string `json:"readers,omitempty"`
}

// TagResolutionList is a list of TagResolutions.
//
// +kubebuilder:object:root=true
type TagResolutionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TagResolution `json:"items"`
}

var notName = regexp.MustCompile(`[^a-z0-9]+`)

// TagResolutionName is the name of the TagResolution of the tag reference
// tagRef: the reference's last path element and tag, readable, and a hash of
// the whole reference, so that two references never share a name.
func TagResolutionName(tagRef string) string {
	sum := sha256.Sum256([]byte(tagRef))
	base := tagRef
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	base = strings.Trim(notName.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	if base == "" {
		base = "tag"
	}
	return base + "-" + hex.EncodeToString(sum[:8])
}

func init() {
	SchemeBuilder.Register(&TagResolution{}, &TagResolutionList{})
}
