package nodeimageset_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/cri"
	"prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/e2e/testground"
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

// statusUntilPresent reads the status writes w delivers until n images
// read Present, calling each for every image of every write and then
// written, if not nil, once the write is read.
func statusUntilPresent(t *testing.T, w watch.Interface, n int, each func(prepullv1.NodeImageStatus), written func()) {
	t.Helper()
	deadline := time.After(wait)
	for present := 0; present < n; {
		select {
		case ev := <-w.ResultChan():
			set, ok := ev.Object.(*prepullv1.NodeImageSet)
			if !ok {
				continue
			}
			present = 0
			for _, st := range set.Status.Images {
				if st.Phase == prepullv1.PhasePresent {
					present++
				}
				each(st)
			}
			if written != nil {
				written()
			}
		case <-deadline:
			t.Fatalf("not all Present after %s", wait)
		}
	}
}

// containerdOnTmpfs starts a containerd whose root is a real filesystem
// of size bytes (a tmpfs), trusting the public registry, and returns that
// filesystem's path, for a test that grows it, and the containerd's
// clients.
func (e *env) containerdOnTmpfs(t *testing.T, size int64) (string, *cri.Remote, *containerd.Store) {
	t.Helper()
	root := testground.TempDir(t, "pp-tmpfs-")
	if err := syscall.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount a %d MiB tmpfs: %v", size>>20, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(root, syscall.MNT_DETACH) })
	ctd := testground.StartContainerdWith(t, func(cfg string) string {
		return strings.Replace(cfg, "root = '", "root = '"+root+"' #", 1)
	})
	ctd.TrustRegistry(e.public)
	images, store := ctd.Clients(t)
	return root, images, store
}
