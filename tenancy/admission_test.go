package tenancy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/tenancy"
)

var ctx = context.Background()

// applyFile creates every object of a manifest of deploy/.
func applyFile(t *testing.T, c client.Client, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("%s: create %s %s: %v", path, u.GetKind(), u.GetName(), err)
		}
	}
}

func list(ns, name string, mutate func(*prepullv1.PrePullListSpec), images ...string) *prepullv1.PrePullList {
	l := &prepullv1.PrePullList{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, i := range images {
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: i})
	}
	if mutate != nil {
		mutate(&l.Spec)
	}
	return l
}

func gate(d time.Duration) func(*prepullv1.PrePullListSpec) {
	return func(s *prepullv1.PrePullListSpec) {
		s.NodeGate = &prepullv1.NodeGate{Timeout: &metav1.Duration{Duration: d}}
	}
}

func archive(s *prepullv1.PrePullListSpec) {
	s.Source = &prepullv1.ImageSource{Archive: &prepullv1.ArchiveSource{Path: "site.tar", SHA256: strings.Repeat("b", 64)}}
}

func selector(labels map[string]string, exprs ...metav1.LabelSelectorRequirement) func(*prepullv1.PrePullListSpec) {
	return func(s *prepullv1.PrePullListSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchLabels: labels, MatchExpressions: exprs}
	}
}

