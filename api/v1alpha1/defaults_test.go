package v1alpha1

import (
	"fmt"
	"os"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// The API server fills in the CRD's defaults, which kubebuilder markers
// write as literals; the agent and the controller use the constants. They
// must agree.
func TestCRDDefaultsAreTheConstants(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/crd/prepull.io_prepulllists.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(raw, crd); err != nil {
		t.Fatal(err)
	}
	spec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	rollout := spec.Properties["rollout"]
	tests := []struct {
		name  string
		field apiextensionsv1.JSONSchemaProps
		want  string
	}{
		{"spec.rollout.timeout", rollout.Properties["timeout"], fmt.Sprintf("%q", duration(DefaultPullTimeout))},
		{"spec.rollout.backoffLimit", rollout.Properties["backoffLimit"], fmt.Sprint(DefaultBackoffLimit)},
		{"spec.refreshInterval", spec.Properties["refreshInterval"], fmt.Sprintf("%q", duration(DefaultRefresh))},
		{"spec.nodeGate.timeout", spec.Properties["nodeGate"].Properties["timeout"], fmt.Sprintf("%q", duration(DefaultGateTimeout))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.field.Default == nil {
				t.Fatalf("%s has no default in the CRD", tt.name)
			}
			if got := string(tt.field.Default.Raw); got != tt.want {
				t.Errorf("%s defaults to %s in the CRD, the constant is %s", tt.name, got, tt.want)
			}
		})
	}
}

// duration is d as the markers write it: "10m", "1h".
func duration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
