package prepulllist

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// readyCondition is True when every selected node holds every image. With no
// node selected it is True with reason NoNodesSelected: nothing is missing,
// and the reason says why nothing is there.
func readyCondition(gen int64, nodes prepullv1.NodeCounts, images []prepullv1.ImageResolution) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionReady, ObservedGeneration: gen}
	unresolved := countUnresolved(images)
	switch {
	case slices.ContainsFunc(images, func(i prepullv1.ImageResolution) bool { return i.Digest == "" && withheld(i) }):
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonNodesNotReady
		c.Message = fmt.Sprintf("%d of %d images have no digest to roll out: no verified one (spec.verify), or not resolved yet", unresolved, len(images))
	case unresolved > 0:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonNodesNotReady
		c.Message = fmt.Sprintf("%d of %d images are not resolved to a digest yet", unresolved, len(images))
	case nodes.Selected == 0:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonNoNodesSelected
		c.Message = "the node selector matches no node"
	case nodes.Ready == nodes.Selected:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonAllNodesReady
		c.Message = fmt.Sprintf("all %d selected nodes hold all %d images", nodes.Selected, len(images))
	default:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonNodesNotReady
		c.Message = fmt.Sprintf("%d of %d selected nodes hold all images (%d pulling, %d waiting, %d failed)",
			nodes.Ready, nodes.Selected, nodes.Pulling, nodes.Waiting, nodes.Failed)
	}
	return c
}

// progressingCondition is True while nodes pull or wait their turn, or
// images wait for resolution.
func progressingCondition(gen int64, nodes prepullv1.NodeCounts, images []prepullv1.ImageResolution) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionProgressing, ObservedGeneration: gen}
	if nodes.Pulling+nodes.Waiting > 0 {
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonRollingOut
		c.Message = fmt.Sprintf("%d nodes pulling, %d waiting their turn", nodes.Pulling, nodes.Waiting)
		return c
	}
	c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonRolloutComplete
	c.Message = "no node is pulling or waiting"
	return c
}

// degradedCondition is True when an image cannot be resolved or a node
// failed an image; its message names them.
func degradedCondition(gen int64, nodes prepullv1.NodeCounts, images []prepullv1.ImageResolution, failures []prepullv1.NodeFailure, secretErr error) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionDegraded, ObservedGeneration: gen}
	var unresolved, unverified []string
	var unverifiedReason string
	for _, i := range images {
		if i.Message != "" {
			unresolved = append(unresolved, i.Image+": "+i.Message)
		}
		if withheld(i) {
			unverified = append(unverified, fmt.Sprintf("%s (%s): %s", i.Image, i.Signature.Digest, i.Signature.Message))
			unverifiedReason = cmp.Or(unverifiedReason, i.Signature.Reason)
		}
	}
	switch {
	case secretErr != nil:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonPullSecretUnavailable
		c.Message = truncate(secretErr.Error(), 32768)
	case len(unverified) > 0:
		c.Status, c.Reason = metav1.ConditionTrue, unverifiedReason
		c.Message = truncate("not rolled out, the signature did not verify: "+strings.Join(unverified, "; "), 32768)
	case len(unresolved) > 0:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonResolutionFailed
		c.Message = truncate(strings.Join(unresolved, "; "), 32768)
	case nodes.Failed > 0:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonNodesFailed
		f := failures[0]
		c.Message = truncate(fmt.Sprintf("%d nodes failed; first: node %s, image %s: %s: %s", nodes.Failed, f.Node, f.Image, f.Reason, f.Message), 32768)
	default:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonAsExpected
		c.Message = "every image resolved, no node failed"
	}
	return c
}

func countUnresolved(images []prepullv1.ImageResolution) int {
	n := 0
	for _, i := range images {
		if i.Digest == "" {
			n++
		}
	}
	return n
}

// buildStatus returns the status for a list whose images and rollout
// outcome are known, keeping the old conditions' transition times.
func buildStatus(old prepullv1.PrePullListStatus, gen int64, images []prepullv1.ImageResolution, out outcome, secretErr error) prepullv1.PrePullListStatus {
	st := prepullv1.PrePullListStatus{
		ObservedGeneration: gen,
		Conditions:         slices.Clone(old.Conditions),
		Images:             images,
		Nodes:              out.nodes,
		ReadyNodes:         fmt.Sprintf("%d/%d", out.nodes.Ready, out.nodes.Selected),
		ImageCount:         int32(len(images)),
		FailureCount:       int32(len(out.failures)),
	}
	failures := slices.Clone(out.failures)
	slices.SortFunc(failures, func(a, b prepullv1.NodeFailure) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Image, b.Image))
	})
	if len(failures) > prepullv1.MaxFailures {
		failures = failures[:prepullv1.MaxFailures]
	}
	if len(failures) > 0 {
		st.Failures = failures
	}
	meta.SetStatusCondition(&st.Conditions, readyCondition(gen, out.nodes, images))
	meta.SetStatusCondition(&st.Conditions, progressingCondition(gen, out.nodes, images))
	degraded := degradedCondition(gen, out.nodes, images, failures, secretErr)
	if out.gated {
		gate := out.gate
		st.NodeGate = &gate
		if gate.TimedOut > 0 && degraded.Status == metav1.ConditionFalse {
			degraded.Status, degraded.Reason = metav1.ConditionTrue, prepullv1.ReasonNodeGateTimedOut
			degraded.Message = fmt.Sprintf("%d nodes were let through at the gate's timeout without every image", gate.TimedOut)
		}
	}
	meta.SetStatusCondition(&st.Conditions, degraded)
	return st
}
