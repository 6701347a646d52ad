package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"prepull.io/prepull/cri"
	"prepull.io/prepull/e2e/testground"
)

func TestAgentOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*AgentOptions)
		wantErr []string
	}{
		{name: "defaults with a node", mutate: func(o *AgentOptions) { o.NodeName = "n1" }},
		{name: "no node", mutate: func(o *AgentOptions) { o.NodeName = "" }, wantErr: []string{"--node-name"}},
		{
			name: "every bad flag is reported",
			mutate: func(o *AgentOptions) {
				o.NodeName, o.CRIEndpoint, o.PullTimeout, o.ProbeAddr = "n1", "", 0, "no-port"
			},
			wantErr: []string{"--cri-endpoint", "--pull-timeout", "--health-probe-bind-address"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewAgentOptions()
			tt.mutate(o)
			err := o.Validate()
			if len(tt.wantErr) == 0 && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			for _, w := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, want it to name %s", err, w)
				}
			}
		})
	}
}

// The agent's disk budget: by default below the kubelet's lowest disk
// threshold; given above it, the agent refuses to start, naming it.
func TestAgentDiskBudget(t *testing.T) {
	kubelet := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(kubelet, []byte("kind: KubeletConfiguration\nimageGCHighThresholdPercent: 90\nevictionHard:\n  imagefs.available: 12%\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		budget  float64
		config  string
		want    float64
		wantErr string
	}{
		{name: "the default, on the kubelet's defaults", budget: AutoDiskBudget, want: 0.80},
		{name: "the default, on the node's kubelet", budget: AutoDiskBudget, config: kubelet, want: 0.83},
		{name: "given, under the threshold", budget: 0.75, config: kubelet, want: 0.75},
		{name: "given, over the threshold", budget: 0.9, config: kubelet, wantErr: "--disk-budget: a disk budget of 90% is above the kubelet's hard eviction threshold imagefs.available<12%"},
		{name: "the old default over the kubelet's defaults", budget: 0.9, wantErr: "imagefs.available<15%"},
		{name: "off", budget: 0, config: kubelet, want: 0},
		{name: "a kubelet configuration that cannot be read", budget: AutoDiskBudget, config: kubelet + ".missing", wantErr: "--kubelet-config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewAgentOptions()
			o.NodeName, o.DiskBudget, o.KubeletConfig = "n1", tt.budget, tt.config
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			got, err := o.diskBudget()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("budget %v, %v: want an error naming %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got < tt.want-1e-9 || got > tt.want+1e-9 {
				t.Errorf("budget %v, %v: want %.2f", got, err, tt.want)
			}
		})
	}
	// The agent refuses to start with it, before it reaches anything.
	err := run([]string{"agent", "--node-name=n1", "--disk-budget=0.9", "--kubelet-config=" + kubelet}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "imagefs.available<12%") {
		t.Errorf("prepull agent --disk-budget=0.9: %v, want a refusal naming the threshold", err)
	}
}

func TestControllerOptionsValidate(t *testing.T) {
	o := NewControllerOptions()
	if err := o.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	o.MetricsAddr = "0"
	if err := o.Validate(); err != nil {
		t.Errorf("metrics off: %v", err)
	}
	o.ProbeAddr = "8081"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--health-probe-bind-address") {
		t.Errorf("probe address without a port: %v, want an error naming the flag", err)
	}
}

func TestRunCommands(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"version"}, &out); err != nil || strings.TrimSpace(out.String()) != version {
		t.Errorf("version: %q, %v", out.String(), err)
	}
	if err := run([]string{"frobnicate"}, &out); !errors.Is(err, errUsage) {
		t.Errorf("unknown command: %v, want a usage error", err)
	}
	if err := run([]string{"agent", "--help"}, &out); err != nil {
		t.Errorf("agent --help: %v, want success", err)
	}
}

func TestAgentReadinessFollowsTheRuntime(t *testing.T) {
	ctd := testground.StartContainerd(t)
	up, err := cri.NewRemote(ctd.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	down, err := cri.NewRemote(filepath.Join(t.TempDir(), "absent.sock"), cri.WithCallTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	req := httptest.NewRequest(http.MethodGet, "/readyz", nil).WithContext(context.Background())
	if err := runtimeReady(up)(req); err != nil {
		t.Errorf("ready with a runtime: %v", err)
	}
	if err := runtimeReady(down)(req); err == nil || !strings.Contains(err.Error(), "runtime not ready") {
		t.Errorf("without a runtime: %v, want not ready", err)
	}
}

// The agent reaches registries for an image's size through the hosts.toml
// directory containerd's CRI plugin reads, and looks images' layers up in
// its snapshotter.
func TestContainerdSettings(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want, snapshotter string
	}{
		{name: "config_path set", path: write("set.toml", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/srv/certs.d:/etc/docker/certs.d'\n"), want: "/srv/certs.d", snapshotter: "overlayfs"},
		{name: "config_path unset: containerd's default", path: write("unset.toml", "version = 3\n"), want: "/etc/containerd/certs.d", snapshotter: "overlayfs"},
		{name: "a lazy snapshotter", path: write("stargz.toml", "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'stargz'\n"), want: "/etc/containerd/certs.d", snapshotter: "stargz"},
		{name: "no configuration file", path: filepath.Join(dir, "absent.toml")},
		{name: "none given", path: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if hosts, sn := containerdSettings(tt.path); hosts != tt.want || sn != tt.snapshotter {
				t.Errorf("containerdSettings(%q) = %q, %q, want %q, %q", tt.path, hosts, sn, tt.want, tt.snapshotter)
			}
		})
	}
}
