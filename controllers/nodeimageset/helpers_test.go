package nodeimageset_test

import (
	"testing"

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

// handWatched starts watching node's NodeImageSet, then hands it entries:
// the watch sees every status write that follows. It stops with the test.
func (e *env) handWatched(t *testing.T, node string, entries ...prepullv1.NodeImage) watch.Interface {
	t.Helper()
	wc, err := client.NewWithWatch(e.cfg, client.Options{Scheme: e.scheme})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(ctx, &prepullv1.NodeImageSetList{}, client.MatchingFields{"metadata.name": node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	e.setSpec(t, node, entries...)
	return w
}
