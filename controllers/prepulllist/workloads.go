package prepulllist

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/imageref"
)

// Images from workloads. A list with spec.workloads adds the container and
// init container images of the pod templates its selector picks in its own
// namespace. The controller's cache holds every workload of the cluster
// stripped by a transform to what discovery reads (labels, owners, and of
// the pod template the images, pull policies, pull secrets and service
// account), so its memory grows with the number of workloads by a few
// hundred bytes each, not by their whole objects. What was found is kept
// in the list's status.discovered, with the time an image stopped being
// used, so that its grace period survives a restart of the controller.

// workloadKinds are the kinds discovery reads, each with its object, how to
// find its pod template, and whether an object of it is read through its
// owner instead (a Deployment's ReplicaSets, a CronJob's Jobs, a
// controller's Pods).
var workloadKinds = []struct {
	kind     prepullv1.WorkloadKind
	object   func() client.Object
	list     func() client.ObjectList
	items    func(client.ObjectList) []client.Object
	template func(client.Object) *corev1.PodTemplateSpec
	ownedBy  string
}{
	{prepullv1.KindDeployment, func() client.Object { return &appsv1.Deployment{} }, func() client.ObjectList { return &appsv1.DeploymentList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*appsv1.DeploymentList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.Deployment).Spec.Template }, ""},
	{prepullv1.KindStatefulSet, func() client.Object { return &appsv1.StatefulSet{} }, func() client.ObjectList { return &appsv1.StatefulSetList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*appsv1.StatefulSetList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.StatefulSet).Spec.Template }, ""},
	{prepullv1.KindDaemonSet, func() client.Object { return &appsv1.DaemonSet{} }, func() client.ObjectList { return &appsv1.DaemonSetList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*appsv1.DaemonSetList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.DaemonSet).Spec.Template }, ""},
	{prepullv1.KindReplicaSet, func() client.Object { return &appsv1.ReplicaSet{} }, func() client.ObjectList { return &appsv1.ReplicaSetList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*appsv1.ReplicaSetList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*appsv1.ReplicaSet).Spec.Template }, "Deployment"},
	{prepullv1.KindJob, func() client.Object { return &batchv1.Job{} }, func() client.ObjectList { return &batchv1.JobList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*batchv1.JobList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec { return &o.(*batchv1.Job).Spec.Template }, "CronJob"},
	{prepullv1.KindCronJob, func() client.Object { return &batchv1.CronJob{} }, func() client.ObjectList { return &batchv1.CronJobList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*batchv1.CronJobList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec {
			return &o.(*batchv1.CronJob).Spec.JobTemplate.Spec.Template
		}, ""},
	{prepullv1.KindPod, func() client.Object { return &corev1.Pod{} }, func() client.ObjectList { return &corev1.PodList{} },
		func(l client.ObjectList) []client.Object { return ptrs(l.(*corev1.PodList).Items) },
		func(o client.Object) *corev1.PodTemplateSpec {
			p := o.(*corev1.Pod)
			return &corev1.PodTemplateSpec{Spec: p.Spec}
		}, "*"},
}

func ptrs[T any, P interface {
	*T
	client.Object
}](items []T) []client.Object {
	out := make([]client.Object, len(items))
	for i := range items {
		out[i] = P(&items[i])
	}
	return out
}

// slimWorkload is the transform of the cache for every workload kind: the
// object with its metadata's name, namespace, UID, version, labels and
// owners, and of its pod template what discovery reads.
func slimWorkload(obj any) (any, error) {
	o, ok := obj.(client.Object)
	if !ok {
		return obj, nil
	}
	meta := metav1.ObjectMeta{Name: o.GetName(), Namespace: o.GetNamespace(), UID: o.GetUID(),
		ResourceVersion: o.GetResourceVersion(), Labels: o.GetLabels(), OwnerReferences: o.GetOwnerReferences(),
		DeletionTimestamp: o.GetDeletionTimestamp()}
	switch w := o.(type) {
	case *appsv1.Deployment:
		return &appsv1.Deployment{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: appsv1.DeploymentSpec{Template: slimTemplate(w.Spec.Template)}}, nil
	case *appsv1.StatefulSet:
		return &appsv1.StatefulSet{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: appsv1.StatefulSetSpec{Template: slimTemplate(w.Spec.Template)}}, nil
	case *appsv1.DaemonSet:
		return &appsv1.DaemonSet{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: appsv1.DaemonSetSpec{Template: slimTemplate(w.Spec.Template)}}, nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: appsv1.ReplicaSetSpec{Template: slimTemplate(w.Spec.Template)}}, nil
	case *batchv1.Job:
		return &batchv1.Job{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: batchv1.JobSpec{Template: slimTemplate(w.Spec.Template)}}, nil
	case *batchv1.CronJob:
		return &batchv1.CronJob{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: batchv1.CronJobSpec{
			JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: slimTemplate(w.Spec.JobTemplate.Spec.Template)}}}}, nil
	case *corev1.Pod:
		return &corev1.Pod{TypeMeta: w.TypeMeta, ObjectMeta: meta, Spec: slimTemplate(corev1.PodTemplateSpec{Spec: w.Spec}).Spec}, nil
	}
	return obj, nil
}

