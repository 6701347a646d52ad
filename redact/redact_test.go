package redact_test

import (
	"strings"
	"testing"

	"prepull.io/prepull/redact"
)

func TestText(t *testing.T) {
	tests := []struct {
		name, in, want string
		never          []string
	}{
		{
			name: "a pre-signed URL loses its query",
			in:   `failed to copy: httpReadSeeker: failed open: unexpected status code https://bucket.s3.example/blobs/sha256:ab?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIDEXAMPLE%2F2026&X-Amz-Signature=deadbeef: 403 Forbidden`,
			want: `failed to copy: httpReadSeeker: failed open: unexpected status code https://bucket.s3.example/blobs/sha256:ab?…: 403 Forbidden`,
		},
		{
			name: "user information goes",
			in:   `Get "https://alice:s3cret@registry.example/v2/": dial tcp: i/o timeout`,
			want: `Get "https://registry.example/v2/": dial tcp: i/o timeout`,
		},
		{
			name: "signing parameters outside a URL go",
			in:   `request with sig=abc123&se=2026-12-07&X-Goog-Signature=ff refused`,
			want: `request with sig=…&se=2026-12-07&X-Goog-Signature=… refused`,
		},
		{
			name:  "an object store's XML answer is not shown",
			in:    `unexpected status 403: <?xml version="1.0"?><Error><Code>SignatureDoesNotMatch</Code><StringToSign>AWS4 secret-material</StringToSign></Error>`,
			want:  `unexpected status 403: (the server's answer is not shown)`,
			never: []string{"secret-material"},
		},
		{
			name: "plain text stays",
			in:   `pull docker.io/library/nginx:1.27: not found`,
			want: `pull docker.io/library/nginx:1.27: not found`,
		},
		{
			name: "a URL at the end of a sentence keeps the period outside",
			in:   `could not reach http://127.0.0.1:5000/v2/?x=1.`,
			want: `could not reach http://127.0.0.1:5000/v2/?….`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := redact.Text(tt.in)
			if got != tt.want {
				t.Errorf("Text(%q)\n = %q\nwant %q", tt.in, got, tt.want)
			}
			for _, s := range tt.never {
				if strings.Contains(got, s) {
					t.Errorf("holds %q: %q", s, got)
				}
			}
		})
	}
	long := strings.Repeat("é", redact.Max)
	if got := redact.Text(long); len(got) > redact.Max || !strings.HasSuffix(got, "...") {
		t.Errorf("a long text: %d bytes, ends %q", len(got), got[len(got)-5:])
	}
}
