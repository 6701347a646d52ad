package testground

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// Scheme knows the Kubernetes types and prepull's, for the tests' clients.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := prepullv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
