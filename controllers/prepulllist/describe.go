package prepulllist

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sync/errgroup"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/pullsecret"
	"prepull.io/prepull/tenancy"
)

// describedDigests bounds the digests whose descriptions the controller
// keeps: a digest's manifests never change, so each is read once while
// it is among the most recently used.
const describedDigests = 8192

// emptyConfigAdvice is the warning of an artifact whose config is empty.
const emptyConfigAdvice = "an OCI artifact with the empty config: made present and pinned, but containerd does not mount it as an image volume (no rootfs in its config); ship an image volume's files as an image-shaped artifact, with a config listing its layers"

// describe reads at the registry, with l's credentials, what each digest
// l is handed names (once per digest: descriptions are kept), and says in
// images which are artifacts. When pol bounds bytes per node it also sizes
// them (images' bytes) and returns why l would take a node past that
// quota, or cannot be sized, or "".
func (r *Reconciler) describe(ctx context.Context, l *prepullv1.PrePullList, pol *prepullv1.PrePullPolicy, targets []target, images []prepullv1.ImageResolution, creds []pullsecret.Credential) (string, error) {
	d, ok := r.Resolver.(Describer)
	if !ok {
		return "", nil
	}
	bound := pol != nil && pol.Spec.Quotas.BytesPerNode != nil
	descs, errs := make([]Description, len(targets)), make([]error, len(targets))
	var g errgroup.Group
	g.SetLimit(resolveWorkers)
	for i, t := range targets {
		if t.digest != "" && !t.probe {
			g.Go(func() error {
				descs[i], errs[i] = r.description(ctx, d, t.Repo+"@"+t.digest, creds, bound)
				return nil
			})
		}
	}
	_ = g.Wait()
	at := map[string]int{}
	for i := range images {
		at[images[i].Image] = i
	}
	sizes := map[string]int64{}
	var unsized []string
	for i, t := range targets {
		res := &images[at[t.image]]
		res.ArtifactType = descs[i].ArtifactType
		if descs[i].EmptyConfig && !strings.Contains(res.Warning, emptyConfigAdvice) {
			res.Warning = strings.TrimPrefix(res.Warning+"; "+emptyConfigAdvice, "; ")
		}
		switch {
		case !bound || (t.digest == "" && !t.probe):
			if errs[i] != nil {
				ctrl.LoggerFrom(ctx).V(1).Info("Could not read what a digest names", "image", t.image, "error", errs[i].Error())
			}
		case t.probe:
			unsized = append(unsized, t.image+": resolved on nodes, not read by the controller")
		case errs[i] != nil:
			unsized = append(unsized, errs[i].Error())
		default:
			res.Bytes, sizes[t.digest] = descs[i].Bytes, descs[i].Bytes
		}
	}
	if len(unsized) > 0 {
		return truncate(fmt.Sprintf("spec.quotas.bytesPerNode: PrePullPolicy %s bounds the bytes namespace %s holds on a node, and the controller cannot size %s",
			pol.Name, l.Namespace, strings.Join(unsized, "; ")), 1024), nil
	}
	if !bound {
		return "", nil
	}
	return r.bytesOver(ctx, l, pol, sizes)
}

// bytesOver says why l, whose images take sizes, would take a node past
// pol's bytes per node beside its namespace's older lists (tenancy.Bytes).
func (r *Reconciler) bytesOver(ctx context.Context, l *prepullv1.PrePullList, pol *prepullv1.PrePullPolicy, sizes map[string]int64) (string, error) {
	var lists prepullv1.PrePullListList
	if err := r.List(ctx, &lists, client.InNamespace(l.Namespace)); err != nil {
		return "", err
	}
	others := make([]*prepullv1.PrePullList, 0, len(lists.Items))
	for i := range lists.Items {
		if o := &lists.Items[i]; o.UID != l.UID {
			others = append(others, o)
		}
	}
	return tenancy.Bytes(pol, l, others, sizes), nil
}

// description is what digestRef names, read with creds (with its size
// when size), or as read before.
func (r *Reconciler) description(ctx context.Context, d Describer, digestRef string, creds []pullsecret.Credential, size bool) (Description, error) {
	if v, ok := r.described.Get(digestRef); ok {
		if got := v.(Description); got.Sized || !size {
			return got, nil
		}
	}
	got, err := d.Describe(ctx, digestRef, creds, size)
	if err == nil {
		r.described.Add(digestRef, got)
	}
	return got, err
}
