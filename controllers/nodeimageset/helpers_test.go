package nodeimageset_test

import (
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
)

// configNoNameCheck lets several agents, one per simulated node, run their
// controllers in one test process.
func configNoNameCheck() config.Controller {
	return config.Controller{SkipNameValidation: ptr(true)}
}

// watchStatus watches node's NodeImageSet.
func watchStatus(e *env, node string) (watch.Interface, error) {
	wc, err := client.NewWithWatch(e.cfg, client.Options{Scheme: e.scheme})
	if err != nil {
		return nil, err
	}
	return wc.Watch(ctx, &prepullv1.NodeImageSetList{}, client.MatchingFields{"metadata.name": node})
}
