package prepulllist

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

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

// invalid reports a spec that admission let through and the controller
// cannot act on: the list says which field and why (Ready and Progressing
// False, Degraded True, reason InvalidSpec) and a Warning event says so;
// nothing changes on any node until the spec is fixed, and the list can
// still be deleted. The error is not retried: a spec change requeues.
func (r *Reconciler) invalid(ctx context.Context, l *prepullv1.PrePullList, cause error) error {
	msg := cause.Error()
	st := *l.Status.DeepCopy()
	st.ObservedGeneration = l.Generation
	if st.ReadyNodes == "" {
		st.ReadyNodes = "-"
	}
	if len(st.Images) == 0 {
		for _, i := range imagesOf(l) {
			st.Images = append(st.Images, prepullv1.ImageResolution{Image: i})
		}
		st.ImageCount = int32(len(st.Images))
	}
	for _, c := range []struct {
		typ    string
		status metav1.ConditionStatus
	}{{prepullv1.ConditionReady, metav1.ConditionFalse}, {prepullv1.ConditionProgressing, metav1.ConditionFalse}, {prepullv1.ConditionDegraded, metav1.ConditionTrue}} {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: c.typ, Status: c.status, ObservedGeneration: l.Generation,
			Reason: prepullv1.ReasonInvalidSpec, Message: msg})
	}
	if prev := meta.FindStatusCondition(l.Status.Conditions, prepullv1.ConditionDegraded); r.Recorder != nil && (prev == nil || prev.Reason != prepullv1.ReasonInvalidSpec || prev.Message != msg) {
		r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonInvalidSpec, "Validate", "%s", msg)
	}
	if err := r.patchStatus(ctx, l, st); err != nil {
		return err
	}
	return reconcile.TerminalError(cause)
}

func (r *Reconciler) forget(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.computed, uid)
}

// resolutionOf is image's entry in images, or an empty one.
func resolutionOf(images []prepullv1.ImageResolution, image string) prepullv1.ImageResolution {
	for _, i := range images {
		if i.Image == image {
			return i
		}
	}
	return prepullv1.ImageResolution{}
}

// previousStatus is the status this reconciler last computed for l, or l's
// status when it has computed none since it started.
func (r *Reconciler) previousStatus(l *prepullv1.PrePullList) prepullv1.PrePullListStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.computed[l.UID]; ok {
		return st
	}
	return l.Status
}

// remember records the status just computed for l.
func (r *Reconciler) remember(l *prepullv1.PrePullList, st prepullv1.PrePullListStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.computed == nil {
		r.computed = map[types.UID]prepullv1.PrePullListStatus{}
	}
	r.computed[l.UID] = *st.DeepCopy()
}

// recordTransitions emits Events for what changed: the list became Ready, a
// tag moved, an image failed to resolve, nodes failed, advice about tags.
func (r *Reconciler) recordTransitions(l *prepullv1.PrePullList, prev, st prepullv1.PrePullListStatus) {
	ready := meta.IsStatusConditionTrue(st.Conditions, prepullv1.ConditionReady) && !meta.IsStatusConditionTrue(prev.Conditions, prepullv1.ConditionReady)
	if ready {
		rollouts.WithLabelValues(l.Namespace, l.Name).Inc()
	}
	if r.Recorder == nil {
		return
	}
	if ready {
		c := meta.FindStatusCondition(st.Conditions, prepullv1.ConditionReady)
		r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, "Ready", "Rollout", "%s", c.Message)
	}
	for _, img := range st.Images {
		old := resolutionOf(prev.Images, img.Image)
		if old.Digest != "" && img.Digest != "" && old.Digest != img.Digest {
			r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, "TagMoved", "Resolve", "%s moved from %s to %s; rolling out", img.Image, old.Digest, img.Digest)
		}
		if img.Message != "" && old.Message != img.Message {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonResolutionFailed, "Resolve", "%s: %s", img.Image, img.Message)
		}
		if s := img.Signature; s != nil && (old.Signature == nil || old.Signature.Digest != s.Digest || old.Signature.Verified != s.Verified || old.Signature.Reason != s.Reason) {
			if s.Verified {
				r.Recorder.Eventf(l, nil, corev1.EventTypeNormal, prepullv1.ReasonSignaturesVerified, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			} else {
				r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, s.Reason, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			}
		}
		if img.Warning != "" && old.Warning == "" {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, "MutableTag", "Validate", "%s: %s", img.Image, img.Warning)
		}
	}
	for _, d := range st.Discovered {
		if d.Warning == "" {
			continue
		}
		if i := slices.IndexFunc(prev.Discovered, func(o prepullv1.DiscoveredImage) bool { return o.Image == d.Image }); i < 0 || prev.Discovered[i].Warning != d.Warning {
			r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonPullPolicyAlways, "Discover", "%s: %s", d.Image, d.Warning)
		}
	}
	if st.FailureCount > prev.FailureCount && len(st.Failures) > 0 {
		f := st.Failures[0]
		r.Recorder.Eventf(l, nil, corev1.EventTypeWarning, prepullv1.ReasonNodesFailed, "Pull",
			"%d image pulls failed on nodes; first: node %s, image %s: %s", st.FailureCount, f.Node, f.Image, f.Message)
	}
}

