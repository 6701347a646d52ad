// Package deploy holds the manifests that install prepull: the kustomize
// base in this directory and the Helm chart in chart/prepull. Its tests hold
// the two equal.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"prepull.io/prepull/e2e/testground"
)

const chart = "chart/prepull"

// TestChartRendersTheKustomizeBase renders the chart with its default
// values, CRDs included, and compares it object by object with the
// kustomize base: the same objects, and each the same in every field. It
// does the same for the local cluster's overlay and its Helm values, so the
// e2e suite (Helm) and make demo (kustomize) install the same prepull.
func TestChartRendersTheKustomizeBase(t *testing.T) {
	for _, c := range []struct{ name, kustomization, values string }{
		{"defaults", ".", ""},
		{"local cluster", "../hack/cluster/overlay", "../hack/cluster/values.yaml"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"template", "prepull", chart, "--include-crds"}
			if c.values != "" {
				args = append(args, "--values", c.values)
			}
			same(t, objects(t, run(t, "kubectl", "kustomize", c.kustomization)), objects(t, run(t, "helm", args...)))
		})
	}
}

func same(t *testing.T, kustomized, rendered map[string]*unstructured.Unstructured) {
	t.Helper()
	if len(kustomized) < 10 {
		t.Fatalf("kubectl kustomize rendered %d objects; the base has more", len(kustomized))
	}
	for key, want := range kustomized {
		got, ok := rendered[key]
		if !ok {
			t.Errorf("%s: in the kustomize base, not rendered by the chart", key)
			continue
		}
		if d := cmp.Diff(want.Object, got.Object); d != "" {
			t.Errorf("%s differs from the kustomize base (-kustomize +chart):\n%s", key, d)
		}
	}
	for key := range rendered {
		if _, ok := kustomized[key]; !ok {
			t.Errorf("%s: rendered by the chart, not in the kustomize base", key)
		}
	}
}

