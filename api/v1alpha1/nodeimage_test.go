package v1alpha1

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEntrySettings(t *testing.T) {
	three, nine := int32(3), int32(9)
	lists := map[string]*PrePullList{
		"ns/a": {ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}, Spec: PrePullListSpec{
			Retain: RetainPinned, Rollout: RolloutSpec{Timeout: &metav1.Duration{Duration: time.Minute}, BackoffLimit: &three},
		}},
		"ns/b": {ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b"}, Spec: PrePullListSpec{
			Retain: RetainUnpinned, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "cred"}},
			Rollout: RolloutSpec{Timeout: &metav1.Duration{Duration: time.Hour}, BackoffLimit: &nine},
		}},
		"ns/c": {ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}, Spec: PrePullListSpec{OnDelete: DeleteRemove,
			ImagePullSecrets: []corev1.LocalObjectReference{{Name: "other"}}}},
	}
	lookup := func(o string) *PrePullList { return lists[o] }
	tests := []struct {
		name   string
		owners []ImageOwner
		want   EntrySettings
	}{{
		name: "union of the active owners, shortest timeout, largest backoff limit",
		owners: []ImageOwner{
			{List: "ns/a", Tags: []string{"r/app:v1", "r/app:stable"}},
			{List: "ns/b", Tags: []string{"r/app:v1"}},
			{List: "ns/c", Releasing: true, Tags: []string{"r/app:old"}},
		},
		want: EntrySettings{
			Tags: []string{"r/app:stable", "r/app:v1"}, PullSecrets: []string{MirrorSecretName("ns", "b", "cred")},
			Timeout: time.Minute, BackoffLimit: 9, Pinners: []string{"ns/a"}, Remove: true,
		},
	}, {
		name:   "an owner whose list cannot be read gets the defaults, pinned",
		owners: []ImageOwner{{List: "ns/gone", Tags: []string{"r/app:v1"}}},
		want:   EntrySettings{Tags: []string{"r/app:v1"}, Timeout: DefaultPullTimeout, BackoffLimit: DefaultBackoffLimit, Pinners: []string{"ns/gone"}},
	}, {
		name:   "only releasing owners: nothing pinned, defaults",
		owners: []ImageOwner{{List: "ns/a", Releasing: true, Tags: []string{"r/app:v1"}}},
		want:   EntrySettings{Timeout: DefaultPullTimeout, BackoffLimit: DefaultBackoffLimit},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NodeImage{Image: "r/app@sha256:1", Owners: tt.owners}
			got := e.Settings(lookup)
			if !slices.Equal(got.Tags, tt.want.Tags) || !slices.Equal(got.PullSecrets, tt.want.PullSecrets) ||
				!slices.Equal(got.Pinners, tt.want.Pinners) || got.Timeout != tt.want.Timeout ||
				got.BackoffLimit != tt.want.BackoffLimit || got.Remove != tt.want.Remove {
				t.Errorf("Settings() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTagResolutionName(t *testing.T) {
	a := TagResolutionName("127.0.0.1:15000/shop/web:1.4.2")
	b := TagResolutionName("127.0.0.1:15000/other/web:1.4.2")
	if a == b {
		t.Errorf("two references share the name %s", a)
	}
	if a != TagResolutionName("127.0.0.1:15000/shop/web:1.4.2") {
		t.Error("the name is not stable")
	}
	if len(a) > 63 || a[:10] != "web-1-4-2-" {
		t.Errorf("name %q: want a readable DNS label", a)
	}
}
