package imageref

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27"},
		{"127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"},
		{"r.example/app@sha256:" + strings.Repeat("a", 64), "r.example/app@sha256:" + strings.Repeat("a", 64)},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Normalize(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := Normalize("app:not a tag"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Normalize of an invalid reference: %v, want ErrInvalid", err)
	}
}
