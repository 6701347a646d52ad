# prepull — run `make help` for the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO      ?= go
# Every test finds the test ground's binaries here; envtest finds
# kube-apiserver and etcd through KUBEBUILDER_ASSETS.
TEST_ENV := PREPULL_BIN=$(BIN) KUBEBUILDER_ASSETS=$(BIN)
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Test ground

.PHONY: testground
testground: deps envtest-assets containerd clients plugins stargz ## Install and build everything the tests run (root on a fresh Debian machine).

.PHONY: deps
deps: ## Install runc, the CNI plugins, the registry and iptables from Debian when missing.
	hack/install-deps.sh

.PHONY: envtest-assets
envtest-assets: ## Build the pinned kube-apiserver and etcd into bin/.
	hack/build-tool.sh kube kube-apiserver
	hack/build-tool.sh etcd

.PHONY: cluster-binaries
cluster-binaries: envtest-assets containerd clients ## Build the pinned kubelet, kube-controller-manager, kube-scheduler, kubectl and helm into bin/.
	hack/build-tool.sh kube kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl

.PHONY: clients
clients: ## Build the pinned kubectl and helm into bin/ (the chart's tests, the local cluster).
	hack/build-tool.sh kube kubectl
	hack/build-tool.sh helm

.PHONY: plugins
plugins: ## Build the pinned ecr-credential-provider into bin/ (credprovider's tests).
	hack/build-tool.sh ecr-credential-provider

.PHONY: stargz
stargz: ## Build containerd-stargz, the stargz lazy-pulling snapshotter, into bin/ (the agent's tests on a lazy snapshotter).
	hack/build-tool.sh stargz

.PHONY: containerd
containerd: ## Build the pinned containerd, ctr and containerd-shim-runc-v2 into bin/.
	hack/build-tool.sh containerd

##@ Develop

CONTROLLER_GEN := $(BIN)/controller-gen

.PHONY: controller-gen
controller-gen: ## Build the pinned controller-gen into bin/.
	hack/build-tool.sh controller-gen

.PHONY: generate
generate: controller-gen ## Generate the API types' deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: controller-gen ## Generate the CRDs and RBAC under deploy/.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=deploy/crd
	$(CONTROLLER_GEN) rbac:roleName=prepull-controller paths="./controllers/prepulllist/...;./controllers/nodegate/..." output:rbac:artifacts:config=deploy/rbac/controller
	$(CONTROLLER_GEN) rbac:roleName=prepull-agent paths=./controllers/nodeimageset/... output:rbac:artifacts:config=deploy/rbac/agent

.PHONY: verify-generated
verify-generated: controller-gen ## Fail when generated code or manifests are stale (regenerates them).
	@sum() { find api deploy/crd deploy/rbac -type f 2>/dev/null | sort | xargs sha256sum; }; \
	before="$$(sum)"; $(MAKE) --no-print-directory generate manifests >/dev/null; \
	if [[ "$$before" != "$$(sum)" ]]; then \
		echo "generated files were stale and are now regenerated: review and commit them"; \
		diff <(echo "$$before") <(sum) || true; exit 1; fi

.PHONY: build
build: ## Build bin/prepull.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/prepull ./cmd/prepull

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: vet ## Fail when any Go file is not gofmt-formatted, then vet.
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [[ -n "$$out" ]]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi

.PHONY: test
test: testground lint verify-generated build ## Build the test ground and run every test on it, end-to-end ones included (as root).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test $(GO_TEST_FLAGS) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=300x
	$(MAKE) --no-print-directory test-e2e

# Native Go fuzz targets, FUZZTIME each: make test runs them briefly, make
# fuzz longer (FUZZTIME=10m make fuzz). make test counts executions (300x)
# rather than time: Go 1.26's fuzzing can fail a target whose workers are
# still busy when a -fuzztime duration ends on a loaded machine, with no
# failing input ("context deadline exceeded"); a count has no deadline.
FUZZ_TARGETS := ./imageref/:FuzzNormalize ./imageref/:FuzzOneGrammar ./cmd/prepull/:FuzzReadLists ./bundle/:FuzzVerify ./bundle/:FuzzLoad
FUZZTIME ?= 1m

