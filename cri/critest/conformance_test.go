package critest_test

import (
	"context"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"

	"prepull.io/prepull/cri"
	ctdstore "prepull.io/prepull/cri/containerd"
	"prepull.io/prepull/cri/critest"
	"prepull.io/prepull/cri/fake"
	"prepull.io/prepull/e2e/testground"
	"prepull.io/prepull/imageref"
)

// archive makes an OCI archive of a new small random linux/arch image named
// ref.
func archive(t testing.TB, ref, arch string) ([]byte, critest.Image) {
	t.Helper()
	img, err := testground.RandomImage(64<<10, 2, testground.Linux(arch))
	if err != nil {
		t.Fatal(err)
	}
	data, err := testground.OCIArchive(ref, img)
	if err != nil {
		t.Fatalf("make archive: %v", err)
	}
	id, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	repo, err := imageref.Repository(ref)
	if err != nil {
		t.Fatal(err)
	}
	return data, critest.Image{Tag: ref, Digest: repo + "@" + digest.String(), ID: id.String()}
}

func TestFake(t *testing.T) {
	const public, private = "public.fake:5000", "private.fake:5000"
	reg := fake.NewRegistry()
	reg.RequireAuth(private, "alice", "s3cret")
	rt := fake.New(reg)
	push := func(host string) func(testing.TB, string) critest.Image {
		return func(t testing.TB, repoTag string) critest.Image {
			t.Helper()
			ref := host + "/" + repoTag
			digest, id, err := reg.Push(ref, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			repo, err := imageref.Repository(ref)
			if err != nil {
				t.Fatal(err)
			}
			return critest.Image{Tag: ref, Digest: repo + "@" + digest, ID: id}
		}
	}
	critest.Run(t, &critest.Env{
		Images:      rt,
		Store:       rt,
		Push:        push(public),
		PushPrivate: push(private),
		Auth:        cri.Auth{Username: "alice", Password: "s3cret", ServerAddress: private},
		Archive:     archive,
		Registry:    public,
		PinElsewhere: func(t testing.TB, ref string) {
			if err := rt.Label(ref, cri.PinnedLabel, cri.PinnedLabelValue); err != nil {
				t.Fatal(err)
			}
		},
	})
}

func TestContainerd(t *testing.T) {
	ctd := testground.StartContainerd(t)
	public := testground.StartRegistry(t)
	private := testground.StartRegistry(t, testground.WithBasicAuth("alice", "s3cret"))
	ctd.TrustRegistry(public)
	ctd.TrustRegistry(private)

	images, store := ctd.Clients(t)
	if name, err := images.RuntimeName(context.Background()); err != nil {
		t.Fatalf("CRI version: %v\ncontainerd log:\n%s", err, ctd.Log())
	} else {
		t.Logf("runtime: %s", name)
	}

	push := func(reg *testground.Registry) func(testing.TB, string) critest.Image {
		return func(t testing.TB, repoTag string) critest.Image {
			t.Helper()
			p := reg.MustPushRandom(t, repoTag, 256<<10, 2)
			return critest.Image{Tag: p.Tag, Digest: p.Digest, ID: p.ID}
		}
	}
	critest.Run(t, &critest.Env{
		Images:      images,
		Store:       store,
		Push:        push(public),
		PushPrivate: push(private),
		Auth:        cri.Auth{Username: "alice", Password: "s3cret", ServerAddress: private.Host},
		Archive:     archive,
		Registry:    public.Host,
		PinElsewhere: func(t testing.TB, ref string) {
			t.Helper()
			c, err := containerd.New(ctd.Socket, containerd.WithDefaultNamespace(ctdstore.Namespace))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			name, err := imageref.Normalize(ref)
			if err != nil {
				t.Fatal(err)
			}
			is := c.ImageService()
			img, err := is.Get(context.Background(), name)
			if err != nil {
				t.Fatal(err)
			}
			if img.Labels == nil {
				img.Labels = map[string]string{}
			}
			img.Labels[cri.PinnedLabel] = cri.PinnedLabelValue
			if _, err := is.Update(context.Background(), img, "labels."+cri.PinnedLabel); err != nil {
				t.Fatal(err)
			}
		},
	})
	if t.Failed() {
		t.Logf("containerd log:\n%s", ctd.Log())
	}
}