func slimTemplate(t corev1.PodTemplateSpec) corev1.PodTemplateSpec {
	slim := func(cs []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, 0, len(cs))
		for _, c := range cs {
			out = append(out, corev1.Container{Name: c.Name, Image: c.Image, ImagePullPolicy: c.ImagePullPolicy})
		}
		return out
	}
	var affinity *corev1.Affinity
	if a := t.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution}}
	}
	var volumes []corev1.Volume
	for _, v := range t.Spec.Volumes {
		if v.Image != nil {
			volumes = append(volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{Image: v.Image}})
		}
	}
	return corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		InitContainers:     slim(t.Spec.InitContainers),
		Containers:         slim(t.Spec.Containers),
		Volumes:            volumes,
		ImagePullSecrets:   t.Spec.ImagePullSecrets,
		ServiceAccountName: t.Spec.ServiceAccountName,
		NodeSelector:       t.Spec.NodeSelector,
		Affinity:           affinity,
		Tolerations:        t.Spec.Tolerations,
	}}
}

// slimServiceAccount is the cache's transform of ServiceAccounts: their
// name and pull secrets, all discovery reads of them.
func slimServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	return &corev1.ServiceAccount{TypeMeta: sa.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: sa.Name, Namespace: sa.Namespace,
		UID: sa.UID, ResourceVersion: sa.ResourceVersion}, ImagePullSecrets: sa.ImagePullSecrets}, nil
}

func pullSecretsOf(o client.Object) []corev1.LocalObjectReference {
	return o.(*corev1.ServiceAccount).ImagePullSecrets
}

// containersOf are the init containers and containers of spec.
func containersOf(spec *corev1.PodSpec) []corev1.Container {
	return append(slices.Clone(spec.InitContainers), spec.Containers...)
}

// imageUse is one image a pod spec pulls: a container's, or an image
// volume's (an OCI image or artifact mounted read only, KEP-4639).
type imageUse struct {
	// what says which: "container app", "image volume weights".
	what, image string
	policy      corev1.PullPolicy
	// key names it among the spec's containers, for what pods say of it.
	key string
}

// imagesPulledBy are the images spec pulls: its containers' and its image
// volumes'.
func imagesPulledBy(spec *corev1.PodSpec) []imageUse {
	var out []imageUse
	for _, c := range containersOf(spec) {
		out = append(out, imageUse{what: "container " + c.Name, image: c.Image, policy: c.ImagePullPolicy, key: c.Name})
	}
	for _, v := range spec.Volumes {
		if v.Image != nil && v.Image.Reference != "" {
			out = append(out, imageUse{what: "image volume " + v.Name, image: v.Image.Reference, policy: v.Image.PullPolicy})
		}
	}
	return out
}

// discovery is what a list's workloads hold now.
type discovery struct {
	workloads int
	// images are the images found, by reference as written.
	images map[string]*found
	// secrets are the pull secrets the workloads use, with their users.
	secrets map[string][]string
}

type found struct {
	workloads []string
	advice    []string
	// specs are the pod specs of the workloads using it, for placement.
	specs []*corev1.PodSpec
}