.PHONY: fuzz
fuzz: ## Fuzz reference parsing (and its agreement with admission), list files, bundle verification and archive import, FUZZTIME (1m) each.
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz: $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

.PHONY: test-e2e
test-e2e: deps cluster-binaries build ## Run the end-to-end tests on real local clusters of one node and of three (as root; tears down a running demo cluster).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -tags e2e -count=1 -timeout 40m -p 1 ./e2e/ ./e2e/multinode/

.PHONY: test-unit
test-unit: ## Run only the tests that need no test ground.
	$(GO) test $(GO_TEST_FLAGS) ./cri/ ./cmd/...

##@ Local cluster

CLUSTER_DIR ?= /var/lib/prepull-cluster
# How make demo installs prepull: kustomize (hack/cluster/overlay) or helm
# (deploy/chart/prepull with hack/cluster/values.yaml).
INSTALL ?= kustomize
# How many real nodes make demo brings up (each its own network namespace,
# containerd and kubelet past the first).
NODES ?= 1

.PHONY: demo
demo: deps cluster-binaries build ## Bring up a local cluster, deploy prepull, pre-pull, stop the registry, start pods (root).
	$(GO) run ./hack/cluster demo -dir $(CLUSTER_DIR) -bin $(BIN) -install $(INSTALL) -nodes $(NODES)

.PHONY: demo-down
demo-down: ## Stop the local cluster and restore the machine (root).
	$(GO) run ./hack/cluster down -dir $(CLUSTER_DIR) -bin $(BIN)

BENCH_NODES ?= 1000

.PHONY: bench
bench: testground build ## Run the benchmarks (BENCH_NODES=5000 for a larger controller rollout).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./e2e/bench/ -args -nodes=$(BENCH_NODES)

FLEET_NODES ?= 5000
FLEET_LISTS ?= 20
FLEET_IMAGES ?= 100

.PHONY: bench-fleet
bench-fleet: testground build ## The controller at fleet scale: FLEET_NODES x FLEET_LISTS lists x FLEET_IMAGES tags, then a tag move.
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -run '^$$' -bench BenchmarkControllerRollout -benchtime 1x -timeout 60m ./e2e/bench/ -args -nodes=$(FLEET_NODES) -lists=$(FLEET_LISTS) -images=$(FLEET_IMAGES)

.PHONY: bench-discovery
bench-discovery: testground build ## Images discovered from 2000 Deployments (20 namespaces, 300 images) vs listed by hand, 1000 simulated nodes.
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -run '^$$' -bench BenchmarkDiscovery -benchtime 1x -timeout 60m ./e2e/bench/

.PHONY: bench-gate
bench-gate: deps cluster-binaries build ## A node joining with a Deployment waiting: with a gating list vs without, over a shaped link (root).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -tags e2e -run '^$$' -bench BenchmarkGatedNodeJoin -benchtime 1x -timeout 30m ./e2e/

.PHONY: bench-podstart
bench-podstart: deps cluster-binaries build ## Pod start latency on the local cluster: pre-pulled vs cold vs kubelet-pulled, and with an image volume, over a shaped link (root).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -tags e2e -run '^$$' -bench 'BenchmarkPodStart|BenchmarkImageVolumePodStart|BenchmarkNodeJoin' -benchtime 1x -timeout 30m ./e2e/

.PHONY: bench-peers
bench-peers: deps cluster-binaries build ## Three real nodes behind one 100 Mbit/s registry link: registry bytes and time to Ready, with peers vs without (root).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -tags e2e -run '^$$' -bench BenchmarkPeersRollout -benchtime 1x -timeout 30m ./e2e/multinode/

.PHONY: bench-verify
bench-verify: deps cluster-binaries build ## Pod start under the kubelet's AlwaysVerify: pre-pulled private images vs kubelet-pulled vs cold, over a shaped link (root).
	$(TEST_ENV) PREPULL_BINARY=$(BIN)/prepull $(GO) test -tags e2e -run '^$$' -bench BenchmarkAlwaysVerifyPodStart -benchtime 1x -timeout 30m ./e2e/multinode/

.PHONY: clean
clean: ## Remove bin/ (the test ground is rebuilt on the next `make test`).
	rm -rf $(BIN)
