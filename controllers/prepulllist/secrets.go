package prepulllist

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
)

// Pull secrets reach agents as mirrors: the controller copies each Secret a
// list names into its own namespace, labelled with the list's UID, and hands
// the mirror's name to the nodes. Agents read Secrets in that one namespace
// only, never cluster-wide. The mirrors go when the list goes.
const (
	// MirrorListLabel holds the UID of the list a mirrored Secret serves.
	MirrorListLabel = "prepull.io/list-uid"
	// MirrorSourceAnnotation names the mirrored Secret, "namespace/name".
	MirrorSourceAnnotation = "prepull.io/source"
)

// mirrorSecrets makes the mirrors of l's pull secrets match their sources,
// removes mirrors l no longer names, and returns the mirrors' version (see
// PrePullListStatus.PullSecretsVersion) and the credentials. A missing or
// malformed source is reported in the error, and the rest still mirrored.
//
// users names, for a Secret only discovered workloads use, those workloads,
// which its errors name.
func (r *Reconciler) mirrorSecrets(ctx context.Context, l *prepullv1.PrePullList, users map[string][]string) (string, []pullsecret.Credential, error) {
	var names, versions []string
	var creds []pullsecret.Credential
	var errs []error
	for i, secret := range l.PullSecretNames() {
		field := fmt.Sprintf("spec.imagePullSecrets[%d]", i)
		if i >= len(l.Spec.ImagePullSecrets) {
			field = fmt.Sprintf("the pull secret of %s", strings.Join(users[secret], ", "))
		}
		src := &corev1.Secret{}
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: secret}, src)
		if apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("%s: secret %s/%s not found", field, l.Namespace, secret))
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: read secret %s/%s: %w", field, l.Namespace, secret, err))
			continue
		}
		c, err := pullsecret.Parse(src)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
			continue
		}
		creds = append(creds, c...)
		name := prepullv1.MirrorSecretName(l.Namespace, l.Name, secret)
		rv, err := r.writeMirror(ctx, l, src, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: mirror secret %s/%s: %w", field, l.Namespace, secret, err))
			continue
		}
		names = append(names, name)
		versions = append(versions, name+"="+rv)
	}
	if err := r.deleteMirrors(ctx, l, names); err != nil {
		errs = append(errs, err)
	}
	return mirrorsVersion(versions), creds, errors.Join(errs...)
}

// mirrorsVersion is a short digest of the mirrors' names and resource
// versions, "" for none.
func mirrorsVersion(versions []string) string {
	if len(versions) == 0 {
		return ""
	}
	slices.Sort(versions)
	sum := sha256.Sum256([]byte(strings.Join(versions, ",")))
	return hex.EncodeToString(sum[:8])
}

// writeMirror makes the mirror name of src and returns its resource
// version, which changes only when the mirror does.
func (r *Reconciler) writeMirror(ctx context.Context, l *prepullv1.PrePullList, src *corev1.Secret, name string) (string, error) {
	want := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   r.Namespace,
			Name:        name,
			Labels:      map[string]string{MirrorListLabel: string(l.UID)},
			Annotations: map[string]string{MirrorSourceAnnotation: src.Namespace + "/" + src.Name},
		},
		Type: src.Type,
		Data: src.Data,
	}
	cur := &corev1.Secret{}
	err := r.Get(ctx, client.ObjectKeyFromObject(want), cur)
	if apierrors.IsNotFound(err) {
		err := r.Create(ctx, want)
		return want.ResourceVersion, err
	}
	if err != nil {
		return "", err
	}
	if maps.EqualFunc(cur.Data, want.Data, slices.Equal) && cur.Labels[MirrorListLabel] == want.Labels[MirrorListLabel] && cur.Type == want.Type {
		return cur.ResourceVersion, nil
	}
	if cur.Type != want.Type {
		// A Secret's type is immutable.
		if err := r.Delete(ctx, cur); err != nil && !apierrors.IsNotFound(err) {
			return "", err
		}
		err := r.Create(ctx, want)
		return want.ResourceVersion, err
	}
	cur.Data, cur.Labels, cur.Annotations = want.Data, want.Labels, want.Annotations
	err = r.Update(ctx, cur)
	return cur.ResourceVersion, err
}

// deleteMirrors deletes l's mirrors whose names are not in keep.
func (r *Reconciler) deleteMirrors(ctx context.Context, l *prepullv1.PrePullList, keep []string) error {
	var list corev1.SecretList
	if err := r.List(ctx, &list, client.InNamespace(r.Namespace), client.MatchingLabels{MirrorListLabel: string(l.UID)}); err != nil {
		return fmt.Errorf("list mirrored secrets: %w", err)
	}
	var errs []error
	for i := range list.Items {
		s := &list.Items[i]
		if slices.Contains(keep, s.Name) {
			continue
		}
		if err := r.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete mirrored secret %s/%s: %w", s.Namespace, s.Name, err))
		}
	}
	return errors.Join(errs...)
}

