package v1alpha1

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ImagePlan is a set of images that one or more nodes must hold, shared by
// every NodeImageSet that names it in spec.plan. The controller writes each
// distinct set of images it hands nodes once, named by a hash of its
// content, and never changes it: a node handed other images is handed
// another plan.
//
// It exists because nodes that lists select alike are handed alike: with
// 5,000 nodes and 100 images, one plan of 100 entries replaces 5,000 copies
// of them in 5,000 NodeImageSets, and a rollout step writes a node's plan
// name, not its images. The controller deletes a plan once no NodeImageSet
// has named it for a while.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=iplan,categories=prepull
// +kubebuilder:printcolumn:name="Images",type=integer,JSONPath=`.spec.count`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ImagePlan struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the plan's images; it never changes.
	// +required
	Spec ImagePlanSpec `json:"spec"`
}

// ImagePlanSpec is the images of a plan.
type ImagePlanSpec struct {
	// count is the number of images, for kubectl's columns.
	// +optional
	Count int32 `json:"count,omitempty"`
	// images are the images, sorted by image.
	// +optional
	// +listType=map
	// +listMapKey=image
	// +kubebuilder:validation:MaxItems=4096
	Images []NodeImage `json:"images,omitempty"`
}

// ImagePlanList is a list of ImagePlans.
//
// +kubebuilder:object:root=true
type ImagePlanList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ImagePlan `json:"items"`
}

// ImagePlanName is the name of the plan that holds images, sorted by image:
// a hash of their content, so that equal sets of images share one plan and
// a plan's name says what it holds. Every field of every image counts.
func ImagePlanName(images []NodeImage) string {
	h := sha256.New()
	var buf []byte
	str := func(s string) {
		buf = binary.AppendUvarint(buf[:0], uint64(len(s)))
		buf = append(buf, s...)
		h.Write(buf)
	}
	for i := range images {
		e := &images[i]
		str(e.Image)
		if e.ResolveAfter != nil {
			str(e.ResolveAfter.UTC().Format(time.RFC3339))
		} else {
			str("")
		}
		if a := e.Archive; a != nil {
			str("archive")
			str(a.Path)
			str(a.URL)
			str(a.SHA256)
		} else {
			str("")
		}
		str(strconv.Itoa(len(e.Owners)))
		for _, o := range e.Owners {
			str(o.List)
			str(strconv.FormatBool(o.Releasing))
			str(strconv.Itoa(len(o.Tags)))
			for _, t := range o.Tags {
				str(t)
			}
		}
	}
	return "plan-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Planned is the images a NodeImageSet asks for: those of its plan (which
// the caller read; none when spec.plan is empty) and those of spec.images,
// which take the place of a plan entry of the same image. Sorted by image.
func (s *NodeImageSetSpec) Planned(plan *ImagePlan) []NodeImage {
	if s.Plan == "" || plan == nil || len(plan.Spec.Images) == 0 {
		return s.Images
	}
	if len(s.Images) == 0 {
		return plan.Spec.Images
	}
	out := make([]NodeImage, 0, len(plan.Spec.Images)+len(s.Images))
	own := make(map[string]bool, len(s.Images))
	for _, e := range s.Images {
		own[e.Image] = true
	}
	for _, e := range plan.Spec.Images {
		if !own[e.Image] {
			out = append(out, e)
		}
	}
	out = append(out, s.Images...)
	SortImages(out)
	return out
}

// PresentAsAsked is the report an agent leaves out of a NodeImageSet's
// status for e, an image of the status's plan: Present at its digest,
// pinned by its owners that are not releasing.
func (e *NodeImage) PresentAsAsked() NodeImageStatus {
	owners := e.ActiveOwners()
	slices.Sort(owners)
	_, digest, _ := strings.Cut(e.Image, "@")
	return NodeImageStatus{Image: e.Image, Phase: PhasePresent, Digest: digest, Pinned: len(owners) > 0, PinOwners: owners}
}

// IsPresentAsAsked says whether st, the report of e, says nothing that
// PresentAsAsked does not: it may be left out of a status whose plan holds
// e. Progress, attempts and times are not told apart.
func (e *NodeImage) IsPresentAsAsked(st *NodeImageStatus) bool {
	want := e.PresentAsAsked()
	return st.Phase == PhasePresent && want.Digest != "" && st.Digest == want.Digest && want.Pinned && st.Pinned &&
		slices.Equal(sortedCopy(st.PinOwners), want.PinOwners) && st.Reason == "" && st.LastError == "" &&
		st.ImportedFrom == "" && st.Signature == nil
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// SortImages sorts images by image, the order of a plan and of the
// controller's copy of a node's entries.
func SortImages(images []NodeImage) {
	slices.SortFunc(images, func(a, b NodeImage) int { return strings.Compare(a.Image, b.Image) })
}

func init() {
	SchemeBuilder.Register(&ImagePlan{}, &ImagePlanList{})
}