// discover reads the workloads l selects, in l's namespace.
func (r *Reconciler) discover(ctx context.Context, l *prepullv1.PrePullList) (discovery, error) {
	d := discovery{images: map[string]*found{}, secrets: map[string][]string{}}
	src := l.Spec.Workloads
	sel := labels.Everything()
	if src.Selector != nil {
		s, err := metav1.LabelSelectorAsSelector(src.Selector)
		if err != nil {
			return d, fmt.Errorf("spec.workloads.selector: %w", err)
		}
		sel = s
	}
	rewritten, err := r.rewrittenToAlways(ctx, l.Namespace)
	if err != nil {
		return d, err
	}
	serviceAccounts := map[string][]corev1.LocalObjectReference{}
	for _, k := range workloadKinds {
		if len(src.Kinds) > 0 && !slices.Contains(src.Kinds, k.kind) {
			continue
		}
		list := k.list()
		if err := r.List(ctx, list, client.InNamespace(l.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return d, fmt.Errorf("list %ss: %w", k.kind, err)
		}
		for _, o := range k.items(list) {
			if ownedThrough(o, k.ownedBy) || !o.GetDeletionTimestamp().IsZero() {
				continue
			}
			d.workloads++
			name := string(k.kind) + "/" + o.GetName()
			t := k.template(o)
			for _, u := range imagesPulledBy(&t.Spec) {
				f := d.images[u.image]
				if f == nil {
					f = &found{}
					d.images[u.image] = f
				}
				if !slices.Contains(f.workloads, name) {
					f.workloads = append(f.workloads, name)
					f.specs = append(f.specs, &t.Spec)
				}
				if a := pullPolicyAdvice(name, u, u.key != "" && rewritten[name+"/"+u.key]); a != "" {
					f.advice = append(f.advice, a)
				}
			}
			if err := r.secretsOf(ctx, &d, l.Namespace, name, &t.Spec, serviceAccounts); err != nil {
				return d, err
			}
		}
	}
	return d, nil
}

// secretsOf records in d the pull secrets of the workload name's pod spec:
// its own and its service account's (read once a reconcile, in
// serviceAccounts).
func (r *Reconciler) secretsOf(ctx context.Context, d *discovery, ns, name string, spec *corev1.PodSpec, serviceAccounts map[string][]corev1.LocalObjectReference) error {
	for _, s := range spec.ImagePullSecrets {
		d.secrets[s.Name] = appendNew(d.secrets[s.Name], name)
	}
	sa := cmp.Or(spec.ServiceAccountName, "default")
	refs, ok := serviceAccounts[sa]
	if !ok {
		acct := &corev1.ServiceAccount{}
		err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: sa}, acct)
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("read service account %s/%s: %w", ns, sa, err)
		}
		refs = acct.ImagePullSecrets
		serviceAccounts[sa] = refs
	}
	for _, s := range refs {
		d.secrets[s.Name] = appendNew(d.secrets[s.Name], name+" (service account "+sa+")")
	}
	return nil
}

func appendNew(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// ownedThrough reports whether o is read through its owner: a controller
// owner of kind owner ("*": of any kind).
func ownedThrough(o client.Object, owner string) bool {
	if owner == "" {
		return false
	}
	ref := metav1.GetControllerOf(o)
	return ref != nil && (owner == "*" || ref.Kind == owner)
}

// rewrittenToAlways finds, in ns, the containers of workloads whose pods
// run with imagePullPolicy Always: "Kind/name/container", the workload
// being the pod's controller (a ReplicaSet's own controller for a
// Deployment's pods). An admission plugin such as AlwaysPullImages sets it
// on the pods, whatever the template says.
func (r *Reconciler) rewrittenToAlways(ctx context.Context, ns string) (map[string]bool, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := map[string]bool{}
	// A ReplicaSet's Deployment, once per ReplicaSet ("" for none).
	deployments := map[string]string{}
	for i := range pods.Items {
		p := &pods.Items[i]
		ref := metav1.GetControllerOf(p)
		if ref == nil {
			continue
		}
		kind, name := ref.Kind, ref.Name
		if kind == "ReplicaSet" {
			d, ok := deployments[name]
			if !ok {
				rs := &appsv1.ReplicaSet{}
				if err := r.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, rs); err == nil {
					if up := metav1.GetControllerOf(rs); up != nil && up.Kind == "Deployment" {
						d = up.Name
					}
				}
				deployments[name] = d
			}
			if d != "" {
				kind, name = "Deployment", d
			}
		}
		for _, c := range containersOf(&p.Spec) {
			if c.ImagePullPolicy == corev1.PullAlways {
				out[kind+"/"+name+"/"+c.Name] = true
			}
		}
	}
	return out, nil
}

