package prepulllist

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	schedulingcorev1 "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// placeDiscovered gives the discovered images among targets, under
// placement WorkloadNodes, the nodes they go to: those where a workload
// using the image could be scheduled; for an image no workload uses any
// more, those that hold it for the list already. Images spec.images names
// go everywhere the list selects.
//
// startupTaint is the controller's startup taint, which is not held
// against a workload.
func placeDiscovered(l *prepullv1.PrePullList, targets []target, d discovery, startupTaint string) {
	if l.Spec.Workloads == nil || l.Spec.Workloads.Placement != prepullv1.PlaceOnWorkloadNodes {
		return
	}
	listed := map[string]bool{}
	for _, i := range l.Spec.Images {
		listed[i.Image] = true
	}
	owner := ownerName(l)
	for i := range targets {
		t := &targets[i]
		if listed[t.image] {
			continue
		}
		if f := d.images[t.image]; f != nil {
			rules := make([]scheduling, 0, len(f.specs))
			for _, spec := range f.specs {
				rules = append(rules, schedulingOf(spec, startupTaint))
			}
			t.places = func(n *node) bool {
				return n.obj != nil && slices.ContainsFunc(rules, func(s scheduling) bool { return s.allows(n.obj) })
			}
			continue
		}
		ref := t.ref()
		t.places = func(n *node) bool {
			o := findOwner(n.images(), ref, owner)
			return o != nil && !o.Releasing
		}
	}
}

// scheduling is what of a pod spec says where it may run: its nodeSelector
// and required node affinity, read once, and its tolerations.
type scheduling struct {
	affinity     nodeaffinity.RequiredNodeAffinity
	tolerations  []corev1.Toleration
	startupTaint string
}

func schedulingOf(spec *corev1.PodSpec, startupTaint string) scheduling {
	return scheduling{affinity: nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: *spec}),
		tolerations: spec.Tolerations, startupTaint: startupTaint}
}

// allows reports whether a pod could be scheduled on n as far as its
// nodeSelector, required node affinity and tolerations say.
func (s scheduling) allows(n *corev1.Node) bool {
	if ok, _ := s.affinity.Match(n); !ok {
		return false
	}
	_, untolerated := schedulingcorev1.FindMatchingUntoleratedTaint(klog.Background(), n.Spec.Taints, s.tolerations, func(t *corev1.Taint) bool {
		return (t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute) && !transientTaint(t.Key, s.startupTaint)
	}, false)
	return !untolerated
}

// transientTaint reports whether a taint says that a node is not ready
// yet rather than what may run on it: the taints of the node's conditions
// (node.kubernetes.io/not-ready and the like), the cloud provider's
// uninitialized taint and prepull's startup taint. A joining node carries
// them, and that is when pre-pulling it helps.
func transientTaint(key, startupTaint string) bool {
	return strings.HasPrefix(key, "node.kubernetes.io/") || key == "node.cloudprovider.kubernetes.io/uninitialized" ||
		key == startupTaint
}

// share is what of a list goes to one node: the resolved targets placed
// there, and how many targets, resolved or not, are placed there.
type share struct {
	targets []target
	wanted  int
}

// shares are the nodes' shares, each target's placement asked of each node
// once; without placed targets every node shares all of resolved.
func (p *plan) shares(nodes []*node, resolved []target) []share {
	out := make([]share, len(nodes))
	placing := slices.ContainsFunc(p.targets, func(t target) bool { return t.places != nil })
	for i, n := range nodes {
		if !placing {
			out[i] = share{targets: resolved, wanted: len(p.targets)}
			continue
		}
		for _, t := range p.targets {
			if t.places != nil && !t.places(n) {
				continue
			}
			out[i].wanted++
			if t.digest != "" {
				out[i].targets = append(out[i].targets, t)
			}
		}
	}
	return out
}