// TestChartValues renders the chart with the values a k3s operator sets and
// checks that each reaches the object it is meant for.
func TestChartValues(t *testing.T) {
	out := objects(t, run(t, "helm", "template", "prepull", chart,
		"--set", "namespace.name=ops", "--set", "namespace.create=false",
		"--set", "image.repository=127.0.0.1:5000/prepull", "--set", "image.tag=v1.2.3",
		"--set", "agent.runtimeSocket=/run/k3s/containerd/containerd.sock",
		"--set", "agent.imageFilesystem=/var/lib/rancher/k3s/agent/containerd/io.containerd.snapshotter.v1.overlayfs",
		"--set", "agent.downloadsSizeLimit=40Gi",
		"--set", "agent.credentialProviders.config=/etc/eks/image-credential-provider/config.json",
		"--set", "agent.credentialProviders.binDir=/etc/eks/image-credential-provider",
		"--set", "agent.containerdConfig=/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
		"--set", "agent.kubeletConfig=/var/lib/kubelet/config.yaml",
		"--set", "agent.priorityClass.create=false", "--set", "agent.priorityClass.name=system-node-critical",
		"--set", "agent.extraArgs={--max-concurrent-pulls=4}",
		"--set", "controller.replicas=3", "--set", "controller.extraArgs={--startup-taint=prepull.io/images-not-ready}",
		"--set", "metrics.serviceMonitor.enabled=true",
		"--set-json", `tenancy.policies={"team-a":{"nodeSelector":{"matchLabels":{"pool":"a"}},"quotas":{"lists":5,"bytesPerNode":"40Gi"}}}`))
	if _, ok := out["v1/Namespace//ops"]; ok {
		t.Error("namespace.create=false still renders the Namespace")
	}
	if _, ok := out["scheduling.k8s.io/v1/PriorityClass//prepull-agent"]; ok {
		t.Error("agent.priorityClass.create=false still renders the PriorityClass")
	}
	ds, ok := out["apps/v1/DaemonSet/ops/prepull-agent"]
	if !ok {
		t.Fatalf("no agent DaemonSet in namespace ops; rendered: %v", keys(out))
	}
	checks := []struct {
		obj    *unstructured.Unstructured
		path   []string
		want   string
		substr bool
	}{
		{ds, []string{"spec", "template", "spec", "priorityClassName"}, "system-node-critical", false},
		{ds, []string{"spec", "template", "spec", "containers"}, "image:127.0.0.1:5000/prepull:v1.2.3", true},
		{ds, []string{"spec", "template", "spec", "containers"}, "--max-concurrent-pulls=4", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "path:/run/k3s/containerd/containerd.sock", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "path:/var/lib/rancher/k3s/agent/containerd/io.containerd.snapshotter.v1.overlayfs", true},
		{ds, []string{"spec", "template", "spec", "containers"}, "mountPath:/var/lib/rancher/k3s/agent/containerd/io.containerd.snapshotter.v1.overlayfs", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "sizeLimit:40Gi", true},
		{ds, []string{"spec", "template", "spec", "containers"}, "--image-credential-provider-config=/etc/eks/image-credential-provider/config.json", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "path:/etc/eks/image-credential-providertype:Directory", true},
		{ds, []string{"spec", "template", "spec", "containers"}, "--containerd-config=/var/lib/rancher/k3s/agent/etc/containerd/config.toml", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "path:/var/lib/rancher/k3s/agent/etc/containerdtype:DirectoryOrCreate", true},
		{ds, []string{"spec", "template", "spec", "containers"}, "--kubelet-config=/var/lib/kubelet/config.yaml", true},
		{ds, []string{"spec", "template", "spec", "volumes"}, "path:/var/lib/kubelet/config.yamltype:File", true},
		{out["apps/v1/Deployment/ops/prepull-controller"], []string{"spec", "template", "spec", "containers"}, "--startup-taint=prepull.io/images-not-ready", true},
		{out["rbac.authorization.k8s.io/v1/Role/ops/prepull-agent"], []string{"metadata", "namespace"}, "ops", false},
		{out["rbac.authorization.k8s.io/v1/ClusterRoleBinding//prepull-agent"], []string{"subjects"}, "namespace:ops", true},
		{out["monitoring.coreos.com/v1/ServiceMonitor/ops/prepull-controller"], []string{"spec", "endpoints"}, "port:metrics", true},
		{out["prepull.io/v1alpha1/PrePullPolicy//team-a"], []string{"spec", "nodeSelector"}, "map[matchLabels:map[pool:a]]", false},
		{out["prepull.io/v1alpha1/PrePullPolicy//team-a"], []string{"spec", "quotas"}, "map[bytesPerNode:40Gilists:5]", false},
		{out["prepull.io/v1alpha1/PrePullPolicy//default"], []string{"spec", "quotas"}, "map[imagesPerNode:100lists:20]", false},
	}
	for _, c := range checks {
		if c.obj == nil {
			t.Errorf("an object the check on %v needs is not rendered; rendered: %v", c.path, keys(out))
			continue
		}
		v, found, _ := unstructured.NestedFieldNoCopy(c.obj.Object, c.path...)
		got := strings.ReplaceAll(fmt.Sprint(v), " ", "")
		if !found || (c.substr && !strings.Contains(got, strings.ReplaceAll(c.want, " ", ""))) || (!c.substr && got != c.want) {
			t.Errorf("%s %s: %s, want %s", c.obj.GetKind(), strings.Join(c.path, "."), got, c.want)
		}
	}
	if n := out["apps/v1/Deployment/ops/prepull-controller"]; n != nil {
		if r, _, _ := unstructured.NestedFieldNoCopy(n.Object, "spec", "replicas"); fmt.Sprint(r) != "3" {
			t.Errorf("controller replicas %v, want 3", r)
		}
	}
}

// TestChartRefusesAServiceMonitorWithoutItsService checks a contradiction
// in the values is an error naming them, not a ServiceMonitor that selects
// nothing.
func TestChartRefusesAServiceMonitorWithoutItsService(t *testing.T) {
	cmd := exec.Command(testground.Binary(t, "helm"), "template", "prepull", chart,
		"--set", "metrics.service=false", "--set", "metrics.serviceMonitor.enabled=true")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "metrics.serviceMonitor.enabled needs metrics.service") {
		t.Fatalf("helm template: err %v, output:\n%s", err, out)
	}
}

// TestChartRefusesAPolicyNamedDefault: tenancy.policies may not replace
// the default PrePullPolicy (tenancy.open is the way to open it).
func TestChartRefusesAPolicyNamedDefault(t *testing.T) {
	cmd := exec.Command(testground.Binary(t, "helm"), "template", "prepull", chart,
		"--set-json", `tenancy.policies={"default":{"allowRemove":true}}`)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "tenancy.policies.default") {
		t.Fatalf("helm template: err %v, output:\n%s", err, out)
	}
}

