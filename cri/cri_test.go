package cri

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"grpc not found", status.Error(codes.NotFound, "x"), ErrNotFound},
		{"grpc unavailable", status.Error(codes.Unavailable, "connection refused"), ErrUnavailable},
		{"grpc deadline", status.Error(codes.DeadlineExceeded, "x"), ErrTimeout},
		{"grpc unimplemented", status.Error(codes.Unimplemented, "x"), ErrUnsupported},
		{"grpc invalid", status.Error(codes.InvalidArgument, "bad ref"), ErrInvalid},
		{"registry 401 inside unknown", status.Error(codes.Unknown, `failed to pull: unexpected status from HEAD request to http://r/v2/x/manifests/v1: 401 Unauthorized`), ErrUnauthorized},
		{"no basic auth credentials", status.Error(codes.Unknown, "pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials"), ErrUnauthorized},
		{"registry down", status.Error(codes.Unknown, "failed to do request: Head \"http://r/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"), ErrUnavailable},
		{"registry 500", status.Error(codes.Unknown, `failed to resolve reference "r/x@sha256:1": unexpected status from HEAD request to http://r/v2/x/manifests/sha256:1: 500 Internal Server Error`), ErrUnavailable},
		{"body cut short", status.Error(codes.Unknown, `failed to copy: httpReadSeeker: failed open: failed to do request: Get "http://r/v2/x/blobs/sha256:1": EOF`), ErrUnavailable},
		{"disk full", status.Error(codes.Unknown, "failed to extract layer: write /var/lib/x: no space left on device"), ErrNoSpace},
		{"context deadline", fmt.Errorf("pull: %w", context.DeadlineExceeded), ErrTimeout},
		{"canceled", context.Canceled, nil},
		{"unknown message", status.Error(codes.Unknown, "something odd"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err); got != tt.want {
				t.Errorf("classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestErrorKeepsTheRuntimeMessage(t *testing.T) {
	inner := status.Error(codes.Unknown, "failed to resolve: 401 Unauthorized")
	err := wrapError("pull", "r/app:v1", inner)
	if !errors.Is(err, ErrUnauthorized) || !errors.Is(err, inner) {
		t.Errorf("errors.Is fails on %v", err)
	}
	if want := "pull r/app:v1: failed to resolve: 401 Unauthorized"; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
}

func TestAuthStringHidesSecrets(t *testing.T) {
	a := &Auth{Username: "u", Password: "hunter2", Auth: "dTpodW50ZXIy", IdentityToken: "", ServerAddress: "r:5000"}
	s := a.String() + fmt.Sprint(a) + fmt.Sprintf("%v", a)
	for _, secret := range []string{"hunter2", "dTpodW50ZXIy"} {
		if strings.Contains(s, secret) {
			t.Errorf("%q reveals a secret", s)
		}
	}
	if !strings.Contains(s, "r:5000") {
		t.Errorf("%q does not name the registry", s)
	}
}

func TestPinLabels(t *testing.T) {
	tests := []struct {
		name       string
		labels     map[string]string
		pin, unpin []string
		wantPinned bool
		wantOwners []string
	}{
		{name: "pin one owner", pin: []string{"a"}, wantPinned: true, wantOwners: []string{"a"}},
		{name: "pin twice is one owner", pin: []string{"a", "a"}, wantPinned: true, wantOwners: []string{"a"}},
		{name: "last owner unpins", pin: []string{"a", "b"}, unpin: []string{"a", "b"}, wantPinned: false},
		{name: "another owner keeps the pin", pin: []string{"a", "b"}, unpin: []string{"a"}, wantPinned: true, wantOwners: []string{"b"}},
		{name: "unpin of a stranger changes nothing", pin: []string{"a"}, unpin: []string{"z"}, wantPinned: true, wantOwners: []string{"a"}},
		{
			name:       "a pin set by someone else stays",
			labels:     map[string]string{PinnedLabel: PinnedLabelValue},
			pin:        []string{"a"},
			unpin:      []string{"a"},
			wantPinned: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			labels := oneByOne(tt.labels, tt.pin, tt.unpin)
			if got := labels[PinnedLabel] == PinnedLabelValue; got != tt.wantPinned {
				t.Errorf("pinned = %t, want %t (labels %v)", got, tt.wantPinned, labels)
			}
			if got := PinOwners(labels); !slices.Equal(got, tt.wantOwners) {
				t.Errorf("owners = %v, want %v", got, tt.wantOwners)
			}
		})
	}
	if c := PinChanges(map[string]string{PinnedLabel: PinnedLabelValue, OwnerLabelPrefix + "a": "true"}, "a"); c != nil {
		t.Errorf("pinning a pinned image for its owner asks for changes %v", c)
	}
}

// SetPinsChanges must leave what pinning and unpinning one owner at a time
// leaves, and ask for no change where there is none.
func TestSetPinsChangesIsPinAndUnpinInOne(t *testing.T) {
	pinned := func(owners ...string) map[string]string { return oneByOne(nil, owners, nil) }
	tests := []struct {
		name       string
		labels     map[string]string
		owners     []string
		keepOthers bool
		wantOwners []string
		wantPinned bool
	}{
		{name: "nothing to pin", wantPinned: false},
		{name: "first owners", owners: []string{"a", "b"}, wantOwners: []string{"a", "b"}, wantPinned: true},
		{name: "owners replaced", labels: pinned("a", "x"), owners: []string{"a", "b"}, wantOwners: []string{"a", "b"}, wantPinned: true},
		{name: "others kept", labels: pinned("x"), owners: []string{"a"}, keepOthers: true, wantOwners: []string{"a", "x"}, wantPinned: true},
		{name: "all taken off", labels: pinned("a", "x"), wantPinned: false},
		{
			name:       "a pin set by someone else stays",
			labels:     ApplyChanges(map[string]string{PinnedLabel: PinnedLabelValue}, map[string]string{OwnerLabelPrefix + "a": "true"}),
			wantPinned: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One owner at a time, as Pin and Unpin do.
			var others []string
			for _, o := range PinOwners(tt.labels) {
				if !tt.keepOthers && !slices.Contains(tt.owners, o) {
					others = append(others, o)
				}
			}
			want := oneByOne(tt.labels, tt.owners, others)
			changes := SetPinsChanges(tt.labels, tt.owners, tt.keepOthers)
			got := ApplyChanges(maps.Clone(tt.labels), changes)
			if !maps.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Errorf("labels = %v, want %v (one owner at a time)", got, want)
			}
			if owners := PinOwners(got); !slices.Equal(owners, tt.wantOwners) {
				t.Errorf("owners = %v, want %v", owners, tt.wantOwners)
			}
			if p := got[PinnedLabel] == PinnedLabelValue; p != tt.wantPinned {
				t.Errorf("pinned = %t, want %t", p, tt.wantPinned)
			}
			if again := SetPinsChanges(got, tt.owners, tt.keepOthers); again != nil {
				t.Errorf("a second SetPinsChanges asks for changes %v, want none", again)
			}
		})
	}
}

// oneByOne is labels after pinning for each of pin, then unpinning each
// of unpin, one owner at a time.
func oneByOne(labels map[string]string, pin, unpin []string) map[string]string {
	labels = maps.Clone(labels)
	for _, o := range pin {
		labels = ApplyChanges(labels, PinChanges(labels, o))
	}
	for _, o := range unpin {
		labels = ApplyChanges(labels, UnpinChanges(labels, o))
	}
	return labels
}

func TestUnsupportedNamesTheRuntime(t *testing.T) {
	err := Unsupported{Runtime: "cri-o 1.30"}.Pin(context.Background(), "x", "o")
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "cri-o 1.30") {
		t.Errorf("error %v: want ErrUnsupported naming the runtime", err)
	}
}
