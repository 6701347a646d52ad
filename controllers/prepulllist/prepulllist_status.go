package prepulllist

import (
	"cmp"
	"context"
	"fmt"
	"maps"
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
// images wait for a node to resolve them (awaiting: image → what it waits
// for), which it says first: a node that pulls only the tag it resolves
// pulls nothing of the list's yet.
func progressingCondition(gen int64, nodes prepullv1.NodeCounts, awaiting map[string]string) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionProgressing, ObservedGeneration: gen}
	if len(awaiting) > 0 {
		waits := slices.Sorted(maps.Values(awaiting))
		c.Status, c.Reason = metav1.ConditionTrue, prepullv1.ReasonResolving
		c.Message = truncate(fmt.Sprintf("%d images wait for their resolution: %s; %d nodes pulling, %d waiting their turn",
			len(awaiting), strings.Join(waits, "; "), nodes.Pulling, nodes.Waiting), 32768)
		return c
	}
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
func degradedCondition(gen int64, nodes prepullv1.NodeCounts, images []prepullv1.ImageResolution, awaiting map[string]string, failures []prepullv1.NodeFailure, secretErr error) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionDegraded, ObservedGeneration: gen}
	var unresolved, unverified []string
	var unverifiedReason string
	for _, i := range images {
		if _, waits := awaiting[i.Image]; i.Message != "" && !waits {
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

// listFacts are what a reconcile found of a list, from which its whole
// status is made (listStatus).
type listFacts struct {
	gen int64
	// old is the status as the list holds it: its conditions keep their
	// transition times.
	old    prepullv1.PrePullListStatus
	images []prepullv1.ImageResolution
	// awaiting are the images that wait for a node to resolve them, with
	// what they wait for: no failure.
	awaiting map[string]string
	out      outcome
	// secretsVersion, secretErr: the mirrors of its pull secrets;
	// verifyKeys: the keys of spec.verify as read.
	secretsVersion string
	secretErr      error
	verifyKeys     []prepullv1.VerifyKeyStatus
	// discovered and discoveredSecrets are what its workloads use (with
	// spec.workloads, found counts them: discovery is nil without).
	discovered        []prepullv1.DiscoveredImage
	discoveredSecrets []string
	discovery         *discovery
	namespace         string
	// verify is set for a list with spec.verify; onNodes when its images
	// are verified on the nodes (an archive, or tags resolved there).
	verify, onNodes bool
	// exposure is what the nodes' kubelets make of its private images.
	exposure exposure
}

// listStatus is a list's whole status, made from what its reconcile found:
// counts, conditions, discovered images, verification and the gate.
func listStatus(f listFacts) prepullv1.PrePullListStatus {
	images, out, gen := f.images, f.out, f.gen
	for i := range images {
		if c, ok := out.perImage[images[i].Image]; ok {
			images[i].NodesReady, images[i].NodesFailed = c.ready, c.failed
		}
	}
	st := prepullv1.PrePullListStatus{
		ObservedGeneration:    gen,
		Conditions:            slices.Clone(f.old.Conditions),
		Images:                images,
		Nodes:                 out.nodes,
		ReadyNodes:            fmt.Sprintf("%d/%d", out.nodes.Ready, out.nodes.Selected),
		ImageCount:            int32(len(images)),
		FailureCount:          int32(len(out.failures)),
		PullSecretsVersion:    f.secretsVersion,
		VerifyKeys:            f.verifyKeys,
		Discovered:            f.discovered,
		DiscoveredPullSecrets: f.discoveredSecrets,
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
	meta.SetStatusCondition(&st.Conditions, progressingCondition(gen, out.nodes, f.awaiting))
	degraded := degradedCondition(gen, out.nodes, images, f.awaiting, failures, f.secretErr)
	if out.gated {
		gate := out.gate
		st.NodeGate = &gate
		if gate.TimedOut > 0 && degraded.Status == metav1.ConditionFalse {
			degraded.Status, degraded.Reason = metav1.ConditionTrue, prepullv1.ReasonNodeGateTimedOut
			degraded.Message = fmt.Sprintf("%d nodes were let through at the gate's timeout without every image", gate.TimedOut)
		}
	}
	meta.SetStatusCondition(&st.Conditions, degraded)
	if f.discovery != nil {
		meta.SetStatusCondition(&st.Conditions, discoveredCondition(gen, f.namespace, f.discovered, *f.discovery))
	} else {
		meta.RemoveStatusCondition(&st.Conditions, prepullv1.ConditionDiscovered)
	}
	setExposure(&st.Conditions, gen, f.exposure)
	if f.verify {
		meta.SetStatusCondition(&st.Conditions, verifiedCondition(gen, images, f.onNodes))
	} else {
		meta.RemoveStatusCondition(&st.Conditions, prepullv1.ConditionVerified)
	}
	return st
}

// invalidStatus is the status of a list whose spec the controller cannot
// act on (cause): Ready and Progressing False, Degraded True, reason
// InvalidSpec; the rest as the list held it.
func invalidStatus(l *prepullv1.PrePullList, cause string) prepullv1.PrePullListStatus {
	return stoppedStatus(l, prepullv1.ReasonInvalidSpec, cause)
}

// stoppedStatus is the status of a list that does nothing, for reason and
// cause: Ready and Progressing False, Degraded True; the rest as the list
// held it.
func stoppedStatus(l *prepullv1.PrePullList, reason, cause string) prepullv1.PrePullListStatus {
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
			Reason: reason, Message: cause})
	}
	return st
}

