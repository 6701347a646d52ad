package imageref_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageref"
)

// References is the corpus in testdata/references.txt.
func References(t testing.TB) []string {
	t.Helper()
	return testground.Lines(t, "testdata/references.txt")
}

// admission decides on an image reference as the CRD's schema for
// spec.images[].image does: its length bounds, and its CEL rule, a
// conjunction of self.matches('…') terms, some negated. CEL's matches is
// RE2, as Go's regexp is.
type admission struct {
	min, max int64
	terms    []term
}

type term struct {
	negated bool
	re      *regexp.Regexp
}

func (a admission) allows(s string) bool {
	if n := int64(len([]rune(s))); n < a.min || n > a.max {
		return false
	}
	for _, t := range a.terms {
		if t.re.MatchString(s) == t.negated {
			return false
		}
	}
	return true
}

var termRE = regexp.MustCompile(`^(!?)self\.matches\('((?:[^'\\]|\\.)*)'\)$`)

func loadAdmission(t testing.TB) admission {
	t.Helper()
	data, err := os.ReadFile("../deploy/crd/prepull.io_prepulllists.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	image := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["images"].Items.Schema.Properties["image"]
	if image.MinLength == nil || image.MaxLength == nil || len(image.XValidations) != 1 {
		t.Fatalf("the CRD's image schema is not what this test reads: %+v", image)
	}
	a := admission{min: *image.MinLength, max: *image.MaxLength}
	for _, part := range strings.Split(image.XValidations[0].Rule, "&&") {
		m := termRE.FindStringSubmatch(strings.TrimSpace(part))
		if m == nil {
			t.Fatalf("a term of the image rule this test cannot read: %q", part)
		}
		a.terms = append(a.terms, term{negated: m[1] == "!", re: regexp.MustCompile(m[2])})
	}
	return a
}

// TestOneGrammar: the CRD's rule and the parser the controller, bundles and
// node apply use accept exactly the same references (the rule checked here
// as RE2; the controller's suite checks the same corpus on the real API
// server).
func TestOneGrammar(t *testing.T) {
	adm := loadAdmission(t)
	for _, ref := range References(t) {
		_, err := imageref.Parse(ref)
		if allowed := adm.allows(ref); allowed != (err == nil) {
			t.Errorf("%q: admission allows it: %v; the parser: %v", ref, allowed, err)
		}
	}
}

// FuzzOneGrammar is TestOneGrammar on any string.
func FuzzOneGrammar(f *testing.F) {
	adm := loadAdmission(f)
	for _, ref := range References(f) {
		f.Add(ref)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		_, err := imageref.Parse(ref)
		if allowed := adm.allows(ref); allowed != (err == nil) {
			t.Errorf("%q: admission allows it: %v; the parser: %v", ref, allowed, err)
		}
	})
}