// pullPolicyAdvice says when a container or an image volume contacts the
// registry at every start, pre-pulled or not: its effective pull policy is
// Always.
func pullPolicyAdvice(workload string, u imageUse, onPods bool) string {
	field := "imagePullPolicy"
	if u.key == "" {
		field = "pullPolicy"
	}
	var cause string
	switch {
	case u.policy == corev1.PullAlways && latestTag(u.image):
		cause = field + " Always (the default for the tag latest or no tag)"
	case u.policy == corev1.PullAlways:
		cause = field + " Always in its template"
	case onPods:
		cause = field + " Always on its pods, though not in its template (an admission plugin such as AlwaysPullImages sets it)"
	default:
		return ""
	}
	return fmt.Sprintf("%s %s: %s: it contacts the registry at every start, pre-pulled or not, and fails on a node without one", workload, u.what, cause)
}

// latestTag reports whether image has the tag latest, or no tag and no
// digest, which the runtime reads as latest.
func latestTag(image string) bool {
	w, err := parseWant(image)
	return err == nil && w.latest()
}

// mergeDiscovered is the list's new status.discovered: what d found now,
// and what no workload uses any more, kept until its grace period ends. It
// returns when the next kept image's grace period ends (zero for none).
func mergeDiscovered(prev []prepullv1.DiscoveredImage, d discovery, grace time.Duration, now time.Time) ([]prepullv1.DiscoveredImage, time.Time) {
	var out []prepullv1.DiscoveredImage
	for image, f := range d.images {
		di := prepullv1.DiscoveredImage{Image: truncate(image, 512), Workloads: f.workloads}
		slices.Sort(di.Workloads)
		if len(di.Workloads) > 8 {
			di.Workloads = di.Workloads[:8]
		}
		if _, err := imageref.Parse(image); err != nil {
			di.Message = truncate(fmt.Sprintf("%s: %v", strings.Join(di.Workloads, ", "), err), 1024)
		}
		slices.Sort(f.advice)
		di.Warning = truncate(strings.Join(f.advice, "; "), 1024)
		out = append(out, di)
	}
	var next time.Time
	stamp := metav1.NewTime(now).Rfc3339Copy()
	for _, p := range prev {
		if _, used := d.images[p.Image]; used {
			continue
		}
		if p.UnusedSince == nil {
			p.UnusedSince = &stamp
		}
		ends := p.UnusedSince.Add(grace)
		if !now.Before(ends) {
			continue
		}
		if next.IsZero() || ends.Before(next) {
			next = ends
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b prepullv1.DiscoveredImage) int { return strings.Compare(a.Image, b.Image) })
	if len(out) > 256 {
		out = out[:256]
	}
	return out, next
}

// imagesOf is every image l makes present: spec.images, then the images
// its workloads use (or used within their grace period) that spec.images
// does not name and that parse.
func imagesOf(l *prepullv1.PrePullList) []string {
	out := make([]string, 0, len(l.Spec.Images)+len(l.Status.Discovered))
	for _, i := range l.Spec.Images {
		out = append(out, i.Image)
	}
	for _, d := range l.Status.Discovered {
		if d.Message == "" && !slices.Contains(out, d.Image) {
			out = append(out, d.Image)
		}
	}
	return out
}

// listDiscovery is a reconcile's discovery: what the workloads hold, and
// the list's status.discovered and discovered pull secrets made from it.
type listDiscovery struct {
	discovery
	status      []prepullv1.DiscoveredImage
	secretNames []string
}

// found is what the workloads of a list with spec.workloads hold, nil for
// a list without.
func (d listDiscovery) found(l *prepullv1.PrePullList) *discovery {
	if l.Spec.Workloads == nil {
		return nil
	}
	return &d.discovery
}

// discovered runs l's discovery, from the status last computed for l. A
// list without spec.workloads discovers nothing and keeps nothing. It
// returns when the next kept image's grace period ends.
func (r *Reconciler) discovered(ctx context.Context, l *prepullv1.PrePullList) (listDiscovery, time.Time, error) {
	if l.Spec.Workloads == nil {
		return listDiscovery{}, time.Time{}, nil
	}
	d, err := r.discover(ctx, l)
	if err != nil {
		return listDiscovery{}, time.Time{}, err
	}
	grace := prepullv1.DefaultGracePeriod
	if g := l.Spec.Workloads.GracePeriod; g != nil {
		grace = g.Duration
	}
	out := listDiscovery{discovery: d}
	var ends time.Time
	out.status, ends = mergeDiscovered(r.lists.previous(l).Discovered, d, grace, r.Clock.Now())
	for name := range d.secrets {
		out.secretNames = append(out.secretNames, name)
	}
	slices.Sort(out.secretNames)
	if len(out.secretNames) > 16 {
		out.secretNames = out.secretNames[:16]
	}
	return out, ends, nil
}
