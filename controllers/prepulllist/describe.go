package prepulllist

import (
	"context"
	"fmt"
	"strings"
	"time"

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

// sizeRetry is when a list refused because an image could not be sized
// (a registry's error, a registry budget spent) is looked at again.
const sizeRetry = 10 * time.Second

// describe reads at the registry, with l's credentials, what each digest
// l is handed names (once per digest: descriptions are kept), and says in
// images which are artifacts. When pol bounds bytes per node it also sizes
// them (images' bytes) and returns why l would take a node past that
// quota, or cannot be sized, or ""; retry says a read failed, and may not
// the next time.
func (r *Reconciler) describe(ctx context.Context, l *prepullv1.PrePullList, pol *prepullv1.PrePullPolicy, targets []target, images []prepullv1.ImageResolution, creds []pullsecret.Credential) (why string, retry bool, err error) {
	d, ok := r.Resolver.(Describer)
	if !ok {
		return "", false, nil
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
			unsized, retry = append(unsized, errs[i].Error()), true
		default:
			res.Bytes, sizes[t.digest] = descs[i].Bytes, descs[i].Bytes
		}
	}
	if len(unsized) > 0 {
		return truncate(fmt.Sprintf("spec.quotas.bytesPerNode: PrePullPolicy %s bounds the bytes namespace %s holds on a node, and the controller cannot size %s",
			pol.Name, l.Namespace, strings.Join(unsized, "; ")), 1024), retry, nil
	}
	if !bound {
		return "", false, nil
	}
	why, err = r.bytesOver(ctx, l, pol, sizes)
	return why, false, err
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
//
// On a registry host with a budget of pulls an hour (--peers), where a
// registry may count a manifest read as a pull (Docker Hub does, two reads
// to a pull), the controller reads only to size, and those reads are
// pulls of the budget: a read past it waits for the hour.
func (r *Reconciler) description(ctx context.Context, d Describer, digestRef string, creds []pullsecret.Credential, size bool) (Description, error) {
	if v, ok := r.described.Get(digestRef); ok {
		if got := v.(Description); got.Sized || !size {
			return got, nil
		}
	}
	var budget RegistryBudget
	host := registryHost(digestRef)
	if r.Peers != nil {
		budget = r.Peers.budgetOf(host)
	}
	if budget.PerHour > 0 {
		if !size {
			return Description{}, nil
		}
		if msg := r.router.charge(host, budget, r.Clock.Now()); msg != "" {
			return Description{}, fmt.Errorf("%s: not read: %s (a read of a manifest may count as a pull there)", digestRef, msg)
		}
	}
	got, err := d.Describe(ctx, digestRef, creds, size)
	if budget.PerHour > 0 && got.Reads > 2 {
		r.router.count(host, (got.Reads+1)/2-1, r.Clock.Now())
	}
	if err == nil {
		r.described.Add(digestRef, got)
	}
	return got, err
}
