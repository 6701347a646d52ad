package prepulllist

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// exposure is what the selected nodes' kubelets make of a list's private
// images: which let any pod run them (open, "node (policy)"), how many
// check credentials, how many did not say.
type exposure struct {
	private         bool
	open            []string
	verify, unknown int
}

// exposureOf reads, for a list that has pull secrets (private), the
// kubelet policy each selected node's agent last reported.
func exposureOf(nodes []*node, private bool) exposure {
	x := exposure{private: private}
	if !private {
		return x
	}
	for _, n := range nodes {
		if !n.selected {
			continue
		}
		switch p := n.latest.verifies; p {
		case "":
			x.unknown++
		case "NeverVerifyPreloadedImages", "NeverVerify", "Off":
			x.open = append(x.open, fmt.Sprintf("%s (%s)", n.name, p))
		default:
			x.verify++
		}
	}
	return x
}

// setExposure sets or removes conds' PrivateImagesOpen condition by x.
func setExposure(conds *[]metav1.Condition, gen int64, x exposure) {
	if !x.private {
		meta.RemoveStatusCondition(conds, prepullv1.ConditionPrivateImagesOpen)
		return
	}
	c := metav1.Condition{Type: prepullv1.ConditionPrivateImagesOpen, ObservedGeneration: gen}
	switch {
	case len(x.open) > 0:
		shown := x.open[:min(len(x.open), 5)]
		more := ""
		if len(x.open) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(x.open)-len(shown))
		}
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonKubeletDoesNotVerify
		c.Message = fmt.Sprintf("on %d of the selected nodes the kubelet lets any pod run the images present, this list's private ones included, without credentials: %s%s; keep the namespace's private images to nodes of its own (its PrePullPolicy's nodeSelector) or run those kubelets with imagePullCredentialsVerificationPolicy AlwaysVerify",
			len(x.open), strings.Join(shown, ", "), more)
	case x.verify > 0:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonKubeletVerifies
		c.Message = fmt.Sprintf("the kubelet of each of %d selected nodes checks a pod's credentials for a private image before it starts", x.verify)
		if x.unknown > 0 {
			c.Message += fmt.Sprintf("; %d nodes did not say", x.unknown)
		}
	default:
		c.Status, c.Reason = metav1.ConditionUnknown, prepullv1.ReasonKubeletPolicyUnknown
		c.Message = "no selected node's agent read its kubelet's imagePullCredentialsVerificationPolicy (the agent's --kubelet-config)"
	}
	meta.SetStatusCondition(conds, c)
}
