package v1alpha1

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// Defaults of a PrePullList's settings, as the API server fills them in.
// The agent uses them for an owner whose list it cannot read.
const (
	DefaultPullTimeout  = 10 * time.Minute
	DefaultBackoffLimit = 6
	DefaultRefresh      = time.Hour
	DefaultGateTimeout  = 10 * time.Minute
)

// DefaultStartupTaint is the key of the taint nodes register with to be
// held by gating lists, unless the controller's --startup-taint names
// another.
const DefaultStartupTaint = "prepull.io/images-not-ready"

// NodeConditionImagesReady is the condition the controller keeps on every
// node a gating list selects: True when every gating list's images are
// present there.
const NodeConditionImagesReady = "prepull.io/ImagesReady"

// Reasons of the ImagesReady node condition.
const (
	// ReasonImagesPresent: every gating list's images are present.
	ReasonImagesPresent = "ImagesPresent"
	// ReasonImagesMissing: images of gating lists are not present yet; the
	// message names them.
	ReasonImagesMissing = "ImagesMissing"
	// ReasonGateTimedOut: the gate opened at a list's timeout without its
	// images; the message names them.
	ReasonGateTimedOut = "GateTimedOut"
	// ReasonNotGated: no gating list selects the node any more.
	ReasonNotGated = "NotGated"
)

// Selector is the list's spec.nodeSelector as a selector: omitted or
// empty, it selects every node.
func (s *PrePullListSpec) Selector() (labels.Selector, error) {
	if s.NodeSelector == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(s.NodeSelector)
}

// GateTimeout is how long the list's gate waits for its images on a node.
func (g *NodeGate) GateTimeout() time.Duration {
	if g == nil || g.Timeout == nil {
		return DefaultGateTimeout
	}
	return g.Timeout.Duration
}

// MirrorSecretName is the name of the controller's mirror of secret, a pull
// secret of the list namespace/name, in the controller's namespace: a hash,
// so that it fits any namespace and list name and reveals neither. The
// controller writes the mirror; the agent reads it by this name.
func MirrorSecretName(namespace, name, secret string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name + "/" + secret))
	return "pull-" + hex.EncodeToString(sum[:10])
}

// EntrySettings is what the agent does for one NodeImage, derived from its
// owners and their lists.
type EntrySettings struct {
	// Tags are the active owners' tags: each must name the image.
	Tags []string
	// PullSecrets are the mirrors of the active owners' lists' secrets.
	PullSecrets []string
	// SecretsVersion changes when the credentials of those secrets do (the
	// lists' PullSecretsVersion).
	SecretsVersion string
	// Timeout bounds one pull: the shortest of the active owners' lists'.
	Timeout time.Duration
	// BackoffLimit is the largest of the active owners' lists'.
	BackoffLimit int32
	// Pinners are the active owners whose list says retain: Pinned.
	Pinners []string
	// Remove is true when a releasing owner's list says onDelete: Remove.
	Remove bool
	// VerifyKeys are the public keys (PEM) of the active owners' lists with
	// spec.verify: a signature by one of them must verify. VerifyAudit is
	// true when every such list says mode: Audit: the image is made present
	// whatever the signatures say, and status says what they said.
	VerifyKeys  []string
	VerifyAudit bool
}

// Settings derives e's settings from its owners, reading each owner's list
// with lookup ("namespace/name"; nil when the list cannot be read, which
// means the API's defaults).
func (e *NodeImage) Settings(lookup func(owner string) *PrePullList) EntrySettings {
	s := EntrySettings{BackoffLimit: -1}
	var versions []string
	enforced := false
	for _, o := range e.Owners {
		l := lookup(o.List)
		if o.Releasing {
			if l != nil && l.Spec.OnDelete == DeleteRemove {
				s.Remove = true
			}
			continue
		}
		s.Tags = append(s.Tags, o.Tags...)
		timeout, limit := DefaultPullTimeout, int32(DefaultBackoffLimit)
		if l != nil {
			if t := l.Spec.Rollout.Timeout; t != nil && t.Duration > 0 {
				timeout = t.Duration
			}
			if b := l.Spec.Rollout.BackoffLimit; b != nil {
				limit = *b
			}
			for _, name := range l.PullSecretNames() {
				s.PullSecrets = append(s.PullSecrets, MirrorSecretName(l.Namespace, l.Name, name))
			}
			if v := l.Status.PullSecretsVersion; v != "" {
				versions = append(versions, v)
			}
		}
		if l == nil || l.Spec.Retain != RetainUnpinned {
			s.Pinners = append(s.Pinners, o.List)
		}
		if l != nil && l.Spec.Verify != nil {
			enforced = enforced || l.Spec.Verify.Mode != VerifyAudit
			for _, k := range l.Status.VerifyKeys {
				s.VerifyKeys = append(s.VerifyKeys, k.PEM)
			}
			if len(l.Status.VerifyKeys) == 0 {
				// Keys the controller has not read yet verify nothing.
				s.VerifyKeys = append(s.VerifyKeys, "")
			}
		}
		if s.Timeout == 0 || timeout < s.Timeout {
			s.Timeout = timeout
		}
		s.BackoffLimit = max(s.BackoffLimit, limit)
	}
	if s.BackoffLimit < 0 {
		s.BackoffLimit = DefaultBackoffLimit
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultPullTimeout
	}
	slices.Sort(s.Tags)
	slices.Sort(s.PullSecrets)
	s.Tags, s.PullSecrets = slices.Compact(s.Tags), slices.Compact(s.PullSecrets)
	slices.Sort(versions)
	s.SecretsVersion = strings.Join(versions, ",")
	slices.Sort(s.VerifyKeys)
	s.VerifyKeys = slices.Compact(s.VerifyKeys)
	s.VerifyAudit = len(s.VerifyKeys) > 0 && !enforced
	return s
}

// PullSecretNames are the Secrets of l's namespace its images are pulled
// with: spec.imagePullSecrets, then those of the workloads it discovers
// images from.
func (l *PrePullList) PullSecretNames() []string {
	out := make([]string, 0, len(l.Spec.ImagePullSecrets)+len(l.Status.DiscoveredPullSecrets))
	for _, ref := range l.Spec.ImagePullSecrets {
		out = append(out, ref.Name)
	}
	for _, name := range l.Status.DiscoveredPullSecrets {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// OwnerKey is the namespace and name of the list an owner names
// ("namespace/name"), and whether it has that form.
func OwnerKey(owner string) (types.NamespacedName, bool) {
	ns, name, ok := strings.Cut(owner, "/")
	return types.NamespacedName{Namespace: ns, Name: name}, ok
}

// ActiveOwners lists the owners that are not releasing.
func (e *NodeImage) ActiveOwners() []string {
	var out []string
	for _, o := range e.Owners {
		if !o.Releasing {
			out = append(out, o.List)
		}
	}
	return out
}

// SortOwners sorts e's owners by list, as the API lists them.
func (e *NodeImage) SortOwners() {
	slices.SortFunc(e.Owners, func(a, b ImageOwner) int { return cmp.Compare(a.List, b.List) })
}
