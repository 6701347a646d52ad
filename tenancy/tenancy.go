// Package tenancy holds a namespace's PrePullLists to what the cluster's
// admin granted that namespace in a PrePullPolicy.
//
// Its rules are enforced twice, alike: at admission by the
// ValidatingAdmissionPolicy prepull-tenancy (deploy/tenancy.yaml), which
// refuses a list's write, and by the controller through this package, which
// also sees what admission cannot (quotas across lists, images discovered
// from workloads, lists written before their policy changed) and refuses
// them in the list's status. A test holds the two to the same cases.
package tenancy

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/imageref"
)

// PolicyName is the PrePullPolicy ns is held to: the one its
// prepull.io/policy label names, else the default one.
func PolicyName(ns *corev1.Namespace) string {
	if name := ns.Labels[prepullv1.PolicyLabel]; name != "" {
		return name
	}
	return prepullv1.DefaultPolicy
}

// DefaultGateTimeout is a node gate's and a grant's timeout when they give
// none, as the API defaults them.
const DefaultGateTimeout = 10 * time.Minute

// Check returns what of l pol does not grant, one message per field, each
// naming the policy and the field; none when pol grants all of it. Images
// l discovered are not checked here: see Granted.
func Check(pol *prepullv1.PrePullPolicy, l *prepullv1.PrePullList) []string {
	var out []string
	refuse := func(field, format string, args ...any) {
		out = append(out, fmt.Sprintf("%s: PrePullPolicy %s %s", field, pol.Name, fmt.Sprintf(format, args...)))
	}
	s, g := &l.Spec, &pol.Spec
	if msg := contradiction(g.NodeSelector, s.NodeSelector); msg != "" {
		refuse("spec.nodeSelector", "grants this namespace only nodes labelled %s: %s", granted(g.NodeSelector), msg)
	}
	for _, img := range s.Images {
		if !Granted(g.Repositories, img.Image) {
			refuse("spec.images", "does not grant repository %s (spec.repositories: %s)", repositoryOf(img.Image), strings.Join(g.Repositories, ", "))
			break
		}
	}
	if s.Source != nil && s.Source.Archive != nil {
		if g.Archives == nil {
			refuse("spec.source.archive", "does not let this namespace's lists import archives (spec.archives)")
		} else if len(g.Archives.Repositories) > 0 {
			for _, img := range s.Images {
				if !Granted(g.Archives.Repositories, img.Image) {
					refuse("spec.images", "lets archives place images only under %s, not %s (spec.archives.repositories)", strings.Join(g.Archives.Repositories, ", "), repositoryOf(img.Image))
					break
				}
			}
		}
	}
	if s.OnDelete == prepullv1.DeleteRemove && !g.AllowRemove {
		refuse("spec.onDelete", "does not let this namespace's lists remove images (spec.allowRemove)")
	}
	if s.NodeGate != nil {
		if g.NodeGate == nil {
			refuse("spec.nodeGate", "does not let this namespace's lists hold joining nodes (spec.nodeGate)")
		} else if got, most := durationOr(s.NodeGate.Timeout), durationOr(g.NodeGate.MaxTimeout); got > most {
			refuse("spec.nodeGate.timeout", "grants node gates of at most %s, not %s (spec.nodeGate.maxTimeout)", most, got)
		}
	}
	if s.Workloads != nil && g.AllowWorkloads != nil && !*g.AllowWorkloads {
		refuse("spec.workloads", "does not let this namespace's lists discover workloads (spec.allowWorkloads)")
	}
	return out
}

// Granted reports whether image's repository is among grants, each a
// repository or a path prefix of repositories; any, when there are none.
// An image that does not parse is not granted.
func Granted(grants []string, image string) bool {
	if len(grants) == 0 {
		return true
	}
	repo, err := imageref.Repository(image)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(grants, func(g string) bool {
		return repo == g || strings.HasPrefix(repo, g+"/")
	})
}

func repositoryOf(image string) string {
	if repo, err := imageref.Repository(image); err == nil {
		return repo
	}
	return image
}

func durationOr(d *metav1.Duration) time.Duration {
	if d == nil {
		return DefaultGateTimeout
	}
	return d.Duration
}

// Restrict returns sel, a list's node selector, intersected with pol's.
func Restrict(pol *prepullv1.PrePullPolicy, sel labels.Selector) (labels.Selector, error) {
	if pol.Spec.NodeSelector == nil {
		return sel, nil
	}
	ps, err := metav1.LabelSelectorAsSelector(pol.Spec.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("PrePullPolicy %s: spec.nodeSelector: %w", pol.Name, err)
	}
	reqs, selectable := ps.Requirements()
	if !selectable {
		return labels.Nothing(), nil
	}
	return sel.Add(reqs...), nil
}