// releasingStatus is the status of a deleted list whose nodes' agents have
// not all released it yet: held counts them.
func releasingStatus(l *prepullv1.PrePullList, held int) prepullv1.PrePullListStatus {
	st := *l.Status.DeepCopy()
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: prepullv1.ConditionProgressing, Status: metav1.ConditionTrue,
		ObservedGeneration: l.Generation, Reason: prepullv1.ReasonReleasing,
		Message: fmt.Sprintf("the list is deleted: %d nodes still hold its images, and it goes once their agents released them", held)})
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: prepullv1.ConditionReady, Status: metav1.ConditionFalse,
		ObservedGeneration: l.Generation, Reason: prepullv1.ReasonReleasing, Message: "the list is deleted"})
	return st
}

// invalid reports a spec that admission let through and the controller
// cannot act on: the list says which field and why (Ready and Progressing
// False, Degraded True, reason InvalidSpec) and a Warning event says so;
// nothing changes on any node until the spec is fixed, and the list can
// still be deleted. The error is not retried: a spec change requeues.
func (r *Reconciler) invalid(ctx context.Context, l *prepullv1.PrePullList, cause error) error {
	st := invalidStatus(l, cause.Error())
	r.emit(l, transitions(l.Status, st))
	if err := r.patchStatus(ctx, l, st); err != nil {
		return err
	}
	return reconcile.TerminalError(cause)
}