// TestChartLint runs helm lint, strict, on the chart.
func TestChartLint(t *testing.T) {
	out := run(t, "helm", "lint", "--strict", chart)
	if !strings.Contains(string(out), "0 chart(s) failed") {
		t.Fatalf("helm lint:\n%s", out)
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(testground.Binary(t, name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// objects decodes a YAML stream into its objects, keyed by
// apiVersion/kind/namespace/name.
func objects(t *testing.T, stream []byte) map[string]*unstructured.Unstructured {
	t.Helper()
	out := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		key := u.GetAPIVersion() + "/" + u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
		if _, dup := out[key]; dup {
			t.Fatalf("%s rendered twice", key)
		}
		out[key] = u
	}
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestPodsRunConfined: every container prepull runs (the controller's and
// each node's agent) runs under the runtime's default seccomp profile,
// without privilege escalation and with every capability dropped; the
// end-to-end tests run them so on real kubelets.
func TestPodsRunConfined(t *testing.T) {
	checked := 0
	for key, o := range objects(t, run(t, "kubectl", "kustomize", ".")) {
		if k := o.GetKind(); k != "Deployment" && k != "DaemonSet" {
			continue
		}
		podProfile, _, _ := unstructured.NestedString(o.Object, "spec", "template", "spec", "securityContext", "seccompProfile", "type")
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			cm, _ := c.(map[string]any)
			name, _, _ := unstructured.NestedString(cm, "name")
			profile, _, _ := unstructured.NestedString(cm, "securityContext", "seccompProfile", "type")
			escalation, found, _ := unstructured.NestedBool(cm, "securityContext", "allowPrivilegeEscalation")
			drop, _, _ := unstructured.NestedStringSlice(cm, "securityContext", "capabilities", "drop")
			if profile == "" {
				profile = podProfile
			}
			if profile != "RuntimeDefault" {
				t.Errorf("%s, container %s: seccomp profile %q, want RuntimeDefault", key, name, profile)
			}
			if !found || escalation {
				t.Errorf("%s, container %s: allowPrivilegeEscalation is not false", key, name)
			}
			if !slices.Contains(drop, "ALL") {
				t.Errorf("%s, container %s: capabilities dropped %v, want ALL", key, name, drop)
			}
			checked++
		}
	}
	if checked < 2 {
		t.Fatalf("%d containers checked: the base has the controller's and the agent's", checked)
	}
}

// TestAgentTakesOnlyWhatItNeeds: of the node, the agent mounts writable only
// the runtime's socket, and of the runtime's root only the image
// filesystem; its temporary directory has a size limit; its metrics listen
// on the pod's own address, not on every interface of the host; and every
// image is a versioned tag.
func TestAgentTakesOnlyWhatItNeeds(t *testing.T) {
	out := objects(t, run(t, "kubectl", "kustomize", "."))
	ds := out["apps/v1/DaemonSet/prepull-system/prepull-agent"]
	if ds == nil {
		t.Fatalf("no agent DaemonSet; rendered: %v", keys(out))
	}
	var spec corev1.PodSpec
	raw, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		t.Fatal(err)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.HostPath != nil && v.HostPath.Path == "/var/lib/containerd" {
			t.Errorf("volume %s mounts all of the runtime's root", v.Name)
		}
		if v.EmptyDir != nil && v.EmptyDir.SizeLimit == nil {
			t.Errorf("emptyDir %s has no size limit", v.Name)
		}
	}
	c := spec.Containers[0]
	for _, m := range c.VolumeMounts {
		v := volumes[m.Name]
		if v.HostPath != nil && !m.ReadOnly && v.HostPath.Type != nil && *v.HostPath.Type != corev1.HostPathSocket {
			t.Errorf("host path %s is mounted writable", v.HostPath.Path)
		}
	}
	if !slices.Contains(c.Args, "--metrics-bind-address=[$(POD_IP)]:8083") {
		t.Errorf("args %v: want the metrics on the pod's own address", c.Args)
	}
	if i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }); i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("env %v: want POD_IP from status.podIP", c.Env)
	}
	for key, o := range out {
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			img, _, _ := unstructured.NestedString(c.(map[string]any), "image")
			if _, tag, ok := strings.Cut(img, ":"); !ok || tag == "latest" {
				t.Errorf("%s: image %q, want a versioned tag", key, img)
			}
		}
	}
}

// TestControllerReadsSecretsOnlyByName: outside its own namespace, the
// controller may get a Secret by name, and not list or watch Secrets,
// which would give it every Secret's data in the cluster.
func TestControllerReadsSecretsOnlyByName(t *testing.T) {
	out := objects(t, run(t, "kubectl", "kustomize", "."))
	role := out["rbac.authorization.k8s.io/v1/ClusterRole//prepull-controller"]
	if role == nil {
		t.Fatalf("no controller ClusterRole; rendered: %v", keys(out))
	}
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	found := false
	for _, r := range rules {
		rm := r.(map[string]any)
		resources, _, _ := unstructured.NestedStringSlice(rm, "resources")
		verbs, _, _ := unstructured.NestedStringSlice(rm, "verbs")
		if slices.Contains(resources, "secrets") || slices.Contains(resources, "*") {
			found = true
			if !slices.Equal(verbs, []string{"get"}) {
				t.Errorf("the ClusterRole grants %v on secrets, want get alone", verbs)
			}
		}
	}
	if !found {
		t.Errorf("the ClusterRole does not let the controller read a list's pull secret by name")
	}
}
