package pullsecret

import (
	"encoding/base64"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func secret(key, value string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "creds"},
		Data:       map[string][]byte{key: []byte(value)},
	}
}

func TestParse(t *testing.T) {
	basic := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	tests := []struct {
		name     string
		secret   *corev1.Secret
		host     string
		wantUser string
		wantPass string
		wantErr  string
	}{
		{
			name:     "dockerconfigjson with user and password",
			secret:   secret(corev1.DockerConfigJsonKey, `{"auths":{"reg.example:5000":{"username":"alice","password":"s3cret"}}}`),
			host:     "reg.example:5000",
			wantUser: "alice", wantPass: "s3cret",
		},
		{
			name:     "auth field and a URL key",
			secret:   secret(corev1.DockerConfigJsonKey, `{"auths":{"https://reg.example/v1/":{"auth":"`+basic+`"}}}`),
			host:     "reg.example",
			wantUser: "alice", wantPass: "s3cret",
		},
		{
			name:     "legacy dockercfg",
			secret:   secret(corev1.DockerConfigKey, `{"reg.example":{"auth":"`+basic+`"}}`),
			host:     "reg.example",
			wantUser: "alice", wantPass: "s3cret",
		},
		{
			name:     "docker hub aliases",
			secret:   secret(corev1.DockerConfigJsonKey, `{"auths":{"https://index.docker.io/v1/":{"username":"a","password":"b"}}}`),
			host:     "docker.io",
			wantUser: "a", wantPass: "b",
		},
		{name: "not a registry secret", secret: secret("token", "x"), wantErr: "not a docker-registry secret"},
		{name: "bad JSON hides the content", secret: secret(corev1.DockerConfigJsonKey, `{"auths": s3cret}`), wantErr: "invalid JSON at byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := Parse(tt.secret)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("Parse() error = %v, want one containing %q and no secret", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, ok := Find(creds, tt.host)
			if !ok || c.Username != tt.wantUser || c.Password != tt.wantPass {
				t.Errorf("Find(%q) = %v (%q), %t; want user %q", tt.host, c, c.Username, ok, tt.wantUser)
			}
			if strings.Contains(c.String(), tt.wantPass) {
				t.Errorf("String() reveals the password: %s", c)
			}
		})
	}
}