// forget drops what the reconciler keeps of a list that is gone.
func (r *Reconciler) forget(key types.NamespacedName) {
	r.lists.forget(key)
	forgetNodes(key.Namespace, key.Name)
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

// writeStatus records st as l's status, computed after prev: the Events
// and metrics of the change, then one write when it changed.
func (r *Reconciler) writeStatus(ctx context.Context, l *prepullv1.PrePullList, prev, st prepullv1.PrePullListStatus) error {
	r.lists.computed(l, st)
	if becameReady(prev, st) {
		rollouts.WithLabelValues(l.Namespace, l.Name).Inc()
	}
	r.emit(l, transitions(prev, st))
	recordNodes(l, st.Nodes)
	if err := r.patchStatus(ctx, l, st); err != nil {
		return err
	}
	r.reconciled.Store(true)
	return nil
}

// transition is one Event a status change calls for.
type transition struct {
	typ, reason, action, message string
}

// transitions are the Events for what changed from prev to next: the list
// became Ready, a tag moved, an image failed to resolve or its signature
// was checked, advice about tags and pull policies, nodes failed, the spec
// became invalid.
func transitions(prev, next prepullv1.PrePullListStatus) []transition {
	var out []transition
	add := func(typ, reason, action, format string, args ...any) {
		out = append(out, transition{typ, reason, action, fmt.Sprintf(format, args...)})
	}
	if c := meta.FindStatusCondition(next.Conditions, prepullv1.ConditionReady); becameReady(prev, next) {
		add(corev1.EventTypeNormal, "Ready", "Rollout", "%s", c.Message)
	}
	for _, img := range next.Images {
		old := resolutionOf(prev.Images, img.Image)
		if old.Digest != "" && img.Digest != "" && old.Digest != img.Digest {
			add(corev1.EventTypeNormal, "TagMoved", "Resolve", "%s moved from %s to %s; rolling out", img.Image, old.Digest, img.Digest)
		}
		if img.Message != "" && old.Message != img.Message {
			add(corev1.EventTypeWarning, prepullv1.ReasonResolutionFailed, "Resolve", "%s: %s", img.Image, img.Message)
		}
		if s := img.Signature; s != nil && (old.Signature == nil || old.Signature.Digest != s.Digest || old.Signature.Verified != s.Verified || old.Signature.Reason != s.Reason) {
			if s.Verified {
				add(corev1.EventTypeNormal, prepullv1.ReasonSignaturesVerified, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			} else {
				add(corev1.EventTypeWarning, s.Reason, "Verify", "%s (%s): %s", img.Image, s.Digest, s.Message)
			}
		}
		if img.Warning != "" && old.Warning == "" {
			add(corev1.EventTypeWarning, "MutableTag", "Validate", "%s: %s", img.Image, img.Warning)
		}
	}
	for _, d := range next.Discovered {
		if d.Warning == "" {
			continue
		}
		if i := slices.IndexFunc(prev.Discovered, func(o prepullv1.DiscoveredImage) bool { return o.Image == d.Image }); i < 0 || prev.Discovered[i].Warning != d.Warning {
			add(corev1.EventTypeWarning, prepullv1.ReasonPullPolicyAlways, "Discover", "%s: %s", d.Image, d.Warning)
		}
	}
	if next.FailureCount > prev.FailureCount && len(next.Failures) > 0 {
		f := next.Failures[0]
		add(corev1.EventTypeWarning, prepullv1.ReasonNodesFailed, "Pull",
			"%d image pulls failed on nodes; first: node %s, image %s: %s", next.FailureCount, f.Node, f.Image, f.Message)
	}
	if c := meta.FindStatusCondition(next.Conditions, prepullv1.ConditionDegraded); c != nil && c.Reason == prepullv1.ReasonInvalidSpec {
		if old := meta.FindStatusCondition(prev.Conditions, prepullv1.ConditionDegraded); old == nil || old.Reason != c.Reason || old.Message != c.Message {
			add(corev1.EventTypeWarning, prepullv1.ReasonInvalidSpec, "Validate", "%s", c.Message)
		}
	}
	return out
}

// becameReady reports whether the list turned Ready from prev to next.
func becameReady(prev, next prepullv1.PrePullListStatus) bool {
	return meta.IsStatusConditionTrue(next.Conditions, prepullv1.ConditionReady) && !meta.IsStatusConditionTrue(prev.Conditions, prepullv1.ConditionReady)
}

// emit records ts as Events of l.
func (r *Reconciler) emit(l *prepullv1.PrePullList, ts []transition) {
	if r.Recorder == nil {
		return
	}
	for _, t := range ts {
		r.Recorder.Eventf(l, nil, t.typ, t.reason, t.action, "%s", t.message)
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
func discoveredCondition(gen int64, namespace string, discovered []prepullv1.DiscoveredImage, d discovery) metav1.Condition {
	c := metav1.Condition{Type: prepullv1.ConditionDiscovered, ObservedGeneration: gen}
	var problems []string
	for _, di := range discovered {
		if di.Message != "" {
			problems = append(problems, di.Message)
		}
	}
	switch {
	case d.workloads == 0:
		c.Status, c.Reason = metav1.ConditionFalse, prepullv1.ReasonNoWorkloadsMatch
		c.Message = fmt.Sprintf("spec.workloads.selector matches no workload in namespace %s", namespace)
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
