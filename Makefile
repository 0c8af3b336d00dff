# kubernetes-upgrader
CARGO ?= cargo
KUBECTL ?= kubectl
IMG ?= ghcr.io/kubernetes-upgrader/kubernetes-upgrader:latest
BIN := $(CARGO) run --release --locked --bin kubernetes-upgrader --
## The product binary, for `envtest use`.
UPGRADER ?= $(CARGO) run --locked -q --bin kubernetes-upgrader --
## The Kubernetes minor the end-to-end suites are tested against.
ENVTEST_K8S_VERSION ?= 1.32

.PHONY: all build test ci lint fmt manifests e2e bench bench-load bench-syncer bench-image bench-upgrade bench-rollout bench-scale demo run install docker-build control-plane

all: build

build:
	$(CARGO) build --locked --workspace

## The local control plane of the end-to-end suites and the demo. With none configured (no
## KUBEBUILDER_ASSETS, no E2E_KUBECONFIG, nothing in setup-envtest's folder), `envtest use` fetches
## Kubernetes $(ENVTEST_K8S_VERSION)'s etcd, kube-apiserver and kubectl from controller-tools'
## envtest releases into setup-envtest's folder, SHA-512 checked, once. OFFLINE=1 never fetches;
## ENVTEST_INDEX_URL points at a mirror of the release index.
control-plane:
ifeq ($(OFFLINE),)
	@if [ -z "$$KUBEBUILDER_ASSETS" ] && [ -z "$$E2E_KUBECONFIG" ]; then \
	  $(UPGRADER) envtest use --prefer-installed $(ENVTEST_K8S_VERSION) >/dev/null \
	  || { echo "make: fetching a control plane failed: set KUBEBUILDER_ASSETS or E2E_KUBECONFIG, or OFFLINE=1 to go on without one" >&2; exit 1; }; \
	fi
endif

## The test command: formatting, lints and every test. End-to-end suites run against the control
## plane above (fetched on first use), or E2E_KUBECONFIG; with OFFLINE=1 and neither, they skip.
## --no-fail-fast runs every binary even when one fails, and the end-to-end wall time is printed.
test: control-plane
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) build --locked --bin kubernetes-upgrader
	@status=0; \
	$(CARGO) test --locked --workspace --exclude e2e --no-fail-fast || status=1; \
	start=$$(date +%s); \
	$(CARGO) test --locked -p e2e --no-fail-fast -- --test-threads=2 || status=1; \
	echo "end-to-end suites: $$(( $$(date +%s) - start )) s wall"; \
	exit $$status

lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate config/crd/ from the Rust types.
manifests:
	UPDATE_CRDS=1 $(CARGO) test --locked -p kubernetes-upgrader --lib crdgen

## End-to-end suites, against the control plane above or E2E_KUBECONFIG.
e2e: control-plane
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) test --locked -p e2e --no-fail-fast -- --test-threads=2

## Debian index ingestion against zcat/xzcat, memory per cached object and the Plan's decision at
## 10,000 images, and 500 sources against a fake API server.
bench:
	$(CARGO) bench --locked -p kubernetes-upgrader --bench debian_index
	$(CARGO) bench --locked -p kubernetes-upgrader --bench cache_footprint
	$(CARGO) bench --locked -p e2e --bench manager_load

bench-load:
	$(CARGO) build --locked --release --bin kubernetes-upgrader
	$(CARGO) run --locked --release -p e2e --bin load

## A new version in a served repository → its MachineImage, p50/p99 over 25 publications
## (SYNCER_BENCH_PUBLICATIONS), on the real API server with the debug manager binary.
bench-syncer:
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) run --locked -p e2e --bin syncer_latency

## Build Job Complete → MachineImage Ready, p50/p99 over 20 builds, on the real API server
## with the debug manager binary.
bench-image:
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) run --locked -p e2e --bin image_ready

## The whole pipeline on this machine, with no cluster: the local control plane above (fetched
## on first use), or the current kubeconfig with USE_CURRENT_CONTEXT=1. Ctrl-C stops everything
## it started.
demo: $(if $(USE_CURRENT_CONTEXT),,control-plane)
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) run --locked -q -p e2e --bin demo -- $(if $(USE_CURRENT_CONTEXT),--use-current-context)

## 200 Clusters, each with its upgrader, on one Plan: a new image → every Cluster's first step
## (p50/p99/max), API writes per step and at steady state, on the real API server with the debug
## manager binary. FANOUT_CLUSTERS, FANOUT_BASELINE_SECS, FANOUT_SETTLE_SECS, FANOUT_STEADY_SECS.
bench-upgrade:
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) run --locked -p e2e --bin upgrade_fanout

## 300 Clusters on one Plan's rollout (waves of 3, 30 and 267 at maxConcurrent 1, 10 and 50, soak
## 5s): per wave the time against the ideal, the most Clusters in flight and writes per step, on
## the real API server with the debug manager binary (KUBERNETES_UPGRADER_BIN runs another one).
## ROLLOUT_CLUSTERS, ROLLOUT_STEP_MS, ROLLOUT_SETTLE_SECS.
bench-rollout:
	$(CARGO) build --locked --bin kubernetes-upgrader
	$(CARGO) run --locked -p e2e --bin rollout_bench

## The fleet at scale, on the real API server with the release manager binary (the harness itself
## is a debug build): 10,000 static
## MachineImages in 10 namespaces, 10 Plans, 100 DebianRepositorySources, 1,000 Clusters each with
## its upgrader. Idle, peak and steady RSS, start to converged, Plan reconcile p50/p99, writes at
## steady state, and the step of every Cluster after a new image. SCALE_IMAGES, SCALE_NAMESPACES,
## SCALE_SOURCES, SCALE_CLUSTERS, SCALE_IDLE_SECS, SCALE_SETTLE_SECS, SCALE_STEADY_SECS.
bench-scale:
	$(CARGO) build --locked --release --bin kubernetes-upgrader
	KUBERNETES_UPGRADER_BIN=$(CURDIR)/target/release/kubernetes-upgrader $(CARGO) run --locked -p e2e --bin scale

## Install the CRDs and admission policies into the current cluster, then run every controller
## against the current kubeconfig.
run:
	$(BIN) crds --with-policies | $(KUBECTL) apply --server-side -f -
	$(BIN) run --health-probe-bind-address=127.0.0.1:8081 --metrics-bind-address=127.0.0.1:8080

install:
	$(KUBECTL) apply --server-side -k config/default

docker-build:
	docker build -t $(IMG) .
