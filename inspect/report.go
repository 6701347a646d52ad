// Package inspect reads what prepull reports in the API — PrePullLists'
// status and the agents' NodeImageSets — and builds the views `kubectl
// prepull status` and `kubectl prepull node` print: per list, its images and
// the nodes pulling or failing them; per node, what it holds and for whom.
package inspect

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodegate"
	"prepull.io/prepull/imageplan"
	"prepull.io/prepull/imageref"
)

// ListReport is one PrePullList as `status` shows it.
type ListReport struct {
	// List is "namespace/name".
	List       string               `json:"list"`
	Ready      bool                 `json:"ready"`
	ReadyNodes string               `json:"readyNodes"`
	Nodes      prepullv1.NodeCounts `json:"nodes"`
	Conditions []metav1.Condition   `json:"conditions,omitempty"`
	Images     []ImageReport        `json:"images"`
	// Pulling are the nodes pulling one of the list's images now.
	Pulling []Pull `json:"pulling,omitempty"`
	// Failures are the list's failed images on nodes: every one the
	// NodeImageSets show, or the status' sample when those are not readable.
	Failures []prepullv1.NodeFailure `json:"failures,omitempty"`
	// FailureCount counts every failure, listed or not.
	FailureCount int32 `json:"failureCount"`
	// Waiting are the list's images that wait on a node for a source:
	// holders, or the registry budget (peers on).
	Waiting []prepullv1.NodeFailure `json:"waiting,omitempty"`
	// Sources count the list's images on nodes by where their bytes came
	// from (a node's status.fetched has the bytes).
	Sources prepullv1.FetchCounts `json:"sources"`
}

// ImageReport is one image of a list.
type ImageReport struct {
	Image       string `json:"image"`
	Digest      string `json:"digest,omitempty"`
	NodesReady  int32  `json:"nodesReady"`
	NodesFailed int32  `json:"nodesFailed"`
	Message     string `json:"message,omitempty"`
	Warning     string `json:"warning,omitempty"`
}