// TestAdmissionAndControllerAgree: the admission policy of deploy/tenancy.yaml,
// on a real API server, refuses exactly the lists tenancy.Check refuses,
// with a message naming the same policy and field; the default policy of
// deploy/policy.yaml is what a fresh install grants.
func TestAdmissionAndControllerAgree(t *testing.T) {
	cfg, _ := testground.StartAPIServer(t, "../deploy/crd")
	c := testground.APIClient(t, cfg, "plain", "lost")
	for ns, policy := range map[string]string{"team-a": "team-a", "team-b": "team-b"} {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{prepullv1.PolicyLabel: policy}}}
		if err := c.Create(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	applyFile(t, c, "../deploy/tenancy.yaml")

	// No PrePullPolicy at all: every list is refused.
	testground.Eventually(t, time.Minute, "a list refused while no PrePullPolicy exists", func() error {
		l := list("plain", "early", nil, "nginx:1.25")
		if err := c.Create(ctx, l); err == nil {
			_ = c.Delete(ctx, l)
			return errors.New("admitted")
		}
		return nil
	})

	applyFile(t, c, "../deploy/policy.yaml")
	teamA := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}, Spec: prepullv1.PrePullPolicySpec{
		NodeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "a"}},
		Repositories:   []string{"registry.example.com/team-a"},
		Archives:       &prepullv1.ArchiveGrant{Repositories: []string{"registry.example.com/team-a/air"}},
		AllowRemove:    true,
		NodeGate:       &prepullv1.NodeGateGrant{MaxTimeout: &metav1.Duration{Duration: 5 * time.Minute}},
		AllowWorkloads: new(bool),
	}}
	teamB := &prepullv1.PrePullPolicy{ObjectMeta: metav1.ObjectMeta{Name: "team-b"}, Spec: prepullv1.PrePullPolicySpec{
		Repositories: []string{"docker.io/library", "localhost:5000/b"},
	}}
	for _, p := range []*prepullv1.PrePullPolicy{teamA, teamB} {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	policies := map[string]*prepullv1.PrePullPolicy{"team-a": teamA, "team-b": teamB}
	def := &prepullv1.PrePullPolicy{}
	if err := c.Get(ctx, client.ObjectKey{Name: prepullv1.DefaultPolicy}, def); err != nil {
		t.Fatal(err)
	}
	policies["plain"] = def
	// The admission policy sees the new parameters once its informer does.
	testground.Eventually(t, time.Minute, "team-a's grant in force", func() error {
		l := list("team-a", "probe", selector(map[string]string{"pool": "a"}), "registry.example.com/team-a/app:1")
		if err := c.Create(ctx, l); err != nil {
			return err
		}
		return c.Delete(ctx, l)
	})

	in := func(labels ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: "pool", Operator: metav1.LabelSelectorOpIn, Values: labels}
	}
	mine := "registry.example.com/team-a/app:1"
	cases := []struct {
		name  string
		list  *prepullv1.PrePullList
		field string // "" when admitted
	}{
		{"other pool", list("team-a", "pool-b", selector(map[string]string{"pool": "b"}), mine), "spec.nodeSelector"},
		{"other pools by expression", list("team-a", "pool-in", selector(nil, in("b", "c")), mine), "spec.nodeSelector"},
		{"its pool among others", list("team-a", "pool-in-a", selector(nil, in("a", "c")), mine), ""},
		{"its pool", list("team-a", "pool-a", selector(map[string]string{"pool": "a", "zone": "z1"}), mine), ""},
		{"no selector (intersected)", list("team-a", "anywhere", nil, mine), ""},
		{"another team's repository", list("team-a", "theirs", nil, "registry.example.com/team-b/app:1"), "spec.images"},
		{"a longer name, not a path", list("team-a", "prefix", nil, "registry.example.com/team-ab/app:1"), "spec.images"},
		{"by digest", list("team-a", "digest", nil, "registry.example.com/team-a/app@sha256:"+strings.Repeat("a", 64)), ""},
		{"archive outside its grant", list("team-a", "air-out", archive, mine), "spec.images"},
		{"archive within", list("team-a", "air-in", archive, "registry.example.com/team-a/air/app:1"), ""},
		{"archive by default", list("plain", "air", archive, "nginx:1.25"), "spec.source.archive"},
		{"remove by default", list("plain", "remove", func(s *prepullv1.PrePullListSpec) { s.OnDelete = prepullv1.DeleteRemove }, "nginx:1.25"), "spec.onDelete"},
		{"remove granted", list("team-a", "remove", func(s *prepullv1.PrePullListSpec) { s.OnDelete = prepullv1.DeleteRemove }, mine), ""},
		{"gate by default", list("plain", "gate", gate(time.Minute), "nginx:1.25"), "spec.nodeGate"},
		{"gate within", list("team-a", "gate-5m", gate(5*time.Minute), mine), ""},
		{"gate past", list("team-a", "gate-6m", gate(6*time.Minute), mine), "spec.nodeGate.timeout"},
		{"workloads refused", list("team-a", "discover", func(s *prepullv1.PrePullListSpec) {
			s.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{}}
		}, mine), "spec.workloads"},
		{"workloads by default", list("plain", "discover", func(s *prepullv1.PrePullListSpec) {
			s.Workloads = &prepullv1.WorkloadSource{Selector: &metav1.LabelSelector{}}
		}), ""},
		{"any repository by default", list("plain", "any", nil, "nginx:1.25", "ghcr.io/org/tool:2", "localhost:5000/x/y"), ""},
		{"docker.io's short names", list("team-b", "short", nil, "nginx:1.25", "docker.io/library/redis", "localhost:5000/b/app:1"), ""},
		{"docker.io's other users", list("team-b", "user", nil, "bitnami/redis:7"), "spec.images"},
		{"a registry with a port", list("team-b", "port", nil, "localhost:5000/bee:1"), "spec.images"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			violations := tenancy.Check(policies[tc.list.Namespace], tc.list)
			err := c.Create(ctx, tc.list)
			if err == nil {
				t.Cleanup(func() { _ = c.Delete(ctx, tc.list) })
			}
			switch {
			case tc.field == "" && (err != nil || len(violations) > 0):
				t.Errorf("admission: %v; tenancy.Check: %q; want both to admit it", err, violations)
			case tc.field != "" && err == nil:
				t.Errorf("admitted; want it refused for %s (tenancy.Check: %q)", tc.field, violations)
			case tc.field != "" && len(violations) == 0:
				t.Errorf("tenancy.Check admits it; admission: %v", err)
			case tc.field != "":
				want := tc.field + ": PrePullPolicy " + policies[tc.list.Namespace].Name
				if !strings.Contains(err.Error(), want) || !strings.HasPrefix(violations[0], want) {
					t.Errorf("admission: %v\ntenancy.Check: %q\nwant both to start with %q", err, violations, want)
				}
			}
		})
	}

	t.Run("a list written under a wider grant can still be deleted", func(t *testing.T) {
		l := list("team-a", "narrowed", func(s *prepullv1.PrePullListSpec) { s.OnDelete = prepullv1.DeleteRemove }, mine)
		l.Finalizers = []string{"prepull.io/test"}
		if err := c.Create(ctx, l); err != nil {
			t.Fatal(err)
		}
		teamA.Spec.AllowRemove = false
		if err := c.Update(ctx, teamA); err != nil {
			t.Fatal(err)
		}
		testground.Eventually(t, time.Minute, "the narrowed grant in force", func() error {
			probe := list("team-a", "probe-remove", func(s *prepullv1.PrePullListSpec) { s.OnDelete = prepullv1.DeleteRemove }, mine)
			if err := c.Create(ctx, probe); err == nil {
				_ = c.Delete(ctx, probe)
				return errors.New("still admitted")
			}
			return nil
		})
		if len(tenancy.Check(teamA, l)) == 0 {
			t.Errorf("tenancy.Check admits the list its policy no longer grants")
		}
		// A label: not a spec change.
		l.Labels = map[string]string{"touched": "yes"}
		if err := c.Update(ctx, l); err != nil {
			t.Errorf("labelling a list its policy no longer grants: %v", err)
		}
		// Its spec written again, as it is: refused.
		l.Spec.Images = append(l.Spec.Images, prepullv1.PrePullImage{Image: "registry.example.com/team-a/other:1"})
		if err := c.Update(ctx, l); err == nil || !strings.Contains(err.Error(), "spec.onDelete: PrePullPolicy team-a") {
			t.Errorf("a spec change of a list its policy no longer grants: %v, want it refused for spec.onDelete", err)
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, l); err != nil {
			t.Fatal(err)
		}
		// The finalizer goes (the controller's write): not a spec change.
		if err := c.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil {
			t.Fatal(err)
		}
		l.Finalizers = nil
		if err := c.Update(ctx, l); err != nil {
			t.Errorf("removing the finalizer of a list its policy no longer grants: %v", err)
		}
	})
}
