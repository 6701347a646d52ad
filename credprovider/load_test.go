package credprovider

import (
	"slices"
	"testing"

	"prepull.io/prepull/imageref"
)

// TestLoadReadsTheCloudsConfigs: configurations in the shapes the clouds'
// nodes have (JSON as EKS writes it, YAML as AKS and GKE do), one file or a
// directory of them merged in lexical order, match their registries.
func TestLoadReadsTheCloudsConfigs(t *testing.T) {
	p, err := Load("testdata/clouds", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range p.providers {
		names = append(names, c.Name)
	}
	if want := []string{"ecr-credential-provider", "acr-credential-provider", "auth-provider-gcp"}; !slices.Equal(names, want) {
		t.Errorf("providers %v, want %v in the files' order", names, want)
	}
	for image, provider := range map[string]string{
		"123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1": "ecr-credential-provider",
		"team.azurecr.io/app:1":                              "acr-credential-provider",
		"europe-docker.pkg.dev/project/repo/app:1":           "auth-provider-gcp",
	} {
		repo, err := imageref.Repository(image)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range p.providers {
			if matchesAny(c.MatchImages, repo) {
				got = append(got, c.Name)
			}
		}
		if !slices.Equal(got, []string{provider}) {
			t.Errorf("%s: matched by %v, want %s", image, got, provider)
		}
	}
	if _, err := Load("testdata/clouds/10-eks.json", t.TempDir()); err != nil {
		t.Errorf("one file: %v", err)
	}
}