// Pull is one image being pulled on one node.
type Pull struct {
	Node       string `json:"node"`
	Image      string `json:"image"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
	// BytesPerSecond is the pull's average rate since it started, 0 when
	// the start is not known.
	BytesPerSecond int64 `json:"bytesPerSecond"`
}

// Lists returns the reports of the lists in namespace (every namespace when
// it is empty), or of the one named name, sorted by namespace and name.
func Lists(ctx context.Context, c client.Reader, namespace, name string, now time.Time) ([]ListReport, error) {
	var lists []prepullv1.PrePullList
	if name != "" {
		l := &prepullv1.PrePullList{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, l); err != nil {
			return nil, fmt.Errorf("PrePullList %s/%s: %w", namespace, name, err)
		}
		lists = []prepullv1.PrePullList{*l}
	} else {
		all := &prepullv1.PrePullListList{}
		if err := c.List(ctx, all, client.InNamespace(namespace)); err != nil {
			return nil, fmt.Errorf("list PrePullLists: %w", err)
		}
		lists = all.Items
	}
	sets := &prepullv1.NodeImageSetList{}
	if err := c.List(ctx, sets); err != nil {
		return nil, fmt.Errorf("list NodeImageSets: %w", err)
	}
	// Nodes share plans: each is read once. Of the images a node's status
	// leaves out (present as its plan asks), only the known sources are
	// kept, once per node, for every list's count.
	plans := imageplan.NewReader(c, 64)
	leftOut := make([]map[string]prepullv1.ImageFetchSource, len(sets.Items))
	for i := range sets.Items {
		if err := plans.Spec(ctx, &sets.Items[i]); err != nil {
			return nil, err
		}
		err := plans.LeftOut(ctx, &sets.Items[i], func(e *prepullv1.NodeImage, source prepullv1.ImageFetchSource) {
			if source == "" {
				return
			}
			if leftOut[i] == nil {
				leftOut[i] = map[string]prepullv1.ImageFetchSource{}
			}
			leftOut[i][e.Image] = source
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]ListReport, 0, len(lists))
	for i := range lists {
		out = append(out, listReport(&lists[i], sets.Items, leftOut, now))
	}
	slices.SortFunc(out, func(a, b ListReport) int { return strings.Compare(a.List, b.List) })
	return out, nil
}

// listReport is l's view of sets, whose statuses leave out the images of
// leftOut[i] (by image, their sources) for sets[i].
func listReport(l *prepullv1.PrePullList, sets []prepullv1.NodeImageSet, leftOut []map[string]prepullv1.ImageFetchSource, now time.Time) ListReport {
	key := l.Namespace + "/" + l.Name
	r := ListReport{
		List:         key,
		Ready:        meta.IsStatusConditionTrue(l.Status.Conditions, prepullv1.ConditionReady),
		ReadyNodes:   l.Status.ReadyNodes,
		Nodes:        l.Status.Nodes,
		Conditions:   l.Status.Conditions,
		FailureCount: l.Status.FailureCount,
	}
	if r.ReadyNodes == "" {
		r.ReadyNodes = "-"
	}
	// The list's status names its images as the list does; a node's entry
	// names a digest reference (or, resolved on the node, the tag itself).
	byRef := map[string]string{}
	for _, i := range l.Status.Images {
		r.Images = append(r.Images, ImageReport{Image: i.Image, Digest: i.Digest, NodesReady: i.NodesReady,
			NodesFailed: i.NodesFailed, Message: i.Message, Warning: i.Warning})
		byRef[i.Image] = i.Image
		if ref, err := imageref.Parse(i.Image); err == nil {
			byRef[ref.Tag] = i.Image
			if i.Digest != "" {
				byRef[ref.Repo+"@"+i.Digest] = i.Image
			}
		}
	}
	var failures []prepullv1.NodeFailure
	for i, s := range sets {
		wanted := map[string]bool{}
		for _, e := range s.Spec.Images {
			if slices.ContainsFunc(e.Owners, func(o prepullv1.ImageOwner) bool { return o.List == key && !o.Releasing }) {
				wanted[e.Image] = true
			}
		}
		if i < len(leftOut) {
			for image, source := range leftOut[i] {
				if wanted[image] {
					r.Sources.Count(source, 0)
				}
			}
		}
		for _, st := range s.Status.Images {
			if !wanted[st.Image] {
				continue
			}
			image := byRef[st.Image]
			if image == "" {
				image = st.Image
			}
			r.Sources.Count(st.Source, 0)
			switch st.Phase {
			case prepullv1.PhasePending:
				if st.Reason != "" {
					r.Waiting = append(r.Waiting, prepullv1.NodeFailure{Node: s.Name, Image: image, Reason: st.Reason, Message: st.LastError})
				}
			case prepullv1.PhasePulling:
				p := Pull{Node: s.Name, Image: image, BytesDone: st.BytesDone, BytesTotal: st.BytesTotal}
				if st.LastTransitionTime != nil {
					if d := now.Sub(st.LastTransitionTime.Time); d > time.Second {
						p.BytesPerSecond = int64(float64(st.BytesDone) / d.Seconds())
					}
				}
				r.Pulling = append(r.Pulling, p)
			case prepullv1.PhaseFailed, prepullv1.PhaseLazy:
				failures = append(failures, prepullv1.NodeFailure{Node: s.Name, Image: image, Reason: st.Reason, Message: st.LastError})
			}
		}
	}
	slices.SortFunc(r.Pulling, func(a, b Pull) int { return strings.Compare(a.Node+"\x00"+a.Image, b.Node+"\x00"+b.Image) })
	r.Failures = l.Status.Failures
	if len(failures) > 0 {
		slices.SortFunc(failures, func(a, b prepullv1.NodeFailure) int {
			return strings.Compare(a.Node+"\x00"+a.Image, b.Node+"\x00"+b.Image)
		})
		r.Failures = failures
	}
	return r
}

// NodeReport is one node as `node` shows it.
type NodeReport struct {
	Node            string                     `json:"node"`
	Runtime         string                     `json:"runtime,omitempty"`
	ImageFilesystem *prepullv1.ImageFilesystem `json:"imageFilesystem,omitempty"`
	// Gate is the node's startup gate: whether it carries the startup
	// taint, and its ImagesReady condition.
	Gate   GateReport        `json:"gate"`
	Images []NodeImageReport `json:"images"`
	// Reported is false when the node's agent has not written a status yet.
	Reported bool `json:"reported"`
}

// GateReport is a node's startup gate.
type GateReport struct {
	Tainted bool   `json:"tainted"`
	Taint   string `json:"taint"`
	// ImagesReady is the node's prepull.io/ImagesReady condition: True,
	// False, or empty when the controller has not set it.
	ImagesReady string `json:"imagesReady,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Message     string `json:"message,omitempty"`
}

// NodeImageReport is one image of a node: the agent's report on it, and
// the lists that want it.
type NodeImageReport struct {
	prepullv1.NodeImageStatus `json:",inline"`
	Lists                     []string `json:"lists"`
	Releasing                 []string `json:"releasing,omitempty"`
}

// Node returns the report of the node name; taint is the startup taint's
// key the controller runs with.
func Node(ctx context.Context, c client.Reader, name, taint string) (*NodeReport, error) {
	n := &corev1.Node{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	r := &NodeReport{Node: name, Gate: GateReport{Taint: taint}}
	r.Gate.Tainted = nodegate.Tainted(n, taint)
	for _, cond := range n.Status.Conditions {
		if cond.Type == prepullv1.NodeConditionImagesReady {
			r.Gate.ImagesReady, r.Gate.Reason, r.Gate.Message = string(cond.Status), cond.Reason, cond.Message
		}
	}
	s := &prepullv1.NodeImageSet{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, s); client.IgnoreNotFound(err) != nil {
		return nil, fmt.Errorf("NodeImageSet %s: %w", name, err)
	}
	if err := imageplan.Expand(ctx, c, s); err != nil {
		return nil, err
	}
	r.Runtime, r.ImageFilesystem = s.Status.Runtime, s.Status.ImageFilesystem
	r.Reported = s.Status.ObservedGeneration > 0 || len(s.Status.Images) > 0
	status := map[string]prepullv1.NodeImageStatus{}
	for _, st := range s.Status.Images {
		status[st.Image] = st
	}
	for _, e := range s.Spec.Images {
		ir := NodeImageReport{NodeImageStatus: status[e.Image]}
		ir.Image = e.Image
		for _, o := range e.Owners {
			if o.Releasing {
				ir.Releasing = append(ir.Releasing, o.List)
			} else {
				ir.Lists = append(ir.Lists, o.List)
			}
		}
		r.Images = append(r.Images, ir)
	}
	return r, nil
}
