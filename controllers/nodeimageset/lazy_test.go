package nodeimageset_test

import (
	"os/exec"
	"strings"
	"testing"

	"fmt"

	prepullv1 "prepull.io/prepull/api/v1alpha1"
	"prepull.io/prepull/controllers/nodeimageset"
	"prepull.io/prepull/e2e/testground"
)

// TestAgentOnALazySnapshotter: on a real containerd whose CRI plugin
// unpacks with the real stargz snapshotter (a lazy-pulling one), an
// eStargz image that the CRI pull leaves remote — its layer mounted from
// the registry, not in the content store — is reported Lazy with advice,
// never Present; an ordinary image on the same node, which the snapshotter
// unpacks in full, is Present.
func TestAgentOnALazySnapshotter(t *testing.T) {
	e := setup(t)
	sz := testground.StartStargz(t)
	ctd := testground.StartContainerdWith(t, sz.Config)
	ctd.Snapshotter = "stargz"
	reg := testground.StartRegistry(t)
	ctd.TrustRegistry(reg)
	images, store := ctd.Clients(t)

	files := []testground.File{
		{Path: "data/a.bin", Mode: 0o644, Data: testground.RandomBytes(1 << 20)},
		{Path: "data/b.txt", Mode: 0o644, Data: []byte("whole or not\n")},
	}
	img, err := testground.EStargzImage(files)
	if err != nil {
		t.Fatal(err)
	}
	lazy, err := reg.PushImage("lazy/estargz:1", img)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	whole := reg.MustPushRandom(t, "lazy/plain:1", 64<<10, 1)

	e.agent(t, "lazy-node", func(r *nodeimageset.Reconciler) { r.Images, r.Store = images, store })
	e.setSpec(t, "lazy-node", entry(lazy.Digest, owner("lazy/list", lazy.Tag)), entry(whole.Digest, owner("lazy/list", whole.Tag)))
	e.phase(t, "lazy-node", whole.Digest, prepullv1.PhasePresent, nil)
	e.phase(t, "lazy-node", lazy.Digest, prepullv1.PhaseLazy, func(st *prepullv1.NodeImageStatus) error {
		if st.Reason != nodeimageset.ReasonLazy || !strings.Contains(st.LastError, "1 of the image's 1 layers are remote snapshots of the snapshotter stargz") {
			return fmt.Errorf("reason %s: %s", st.Reason, st.LastError)
		}
		return nil
	})
	// What the agent says, told apart from what it reads: the layer's
	// bytes never reached the node's content store.
	out, err := exec.Command(testground.Binary(t, "ctr"), "--address", ctd.Socket, "--namespace", "k8s.io", "content", "ls", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr content ls: %v: %s", err, out)
	}
	if strings.Contains(string(out), layer.String()) {
		t.Errorf("the eStargz layer %s is in the content store: the pull was not lazy", layer)
	}
}
