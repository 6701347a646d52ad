package prepulllist

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// removes mirrors l no longer names, and returns the mirrors' names and the
// credentials. A missing or malformed source is reported in the error, and
// the rest still mirrored.
func (r *Reconciler) mirrorSecrets(ctx context.Context, l *prepullv1.PrePullList) ([]string, []pullsecret.Credential, error) {
	var names []string
	var creds []pullsecret.Credential
	var errs []error
	for i, ref := range l.Spec.ImagePullSecrets {
		src := &corev1.Secret{}
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: ref.Name}, src)
		if apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("spec.imagePullSecrets[%d]: secret %s/%s not found", i, l.Namespace, ref.Name))
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.imagePullSecrets[%d]: read secret %s/%s: %w", i, l.Namespace, ref.Name, err))
			continue
		}
		c, err := pullsecret.Parse(src)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.imagePullSecrets[%d]: %w", i, err))
			continue
		}
		creds = append(creds, c...)
		name := prepullv1.MirrorSecretName(l.Namespace, l.Name, ref.Name)
		if err := r.writeMirror(ctx, l, src, name); err != nil {
			errs = append(errs, fmt.Errorf("spec.imagePullSecrets[%d]: mirror secret %s/%s: %w", i, l.Namespace, ref.Name, err))
			continue
		}
		names = append(names, name)
	}
	if err := r.deleteMirrors(ctx, l, names); err != nil {
		errs = append(errs, err)
	}
	slices.Sort(names)
	return names, creds, errors.Join(errs...)
}

func (r *Reconciler) writeMirror(ctx context.Context, l *prepullv1.PrePullList, src *corev1.Secret, name string) error {
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
		return r.Create(ctx, want)
	}
	if err != nil {
		return err
	}
	if maps.EqualFunc(cur.Data, want.Data, slices.Equal) && cur.Labels[MirrorListLabel] == want.Labels[MirrorListLabel] && cur.Type == want.Type {
		return nil
	}
	if cur.Type != want.Type {
		// A Secret's type is immutable.
		if err := r.Delete(ctx, cur); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return r.Create(ctx, want)
	}
	cur.Data, cur.Labels, cur.Annotations = want.Data, want.Labels, want.Annotations
	return r.Update(ctx, cur)
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
