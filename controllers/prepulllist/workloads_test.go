package prepulllist_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
)

// podSpec is a pod spec of one container image, and an init container
// when init is not "".
func podSpec(image, init string) corev1.PodSpec {
	s := corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: image}}}
	if init != "" {
		s.InitContainers = []corev1.Container{{Name: "init", Image: init}}
	}
	return s
}

func template(labels map[string]string, spec corev1.PodSpec) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}
}

func deployment(ns, name string, labels map[string]string, spec corev1.PodSpec) *appsv1.Deployment {
	sel := map[string]string{"workload": name}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: template(sel, spec)}}
}

// discoveredOf is the list's status.discovered entry of image, or nil.
func discoveredOf(l *prepullv1.PrePullList, image string) *prepullv1.DiscoveredImage {
	for i := range l.Status.Discovered {
		if l.Status.Discovered[i].Image == image {
			return &l.Status.Discovered[i]
		}
	}
	return nil
}

// TestWorkloads discovers images from real Deployments, StatefulSets,
// DaemonSets, CronJobs and Pods on a real API server.
func TestWorkloads(t *testing.T) {
	e := setup(t)
	ns := e.namespace(t, "wl")
	other := e.namespace(t, "wl-other")
	shop := map[string]string{"group": "shop"}
	pool := map[string]string{"pool": "wl"}
	e.node(t, "wl-1", pool)
	push := func(repo string) testground.Pushed { return e.public.MustPushRandom(t, repo, 1024, 1) }
	app1, app2, initImg := push("wl/app:v1"), push("wl/app:v2"), push("wl/init:v1")
	cron, sts, ds, pod := push("wl/cron:v1"), push("wl/sts:v1"), push("wl/ds:v1"), push("wl/pod:v1")
	skipped, elsewhere := push("wl/skipped:v1"), push("wl/elsewhere:v1")
	latest := push("wl/latest:latest")

	// Pull secrets: the Deployment's own, and its service account's.
	cfg := []byte(fmt.Sprintf(`{"auths":{%q:{"username":"u","password":"p"}}}`, e.private.Host))
	for _, name := range []string{"dep-cred", "sa-cred"} {
		e.mustCreate(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: cfg}})
	}
	e.mustCreate(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "builder"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "sa-cred"}}})

	webSpec := podSpec(app1.Tag, initImg.Tag)
	webSpec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "dep-cred"}}
	webSpec.ServiceAccountName = "builder"
	web := deployment(ns, "web", shop, webSpec)
	e.mustCreate(t, web)
	stsSel := map[string]string{"workload": "db"}
	e.mustCreate(t, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db", Labels: shop},
		Spec: appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: stsSel}, Template: template(stsSel, podSpec(sts.Tag, ""))}})
	dsSel := map[string]string{"workload": "agent"}
	e.mustCreate(t, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent", Labels: shop},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: dsSel}, Template: template(dsSel, podSpec(ds.Tag, ""))}})
	cronSpec := podSpec(cron.Tag, "")
	cronSpec.RestartPolicy = corev1.RestartPolicyOnFailure
	nightly := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nightly", Labels: shop},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template(nil, cronSpec)}}}}
	e.mustCreate(t, nightly)
	e.mustCreate(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "debug", Labels: shop}, Spec: podSpec(pod.Tag, "")})
	// Not selected: no label, or another namespace.
	e.mustCreate(t, deployment(ns, "unlabelled", nil, podSpec(skipped.Tag, "")))
	e.mustCreate(t, deployment(other, "web", shop, podSpec(elsewhere.Tag, "")))
	// Bad input and advice: a reference that does not parse; the tag latest
	// (its pull policy defaulted to Always); a secret that does not exist.
	e.mustCreate(t, deployment(ns, "broken", shop, podSpec("UPPER/Case:x", "")))
	e.mustCreate(t, deployment(ns, "fresh", shop, podSpec(latest.Tag, "")))
	needsSpec := podSpec(app1.Tag, "")
	needsSpec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "absent"}}
	e.mustCreate(t, deployment(ns, "needs-secret", shop, needsSpec))
	// A Deployment whose template says IfNotPresent, and whose pod (through
	// its ReplicaSet) runs with Always, as AlwaysPullImages makes it.
	rw := push("wl/rewritten:v1")
	rwSpec := podSpec(rw.Tag, "")
	rwSpec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
	rewritten := deployment(ns, "rewritten", shop, rwSpec)
	e.mustCreate(t, rewritten)
	controllerOf := func(kind, name string, uid types.UID) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: uid, Controller: ptr.To(true)}}
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rewritten-1", Labels: shop,
		OwnerReferences: controllerOf("Deployment", "rewritten", rewritten.UID)},
		Spec: appsv1.ReplicaSetSpec{Selector: rewritten.Spec.Selector, Template: rewritten.Spec.Template}}
	e.mustCreate(t, rs)
	podSpecAlways := podSpec(rw.Tag, "")
	podSpecAlways.Containers[0].ImagePullPolicy = corev1.PullAlways
	e.mustCreate(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rewritten-1-a", Labels: shop,
		OwnerReferences: controllerOf("ReplicaSet", "rewritten-1", rs.UID)}, Spec: podSpecAlways})

	// An image volume (KEP-4639): model weights mounted read only, pulled
	// on every start.
	weights, model := push("wl/weights:v1"), push("wl/model:v1")
	modelSpec := podSpec(model.Tag, "")
	modelSpec.Volumes = []corev1.Volume{{Name: "weights", VolumeSource: corev1.VolumeSource{
		Image: &corev1.ImageVolumeSource{Reference: weights.Tag, PullPolicy: corev1.PullAlways}}}}
	e.mustCreate(t, deployment(ns, "model", shop, modelSpec))

	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "discover"},
		Spec: prepullv1.PrePullListSpec{NodeSelector: selector(pool), Workloads: &prepullv1.WorkloadSource{
			Selector: &metav1.LabelSelector{MatchLabels: shop}, GracePeriod: &metav1.Duration{Duration: 10 * time.Minute}}}}
	e.mustCreate(t, l)

	want := map[string][]string{
		app1.Tag: {"Deployment/needs-secret", "Deployment/web"}, initImg.Tag: {"Deployment/web"},
		sts.Tag: {"StatefulSet/db"}, ds.Tag: {"DaemonSet/agent"}, cron.Tag: {"CronJob/nightly"}, pod.Tag: {"Pod/debug"},
		latest.Tag: {"Deployment/fresh"}, rw.Tag: {"Deployment/rewritten"},
		model.Tag: {"Deployment/model"}, weights.Tag: {"Deployment/model"},
	}
	digests := map[string]string{app1.Tag: app1.Digest, initImg.Tag: initImg.Digest, sts.Tag: sts.Digest,
		ds.Tag: ds.Digest, cron.Tag: cron.Digest, pod.Tag: pod.Digest, latest.Tag: latest.Digest, rw.Tag: rw.Digest,
		model.Tag: model.Digest, weights.Tag: weights.Digest}
	eventually(t, "every selected workload's images discovered and handed", func() error {
		got := e.getList(t, l)
		for image, workloads := range want {
			d := discoveredOf(got, image)
			if d == nil || !slices.Equal(d.Workloads, workloads) || d.Message != "" || d.UnusedSince != nil {
				return fmt.Errorf("%s: %+v, want used by %v", image, d, workloads)
			}
			if e.entry("wl-1", digests[image]) == nil {
				return fmt.Errorf("%s not handed to the node", image)
			}
		}
		return nil
	})
	got := e.getList(t, l)
	for _, notWanted := range []string{skipped.Tag, elsewhere.Tag} {
		if discoveredOf(got, notWanted) != nil || e.entry("wl-1", digestOf(notWanted)) != nil {
			t.Errorf("%s discovered: from an unselected workload or another namespace", notWanted)
		}
	}
	if d := discoveredOf(got, "UPPER/Case:x"); d == nil || !strings.Contains(d.Message, "Deployment/broken") {
		t.Errorf("the unparseable reference: %+v, want a message naming Deployment/broken", d)
	}
	if d := discoveredOf(got, latest.Tag); d == nil || !strings.Contains(d.Warning, "Deployment/fresh container main: imagePullPolicy Always") {
		t.Errorf("the tag latest: %+v, want the pull-policy advice naming the workload", d)
	}
	if d := discoveredOf(got, weights.Tag); d == nil || !strings.Contains(d.Warning, "Deployment/model image volume weights: pullPolicy Always in its template") {
		t.Errorf("the image volume pulled on every start: %+v, want the advice naming the workload and the volume", d)
	}
	if d := discoveredOf(got, rw.Tag); d == nil || !strings.Contains(d.Warning, "Deployment/rewritten container main: imagePullPolicy Always on its pods") {
		t.Errorf("the pod rewritten to Always: %+v, want the advice naming the workload and the cause", d)
	}
	if !slices.Equal(got.Status.DiscoveredPullSecrets, []string{"absent", "dep-cred", "sa-cred"}) {
		t.Errorf("discovered pull secrets %v", got.Status.DiscoveredPullSecrets)
	}
	for _, s := range []string{"dep-cred", "sa-cred"} {
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: prepullv1.MirrorSecretName(ns, "discover", s)}, &corev1.Secret{}); err != nil {
			t.Errorf("the workload's secret %s is not mirrored: %v", s, err)
		}
	}
	if c := condition(got, prepullv1.ConditionDiscovered); c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "Deployment/broken") {
		t.Errorf("Discovered %+v", c)
	}
	if c := condition(got, prepullv1.ConditionDegraded); c == nil || c.Reason != prepullv1.ReasonPullSecretUnavailable || !strings.Contains(c.Message, "Deployment/needs-secret") {
		t.Errorf("Degraded %+v, want the missing secret named with its workload", c)
	}
	eventually(t, "an event for the pull-policy advice", func() error {
		if len(e.events(t, ns, prepullv1.ReasonPullPolicyAlways)) == 0 {
			return fmt.Errorf("no %s event", prepullv1.ReasonPullPolicyAlways)
		}
		return nil
	})
	e.agent(t, "wl-1", nil)
	eventually(t, "the list Ready", func() error {
		if c := condition(e.getList(t, l), prepullv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Ready %+v", c)
		}
		return nil
	})

	// The service account gains a pull secret: discovered at once, the
	// list and its workloads untouched.
	e.mustCreate(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sa-cred-2"},
		Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: cfg}})
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sa := &corev1.ServiceAccount{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "builder"}, sa); err != nil {
			return err
		}
		sa.ImagePullSecrets = append(sa.ImagePullSecrets, corev1.LocalObjectReference{Name: "sa-cred-2"})
		return e.c.Update(ctx, sa)
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the service account's new pull secret discovered and mirrored", func() error {
		if got := e.getList(t, l).Status.DiscoveredPullSecrets; !slices.Contains(got, "sa-cred-2") {
			return fmt.Errorf("discovered pull secrets %v", got)
		}
		return e.c.Get(ctx, client.ObjectKey{Namespace: controllerNS, Name: prepullv1.MirrorSecretName(ns, "discover", "sa-cred-2")}, &corev1.Secret{})
	})

	// The template changes: the new image at once, the old one kept for
	// the grace period, then released.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &appsv1.Deployment{}
		if err := e.c.Get(ctx, client.ObjectKeyFromObject(web), cur); err != nil {
			return err
		}
		cur.Spec.Template.Spec.Containers[0].Image = app2.Tag
		return e.c.Update(ctx, cur)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.Delete(ctx, nightly); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new image handed at once, the old ones kept", func() error {
		got := e.getList(t, l)
		if d := discoveredOf(got, app2.Tag); d == nil || e.entry("wl-1", app2.Digest) == nil {
			return fmt.Errorf("the new image: %+v", d)
		}
		if d := discoveredOf(got, cron.Tag); d == nil || d.UnusedSince == nil {
			return fmt.Errorf("the deleted CronJob's image: %+v, want kept with unusedSince", d)
		}
		if d := discoveredOf(got, app1.Tag); d == nil || !slices.Equal(d.Workloads, []string{"Deployment/needs-secret"}) {
			return fmt.Errorf("the old image, still used by another workload: %+v", d)
		}
		return nil
	})
	if !slices.Contains(activeOwners(e.entry("wl-1", cron.Digest)), ns+"/discover") {
		t.Errorf("the deleted CronJob's image left the node before its grace period")
	}
	e.clock.Step(11 * time.Minute)
	touch(t, e, l)
	eventually(t, "released after the grace period", func() error {
		got := e.getList(t, l)
		if d := discoveredOf(got, cron.Tag); d != nil {
			return fmt.Errorf("still discovered: %+v", d)
		}
		if slices.Contains(activeOwners(e.entry("wl-1", cron.Digest)), ns+"/discover") {
			return fmt.Errorf("the node still holds it for the list")
		}
		return nil
	})

	// A selector that matches nothing says so; the list still has a status.
	none := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "none"},
		Spec: prepullv1.PrePullListSpec{NodeSelector: selector(pool), Workloads: &prepullv1.WorkloadSource{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": "nobody"}}}}}
	e.mustCreate(t, none)
	eventually(t, "no workload matches", func() error {
		got := e.getList(t, none)
		c := condition(got, prepullv1.ConditionDiscovered)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != prepullv1.ReasonNoWorkloadsMatch {
			return fmt.Errorf("Discovered %+v", c)
		}
		if condition(got, prepullv1.ConditionReady) == nil {
			return fmt.Errorf("no Ready condition")
		}
		return nil
	})
}

// TestWorkloadPlacement: under placement WorkloadNodes a discovered image
// goes only to the nodes where a workload using it could be scheduled, by
// nodeSelector, required node affinity and tolerations.
func TestWorkloadPlacement(t *testing.T) {
	e := setup(t)
	ns := e.namespace(t, "place")
	pool := map[string]string{"pool": "place"}
	gpuLabels := map[string]string{"pool": "place", "gpu": "true"}
	e.node(t, "place-gpu", gpuLabels)
	e.node(t, "place-cpu", pool)
	tainted := e.node(t, "place-dedicated", gpuLabels)
	tainted.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "ml", Effect: corev1.TaintEffectNoSchedule}}
	if err := e.c.Update(ctx, tainted); err != nil {
		t.Fatal(err)
	}
	push := func(repo string) testground.Pushed { return e.public.MustPushRandom(t, repo, 1024, 1) }
	train, serve, plain := push("place/train:v1"), push("place/serve:v1"), push("place/plain:v1")

	trainSpec := podSpec(train.Tag, "")
	trainSpec.NodeSelector = map[string]string{"gpu": "true"}
	trainSpec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ml", Effect: corev1.TaintEffectNoSchedule}}
	e.mustCreate(t, deployment(ns, "train", nil, trainSpec))
	serveSpec := podSpec(serve.Tag, "")
	serveSpec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "gpu", Operator: corev1.NodeSelectorOpDoesNotExist}}}}}}}
	e.mustCreate(t, deployment(ns, "serve", nil, serveSpec))
	e.mustCreate(t, deployment(ns, "plain", nil, podSpec(plain.Tag, "")))

	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "placed"},
		Spec: prepullv1.PrePullListSpec{NodeSelector: selector(pool), Workloads: &prepullv1.WorkloadSource{
			Selector: &metav1.LabelSelector{}, Placement: prepullv1.PlaceOnWorkloadNodes}}}
	l.Spec.Rollout.MaxConcurrentNodes = intOrString("100%")
	e.mustCreate(t, l)
	want := map[string][]string{
		train.Digest: {"place-dedicated", "place-gpu"},
		serve.Digest: {"place-cpu"},
		plain.Digest: {"place-cpu", "place-gpu"},
	}
	nodes := []string{"place-cpu", "place-dedicated", "place-gpu"}
	eventually(t, "each image on the nodes its workloads can run on, and only there", func() error {
		for digest, on := range want {
			for _, n := range nodes {
				has := slices.Contains(activeOwners(e.entry(n, digest)), ns+"/placed")
				if has != slices.Contains(on, n) {
					var seen []string
					for _, m := range nodes {
						set, _ := e.nodeSet(m)
						seen = append(seen, fmt.Sprintf("%s: %+v", m, set.Spec.Images))
					}
					return fmt.Errorf("%s on %s: %v, want it on %v; nodes:\n%s", digest, n, has, on, strings.Join(seen, "\n"))
				}
			}
		}
		return nil
	})
	for _, n := range nodes {
		e.agent(t, n, nil)
	}
	eventually(t, "Ready on every selected node", func() error {
		got := e.getList(t, l)
		if c := condition(got, prepullv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue || got.Status.Nodes.Ready != 3 {
			return fmt.Errorf("Ready %+v, nodes %+v", c, got.Status.Nodes)
		}
		return nil
	})
}