// patchStatus writes status when it changed.
func (r *Reconciler) patchStatus(ctx context.Context, l *prepullv1.PrePullList, st prepullv1.PrePullListStatus) error {
	if equality.Semantic.DeepEqual(l.Status, st) {
		return nil
	}
	l.Status = st
	err := r.Status().Update(ctx, l)
	if apierrors.IsConflict(err) {
		// The cache l came from lags behind the controller's own last
		// write of it: read it again and write once more.
		cur := &prepullv1.PrePullList{}
		if err = r.APIReader.Get(ctx, client.ObjectKeyFromObject(l), cur); err == nil {
			cur.Status = st
			err = r.Status().Update(ctx, cur)
		}
	}
	if err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	return nil
}

// verifiedCondition, for a list with spec.verify, says whether every
// image's digest verified: False names the first that did not; Unknown
// while some image has no digest to check yet, and for a list whose images
// come from an archive or whose tags a node resolves: the nodes verify them.
func verifiedCondition(gen int64, images []prepullv1.ImageResolution, onNodes bool) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionVerified, ObservedGeneration: gen}
	checked := 0
	for _, img := range images {
		s := img.Signature
		switch {
		case s == nil:
		case s.Verified:
			checked++
		default:
			c.Status, c.Reason = metav1.ConditionFalse, s.Reason
			c.Message = truncate(fmt.Sprintf("%s (%s): %s", img.Image, s.Digest, s.Message), 32768)
			return c
		}
	}
	if onNodes {
		c.Status, c.Reason = metav1.ConditionUnknown, prepullv1.ReasonVerifiedOnNodes
		c.Message = "images from an archive, and tags resolved on a node, are verified on the node (from the signatures in the bundle, or at the registry by the node that resolves the tag) before they are imported or pulled: a node where one does not verify reports it Failed (Enforce), or says so in its status (Audit)"
		return c
	}
	if checked < len(images) {
		c.Status, c.Reason = metav1.ConditionUnknown, prepullv1.ReasonVerificationPending
		c.Message = fmt.Sprintf("%d of %d images have no digest to check yet", len(images)-checked, len(images))
		return c
	}
	c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonSignaturesVerified
	c.Message = fmt.Sprintf("the digests of all %d images verified", len(images))
	return c
}

// lastVerified is the digest the image's previous status holds that
// verified: its digest, when that verified or was the one kept back then.
func lastVerified(old prepullv1.ImageResolution) string {
	if s := old.Signature; s != nil && ((s.Verified && s.Digest == old.Digest) || withheld(old)) {
		return old.Digest
	}
	return ""
}

// withheld reports whether the image's digest did not verify and, under
// Enforce, was kept from the nodes: its status then shows another digest
// (the last verified one) or none.
func withheld(img prepullv1.ImageResolution) bool {
	return img.Signature != nil && !img.Signature.Verified && img.Digest != img.Signature.Digest
}

// discoveredCondition is the Discovered condition of a list with
// spec.workloads.
func discoveredCondition(l *prepullv1.PrePullList, d discovery) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionDiscovered, ObservedGeneration: l.Generation}
	var problems []string
	for _, di := range l.Status.Discovered {
		if di.Message != "" {
			problems = append(problems, di.Message)
		}
	}
	switch {
	case d.workloads == 0:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonNoWorkloadsMatch
		c.Message = fmt.Sprintf("spec.workloads.selector matches no workload in namespace %s", l.Namespace)
	default:
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonWorkloadsFound
		c.Message = fmt.Sprintf("%d workloads use %d images", d.workloads, len(d.images))
		if len(problems) > 0 {
			c.Message += "; not pulled: " + strings.Join(problems, "; ")
		}
	}
	c.Message = truncate(c.Message, 32768)
	return c
}