// pullSecretIndex indexes lists by the names of the Secrets they pull with
// (PrePullList.PullSecretNames).
const pullSecretIndex = "pullSecretNames"

func indexPullSecrets(o client.Object) []string {
	l, ok := o.(*prepullv1.PrePullList)
	if !ok {
		return nil
	}
	return l.PullSecretNames()
}

// DefaultSecretPoll is how often the Secrets lists name are read again.
const DefaultSecretPoll = 15 * time.Second

// degradedSecretPoll is how often the Secrets of a list Degraded for a
// reason a Secret may end (a Secret missing, a tag its credentials could
// not read, …; fixableBySecret) are read again: the fix a user is making
// should take effect within seconds.
const degradedSecretPoll = 2 * time.Second

// pollSourceSecrets reads the metadata of each Secret that a list names,
// by name, every SecretPoll (every degradedSecretPoll while a list naming
// it is Degraded for a reason the Secret may end), and reconciles the lists naming one that was created,
// changed or deleted since: a rotated pull secret is mirrored, and its new
// version reaches the agents (PullSecretsVersion), within a poll and a
// statusBatch. The controller may get a Secret by name; it may not list or
// watch Secrets outside its own namespace, which would give it every
// Secret's data (Kubernetes authorizes a metadata watch as a watch). A
// Secret's data is read by name when its list is reconciled, never cached.
func (r *Reconciler) pollSourceSecrets(ctx context.Context, cfg *rest.Config) error {
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("metadata client: %w", err)
	}
	secrets := mc.Resource(corev1.SchemeGroupVersion.WithResource("secrets"))
	poll := cmp.Or(r.SecretPoll, DefaultSecretPoll)
	type seen struct {
		version string
		at      time.Time
	}
	last := map[types.NamespacedName]seen{}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		named, err := r.namedSecrets(ctx)
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "List the PrePullLists' pull secrets")
			return
		}
		// The poll keeps the wall clock's time, as wait.Until does.
		now := time.Now()
		for key, n := range named {
			prev, ok := last[key]
			if ok && !n.fixable && now.Sub(prev.at) < poll {
				continue
			}
			version := ""
			m, err := secrets.Namespace(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
			switch {
			case err == nil:
				version = m.ResourceVersion
			case !apierrors.IsNotFound(err):
				// Read again at the next poll, not at every tick: an API
				// server that refuses is not asked harder.
				ctrl.LoggerFrom(ctx).Info("Could not read a pull secret's version", "secret", key.String(), "error", err.Error())
				if !ok {
					prev.version = unread
				}
				last[key] = seen{version: prev.version, at: now}
				continue
			}
			// A Secret seen for the first time may have changed since its
			// lists were last reconciled: they are, once.
			if !ok || prev.version != version {
				ctrl.LoggerFrom(ctx).V(1).Info("A pull secret changed; reconciling the lists naming it", "secret", key.String(), "lists", len(n.lists))
				r.noteLists(n.lists)
			}
			last[key] = seen{version: version, at: now}
		}
		for key := range last {
			if _, ok := named[key]; !ok {
				delete(last, key)
			}
		}
	}, min(poll, degradedSecretPoll))
	return nil
}

// fixableBySecret says l is Degraded for a reason a changed pull secret
// may end: not a refusal of its spec or by a policy (a list refused
// because an image could not be sized is reconciled every sizeRetry, its
// Secrets read then), or a signature missing or invalid.
func fixableBySecret(l *prepullv1.PrePullList) bool {
	c := meta.FindStatusCondition(l.Status.Conditions, prepullv1.ConditionDegraded)
	if c == nil || c.Status != metav1.ConditionTrue {
		return false
	}
	switch c.Reason {
	case prepullv1.ReasonInvalidSpec, prepullv1.ReasonPolicyRefused, prepullv1.ReasonSignatureMissing, prepullv1.ReasonSignatureInvalid:
		return false
	}
	return true
}

// unread is the version of a Secret whose first read failed: any version
// read later differs.
const unread = "\x00unread"

// namedSecret is a Secret lists name: those lists, and whether one of
// them is Degraded for a reason the Secret may end (fixableBySecret).
type namedSecret struct {
	lists   []types.NamespacedName
	fixable bool
}

// namedSecrets are the Secrets the lists name (their own and those their
// workloads use), each with the lists naming it.
func (r *Reconciler) namedSecrets(ctx context.Context) (map[types.NamespacedName]namedSecret, error) {
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := map[types.NamespacedName]namedSecret{}
	for i := range lists.Items {
		l := &lists.Items[i]
		fixable := fixableBySecret(l)
		for _, name := range l.PullSecretNames() {
			key := types.NamespacedName{Namespace: l.Namespace, Name: name}
			n := out[key]
			n.lists = append(n.lists, client.ObjectKeyFromObject(l))
			n.fixable = n.fixable || fixable
			out[key] = n
		}
	}
	return out, nil
}