// contradiction says how a list's selector asks for nodes the grant
// excludes by a label it requires: another value, or none; "" when it does
// not.
func contradiction(grant, list *metav1.LabelSelector) string {
	if grant == nil || list == nil {
		return ""
	}
	for _, k := range slices.Sorted(maps.Keys(grant.MatchLabels)) {
		want := grant.MatchLabels[k]
		if v, ok := list.MatchLabels[k]; ok && v != want {
			return fmt.Sprintf("the list asks for %s=%s", k, v)
		}
		for _, e := range list.MatchExpressions {
			if e.Key != k {
				continue
			}
			switch e.Operator {
			case metav1.LabelSelectorOpIn:
				if !slices.Contains(e.Values, want) {
					return fmt.Sprintf("the list asks for %s in (%s)", k, strings.Join(e.Values, ", "))
				}
			case metav1.LabelSelectorOpNotIn:
				if slices.Contains(e.Values, want) {
					return fmt.Sprintf("the list asks for %s not in (%s)", k, strings.Join(e.Values, ", "))
				}
			case metav1.LabelSelectorOpDoesNotExist:
				return fmt.Sprintf("the list asks for nodes without %s", k)
			}
		}
	}
	return ""
}

func granted(s *metav1.LabelSelector) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.MatchLabels)) {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	return strings.Join(parts, ", ")
}

// Quotas returns, of a namespace's lists held to pol, those its quotas
// leave out, each with why. The lists are served oldest first (by
// creation, then name), skipping those Check refuses: the first
// spec.quotas.lists of them, as long as their images together stay within
// spec.quotas.imagesPerNode — counted as if every list selected the same
// node, which one node may be. images gives a list's images (named and
// discovered).
func Quotas(pol *prepullv1.PrePullPolicy, lists []*prepullv1.PrePullList, images func(*prepullv1.PrePullList) []string) map[types.NamespacedName]string {
	q := pol.Spec.Quotas
	if q.Lists == nil && q.ImagesPerNode == nil {
		return nil
	}
	ordered := slices.Clone(lists)
	slices.SortFunc(ordered, func(a, b *prepullv1.PrePullList) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), strings.Compare(a.Name, b.Name))
	})
	out := map[types.NamespacedName]string{}
	served, held := 0, map[string]bool{}
	for _, l := range ordered {
		if !l.DeletionTimestamp.IsZero() || len(Check(pol, l)) > 0 {
			continue
		}
		key := types.NamespacedName{Namespace: l.Namespace, Name: l.Name}
		if q.Lists != nil && served >= int(*q.Lists) {
			out[key] = fmt.Sprintf("spec.quotas.lists: PrePullPolicy %s lets namespace %s have %d lists: %d older ones are served", pol.Name, l.Namespace, *q.Lists, served)
			continue
		}
		var added []string
		for _, img := range images(l) {
			if !held[img] && !slices.Contains(added, img) {
				added = append(added, img)
			}
		}
		if q.ImagesPerNode != nil && len(held)+len(added) > int(*q.ImagesPerNode) {
			out[key] = fmt.Sprintf("spec.quotas.imagesPerNode: PrePullPolicy %s lets namespace %s hold %d images on a node: its older lists hold %d, and this one would add %d", pol.Name, l.Namespace, *q.ImagesPerNode, len(held), len(added))
			continue
		}
		served++
		for _, img := range added {
			held[img] = true
		}
	}
	return out
}

// Bytes says why l, whose images take sizes (by digest), would take a node
// past pol's spec.quotas.bytesPerNode, or "": beside the images of the
// namespace's lists served before it (ordered as Quotas serves them, not
// deleted, not refused), each digest counted once, as if every list
// selected the same node. Those lists' sizes are their status's, written
// when they were served.
func Bytes(pol *prepullv1.PrePullPolicy, l *prepullv1.PrePullList, others []*prepullv1.PrePullList, sizes map[string]int64) string {
	quota := pol.Spec.Quotas.BytesPerNode
	if quota == nil {
		return ""
	}
	held := map[string]int64{}
	for _, o := range others {
		older := cmp.Or(o.CreationTimestamp.Compare(l.CreationTimestamp.Time), strings.Compare(o.Name, l.Name)) < 0
		if !older || !o.DeletionTimestamp.IsZero() || refused(o) {
			continue
		}
		for _, img := range o.Status.Images {
			if img.Digest != "" {
				held[img.Digest] = max(held[img.Digest], img.Bytes)
			}
		}
	}
	var before, added int64
	for _, n := range held {
		before += n
	}
	for d, n := range sizes {
		if _, ok := held[d]; !ok {
			added += n
		}
	}
	if before+added <= quota.Value() {
		return ""
	}
	return fmt.Sprintf("spec.quotas.bytesPerNode: PrePullPolicy %s lets namespace %s hold %s on a node: its older lists hold %s, and this one would add %s",
		pol.Name, l.Namespace, quota, mebibytes(before), mebibytes(added))
}

// refused reports whether l's status says its policy refused it.
func refused(l *prepullv1.PrePullList) bool {
	c := meta.FindStatusCondition(l.Status.Conditions, prepullv1.ConditionDegraded)
	return c != nil && c.Status == metav1.ConditionTrue && c.Reason == prepullv1.ReasonPolicyRefused
}

func mebibytes(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
