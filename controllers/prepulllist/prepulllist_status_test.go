package prepulllist

import (
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

func TestConditions(t *testing.T) {
	resolved := []prepullv1.ImageResolution{{Image: "a:1", Digest: "sha256:1"}, {Image: "b:1", Digest: "sha256:2"}}
	unresolved := []prepullv1.ImageResolution{{Image: "a:1", Digest: "sha256:1"}, {Image: "b:1", Message: "resolve b:1: 404"}}
	failure := []prepullv1.NodeFailure{{Node: "n2", Image: "a:1", Reason: "Unauthorized", Message: "401"}}
	tests := []struct {
		name                                 string
		nodes                                prepullv1.NodeCounts
		images                               []prepullv1.ImageResolution
		failures                             []prepullv1.NodeFailure
		awaiting                             map[string]string
		secretErr                            bool
		wantProgressingReason                string
		wantProgressingMessage               string
		wantReady, wantProgressing, wantDegr metav1.ConditionStatus
		wantReadyReason, wantDegradedReason  string
		wantDegradedMessage                  string
	}{
		{
			name: "all ready", nodes: prepullv1.NodeCounts{Selected: 3, Ready: 3}, images: resolved,
			wantReady: metav1.ConditionTrue, wantProgressing: metav1.ConditionFalse, wantDegr: metav1.ConditionFalse,
			wantReadyReason: prepullv1.ReasonAllNodesReady, wantDegradedReason: prepullv1.ReasonAsExpected,
		},
		{
			name: "rolling out", nodes: prepullv1.NodeCounts{Selected: 3, Ready: 1, Pulling: 1, Waiting: 1}, images: resolved,
			wantReady: metav1.ConditionFalse, wantProgressing: metav1.ConditionTrue, wantDegr: metav1.ConditionFalse,
			wantReadyReason: prepullv1.ReasonNodesNotReady, wantDegradedReason: prepullv1.ReasonAsExpected,
		},
		{
			name: "no node selected", images: resolved,
			wantReady: metav1.ConditionTrue, wantProgressing: metav1.ConditionFalse, wantDegr: metav1.ConditionFalse,
			wantReadyReason: prepullv1.ReasonNoNodesSelected, wantDegradedReason: prepullv1.ReasonAsExpected,
		},
		{
			name: "unresolved image", nodes: prepullv1.NodeCounts{Selected: 1, Ready: 1}, images: unresolved,
			wantReady: metav1.ConditionFalse, wantProgressing: metav1.ConditionFalse, wantDegr: metav1.ConditionTrue,
			wantReadyReason: prepullv1.ReasonNodesNotReady, wantDegradedReason: prepullv1.ReasonResolutionFailed,
			wantDegradedMessage: "b:1: resolve b:1: 404",
		},
		{
			name: "a node failed", nodes: prepullv1.NodeCounts{Selected: 2, Ready: 1, Failed: 1}, images: resolved, failures: failure,
			wantReady: metav1.ConditionFalse, wantProgressing: metav1.ConditionFalse, wantDegr: metav1.ConditionTrue,
			wantReadyReason: prepullv1.ReasonNodesNotReady, wantDegradedReason: prepullv1.ReasonNodesFailed,
			wantDegradedMessage: "node n2, image a:1: Unauthorized: 401",
		},
		{
			name: "waiting only for a node to resolve the tag", nodes: prepullv1.NodeCounts{Selected: 2, Pulling: 1, Waiting: 1},
			images:    []prepullv1.ImageResolution{{Image: "a:1", Message: "waiting for node n1 to pull it and report its digest: docker.io/library/a:1"}},
			awaiting:  map[string]string{"a:1": "waiting for node n1 to pull it and report its digest: docker.io/library/a:1"},
			wantReady: metav1.ConditionFalse, wantProgressing: metav1.ConditionTrue, wantDegr: metav1.ConditionFalse,
			wantReadyReason: prepullv1.ReasonNodesNotReady, wantDegradedReason: prepullv1.ReasonAsExpected,
			wantProgressingReason: prepullv1.ReasonResolving, wantProgressingMessage: "1 images wait for their resolution: waiting for node n1 to pull it",
		},
		{
			name: "missing pull secret", nodes: prepullv1.NodeCounts{Selected: 1, Ready: 1}, images: resolved, secretErr: true,
			wantReady: metav1.ConditionTrue, wantProgressing: metav1.ConditionFalse, wantDegr: metav1.ConditionTrue,
			wantReadyReason: prepullv1.ReasonAllNodesReady, wantDegradedReason: prepullv1.ReasonPullSecretUnavailable,
			wantDegradedMessage: "spec.imagePullSecrets[0]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var secretErr error
			if tt.secretErr {
				secretErr = errString("spec.imagePullSecrets[0]: secret ns/x not found")
			}
			r := readyCondition(7, tt.nodes, tt.images)
			p := progressingCondition(7, tt.nodes, tt.awaiting)
			d := degradedCondition(7, tt.nodes, tt.images, tt.awaiting, tt.failures, secretErr)
			if r.Status != tt.wantReady || r.Reason != tt.wantReadyReason {
				t.Errorf("Ready = %s/%s, want %s/%s", r.Status, r.Reason, tt.wantReady, tt.wantReadyReason)
			}
			if p.Status != tt.wantProgressing || (tt.wantProgressingReason != "" && p.Reason != tt.wantProgressingReason) || !strings.Contains(p.Message, tt.wantProgressingMessage) {
				t.Errorf("Progressing = %s/%s %q, want %s/%s containing %q", p.Status, p.Reason, p.Message, tt.wantProgressing, tt.wantProgressingReason, tt.wantProgressingMessage)
			}
			if d.Status != tt.wantDegr || d.Reason != tt.wantDegradedReason || !strings.Contains(d.Message, tt.wantDegradedMessage) {
				t.Errorf("Degraded = %s/%s %q, want %s/%s containing %q", d.Status, d.Reason, d.Message, tt.wantDegr, tt.wantDegradedReason, tt.wantDegradedMessage)
			}
			for _, c := range []metav1.Condition{r, p, d} {
				if c.ObservedGeneration != 7 {
					t.Errorf("%s has observedGeneration %d, want 7", c.Type, c.ObservedGeneration)
				}
			}
		})
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestMaxConcurrentNodes(t *testing.T) {
	tests := []struct {
		value    string
		selected int
		want     int
	}{
		{"25%", 1000, 250},
		{"25%", 3, 1},
		{"25%", 0, 1},
		{"10%", 15, 2},
		{"100%", 7, 7},
		{"3", 100, 3},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			v := intstr.Parse(tt.value)
			if got := maxConcurrentNodes(&v, tt.selected); got != tt.want {
				t.Errorf("maxConcurrentNodes(%s, %d) = %d, want %d", tt.value, tt.selected, got, tt.want)
			}
		})
	}
}

