#!/usr/bin/env bash
# Builds a pinned test-ground tool from its module under hack/tools into bin/.
# A build is skipped when bin/ already holds the output for the same pinned
# module (go.mod and go.sum hashed into a stamp file).
#
#   hack/build-tool.sh kube [cmd...]   kube-apiserver (default) and others from k8s.io/kubernetes
#   hack/build-tool.sh etcd            etcd server
#   hack/build-tool.sh containerd      containerd, ctr, containerd-shim-runc-v2
#   hack/build-tool.sh controller-gen  controller-gen, which generates CRDs and deepcopy code
#   hack/build-tool.sh helm            helm, which lints, renders and installs the chart
#   hack/build-tool.sh ecr-credential-provider  the EKS kubelet credential provider plugin, for credprovider's tests
#   hack/build-tool.sh stargz          containerd-stargz, the stargz lazy-pulling snapshotter served for containerd (the agent's tests)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tool="${1:?usage: build-tool.sh kube|etcd|containerd [cmd...]}"
shift
mod="$root/hack/tools/$tool"
[[ -f "$mod/go.mod" ]] || { echo "build-tool: unknown tool $tool" >&2; exit 2; }
out="$root/bin"
mkdir -p "$out"
# A tool's own program (main.go, beside go.mod) counts too.
stamp_of() { cat "$mod/go.mod" "$mod/go.sum" $(ls "$mod"/main.go 2>/dev/null) | sha256sum | cut -c1-16; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# build PKG OUTPUT LDFLAGS [TAGS]
build() {
	local pkg="$1" name="$2" ldflags="$3" tags="${4:-}"
	local stamp; stamp="$(stamp_of)"
	if [[ -x "$out/$name" && "$(cat "$out/.$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
		echo "build-tool: $name is up to date"
		return
	fi
	echo "build-tool: building $name from $pkg"
	local start=$SECONDS
	(cd "$mod" && go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$out/$name.tmp" "$pkg")
	mv "$out/$name.tmp" "$out/$name"
	echo "$stamp" >"$out/.$name.stamp"
	echo "build-tool: built $name in $((SECONDS - start))s"
}

version_of() { (cd "$mod" && go list -m -f '{{.Version}}' "$1"); }

case "$tool" in
kube)
	v="$(version_of k8s.io/kubernetes)"
	minor="${v#v1.}"; minor="${minor%%.*}"
	ld=""
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
		ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	cmds=("$@")
	[[ ${#cmds[@]} -gt 0 ]] || cmds=(kube-apiserver)
	for c in "${cmds[@]}"; do build "k8s.io/kubernetes/cmd/$c" "$c" "$ld"; done
	;;
etcd)
	build go.etcd.io/etcd/server/v3 etcd ""
	;;
containerd)
	v="$(version_of github.com/containerd/containerd/v2)"
	ld="-X github.com/containerd/containerd/v2/version.Version=$v"
	for c in containerd ctr containerd-shim-runc-v2; do
		build "github.com/containerd/containerd/v2/cmd/$c" "$c" "$ld" no_btrfs
	done
	;;
controller-gen)
	build sigs.k8s.io/controller-tools/cmd/controller-gen controller-gen ""
	;;
ecr-credential-provider)
	build k8s.io/cloud-provider-aws/cmd/ecr-credential-provider ecr-credential-provider ""
	;;
stargz)
	build . containerd-stargz ""
	;;
helm)
	v="$(version_of helm.sh/helm/v3)"
	build helm.sh/helm/v3/cmd/helm helm "-X helm.sh/helm/v3/internal/version.version=$v"
	;;
*)
	echo "build-tool: unknown tool $tool" >&2
	exit 2
	;;
esac