func TestParseWant(t *testing.T) {
	d := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		image               string
		wantTag, wantDigest string
		wantRepo            string
		wantAdvice          bool
	}{
		{image: "nginx:1.27", wantRepo: "docker.io/library/nginx", wantTag: "docker.io/library/nginx:1.27"},
		{image: "nginx", wantRepo: "docker.io/library/nginx", wantTag: "docker.io/library/nginx:latest", wantAdvice: true},
		{image: "r.example/app:latest", wantRepo: "r.example/app", wantTag: "r.example/app:latest", wantAdvice: true},
		{image: "r.example/app@" + d, wantRepo: "r.example/app", wantDigest: d},
		{image: "r.example/app:v1@" + d, wantRepo: "r.example/app", wantTag: "r.example/app:v1", wantDigest: d},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			w, err := parseWant(tt.image)
			if err != nil {
				t.Fatal(err)
			}
			if w.Repo != tt.wantRepo || w.Tag != tt.wantTag || w.Digest != tt.wantDigest || (w.advice != "") != tt.wantAdvice {
				t.Errorf("parseWant(%q) = %+v", tt.image, w)
			}
		})
	}
}

func TestHandMovesATagToOneEntry(t *testing.T) {
	const tag, d1, d2 = "registry.example/app:v1", "registry.example/app@sha256:1", "registry.example/app@sha256:2"
	n := &node{name: "n", selected: true, spec: spec{own: &prepullv1.NodeImageSetSpec{Images: []prepullv1.NodeImage{{
		Image: d1, Owners: []prepullv1.ImageOwner{{List: "ns/a", Tags: []string{tag}}, {List: "ns/b", Tags: []string{tag}}},
	}}}}}
	w, err := parseWant(tag)
	if err != nil {
		t.Fatal(err)
	}
	// List a is handed the tag's new digest first; list b waits its turn.
	p := &plan{owner: prepullv1.ImageOwner{List: "ns/a"}, targets: []target{{want: w, digest: "sha256:2"}}, maxConcurrent: 1}
	p.run([]*node{n})
	claims := map[string][]string{}
	for _, e := range n.images() {
		for _, o := range e.Owners {
			if !o.Releasing && slices.Contains(o.Tags, tag) {
				claims[tag] = append(claims[tag], e.Image)
			}
		}
	}
	if got := slices.Compact(claims[tag]); !slices.Equal(got, []string{d2}) {
		t.Errorf("entries claiming %s: %v, want only %s", tag, got, d2)
	}
	if !n.changed {
		t.Error("the node is not marked changed")
	}
	var bKeeps bool
	for _, e := range n.images() {
		for _, o := range e.Owners {
			bKeeps = bKeeps || (e.Image == d1 && o.List == "ns/b" && !o.Releasing)
		}
	}
	if !bKeeps {
		t.Errorf("list b lost its entry before its turn: %+v", n.images())
	}
}
