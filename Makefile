# Keywarden — run `make` for the list of targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin/keywarden
PKGS      := ./...
GOTEST    := $(GO) test -race -count=1
FUZZTIME  ?= 10s
# Time to minimize each new input (go test's default, 60s, stalls a target with large
# inputs such as store files: FuzzOpen ran 70 inputs in 30 s with it, 6,419 with 2s).
FUZZMINIMIZETIME ?= 5s
BENCHTIME ?= 1s
# `make bench`: pods of the node-scale scenario, and where its output and the daemon's pprof
# profiles go.
BENCH_PODS ?= 250
BENCH_DIR  := $(CURDIR)/bin/bench
BENCH_OUT  := $(BENCH_DIR)/bench.txt
# Real servers for the e2e suite (kube-apiserver, etcd, Vault, csi-sanity) are built from the Go
# module proxy into this cache, one file per name and version. CI points it outside the clone
# so builds survive between runs on the same machine.
export KEYWARDEN_TOOLS_DIR ?= $(CURDIR)/.bin
E2E_TIMEOUT ?= 45m
# deploy/image's test builds the daemon: on a cold build cache and 2 busy cores that alone can
# approach go test's default 10 minutes.
UNIT_TIMEOUT ?= 25m
# `make chaos`: trials per campaign, and where the campaigns append their summary lines.
CHAOS_TRIALS  ?= 1000
CHAOS_TIMEOUT ?= 4h
CHAOS_REPORT  := $(CURDIR)/bin/chaos-report.tsv
CHAOS_UNIT    := ^(TestManager_killDashNineCampaign|TestSource_killDashNineLeaseCampaign|TestDriver_killDashNineCampaign|TestDB_FailCommit_campaign|TestDB_diskFull_campaign|TestDB_fsyncError_campaign)$$
CRDGEN    := object paths=./broker/grant/ crd:crdVersions=v1
CHART     := deploy/helm/keywarden
# The chart templates the CRD (so `helm upgrade` upgrades it) from its own copy of deploy/crd.
CHART_CRD := $(CHART)/files/crd-accessgrants.yaml

.PHONY: help
help: ## Show this list
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/keywarden
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/keywarden

.PHONY: dev
dev: build ## Build and run `keywarden dev` (embedded default: no cluster, no Vault)
	./$(BIN) dev

.PHONY: test
test: deps lint generate-check unit e2e ## Everything CI runs: lint, generated code, unit + integration + e2e tests (-race)

.PHONY: unit
unit: ## Unit and in-process integration tests with -race
	$(GOTEST) -timeout $(UNIT_TIMEOUT) $(PKGS)

.PHONY: deps
deps: ## Install the Debian packages the tests need (PostgreSQL, e2fsprogs) when missing
	e2e/tools/install-deps.sh

.PHONY: tools
tools: deps ## Install PostgreSQL and build the missing e2e servers (first time ~20-45 min on 2 cores)
	e2e/tools/build.sh

.PHONY: e2e
e2e: tools ## End-to-end tests against real etcd + kube-apiserver, Vault and PostgreSQL
	$(GOTEST) -tags e2e -timeout $(E2E_TIMEOUT) ./e2e/...

.PHONY: bench
bench: tools ## Micro benchmarks + the node-scale scenario (BENCH_PODS pods) and its per-pod baseline; prints one table, writes bench/results.md
	@mkdir -p $(BENCH_DIR) bench; rm -f $(BENCH_DIR)/scenario-*.pprof; : > $(BENCH_OUT); status=0; \
	run() { echo "+ $$*" | tee -a $(BENCH_OUT); "$$@" 2>&1 | tee -a $(BENCH_OUT) | grep -E '^(Benchmark|--- |ok|FAIL|PASS|\s+\S+_test.go)' || status=1; }; \
	run $(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS); \
	run $(GO) test -tags e2e -run '^$$' -bench '^BenchmarkVault_' -benchtime $(BENCHTIME) ./e2e/; \
	run $(GO) test -tags e2e -run '^$$' -bench '^BenchmarkCSI_publish' -benchtime 100x ./e2e/; \
	export KEYWARDEN_SCENARIO_PODS=$(BENCH_PODS) KEYWARDEN_SCENARIO_PROFILES=$(BENCH_DIR); \
	run $(GO) test -tags e2e -timeout 30m -run '^$$' -bench '^BenchmarkScenario_node$$' -benchtime 1x ./e2e/; \
	echo; $(GO) run ./internal/benchtable -o bench/results.md < $(BENCH_OUT) || status=1; \
	echo "full output: $(BENCH_OUT); the daemon's profiles during the scenario: $(BENCH_DIR)/scenario-*.pprof"; \
	echo "(e.g. go tool pprof -top $(BENCH_DIR)/scenario-cpu-getsecret.pprof)"; exit $$status

.PHONY: chaos
chaos: tools ## Fault campaign, long settings (CHAOS_TRIALS per campaign, 25 pods, 10-min Vault outage); prints one table
	@mkdir -p bin; rm -f $(CHAOS_REPORT); status=0; \
	export KEYWARDEN_CHAOS_TRIALS=$(CHAOS_TRIALS) KEYWARDEN_CHAOS_LONG=1 KEYWARDEN_CHAOS_REPORT=$(CHAOS_REPORT); \
	$(GO) test -count=1 -timeout $(CHAOS_TIMEOUT) -run '$(CHAOS_UNIT)' -v ./broker/keyrot/ ./broker/store/ ./broker/source/vault/ ./csi/ 2>&1 | tee bin/chaos.log | grep -E '^(=== RUN|--- |ok|FAIL|\s+\S+_test.go)' || status=1; \
	$(GO) test -tags e2e -count=1 -timeout $(CHAOS_TIMEOUT) -run '^TestChaos_' -v ./e2e/ 2>&1 | tee -a bin/chaos.log | grep -E '^(=== RUN|--- |ok|FAIL|\s+\S+_test.go)' || status=1; \
	echo; awk -F'\t' 'BEGIN { printf "%-50s %7s %7s %7s %5s %12s %15s  %s\n", "campaign", "trials", "faults", "losses", "torn", "wrong allows", "orphaned leases", "notes" } \
	  { printf "%-50s %7s %7s %7s %5s %12s %15s  %s\n", $$2, $$3, $$4, $$5, $$6, $$7, $$8, $$9 }' $(CHAOS_REPORT) 2>/dev/null || echo "no campaign reported"; \
	echo "full output: bin/chaos.log"; exit $$status

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 10s; FUZZMINIMIZETIME per new input, default 5s)
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg; \
	  done; \
	done

.PHONY: lint
lint: ## gofmt, go vet (also of e2e/tools/prom), staticcheck, buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e ./e2e/...
	cd e2e/tools/prom && $(GO) vet ./...
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool staticcheck -tags e2e ./e2e/...
	$(GO) tool buf lint

.PHONY: chart-lint
chart-lint: ## helm lint --strict and helm template of the chart, defaults and every option on
	e2e/tools/build.sh helm
	@helm=$$(source e2e/tools/versions.env && echo "$(KEYWARDEN_TOOLS_DIR)/helm-$$HELM_VERSION"); \
	for values in "" "-f $(CHART)/ci/all-values.yaml"; do \
	  $$helm lint --strict $(CHART) $$values; \
	  $$helm template keywarden $(CHART) --namespace keywarden-system $$values >/dev/null; \
	done

.PHONY: generate
generate: ## Regenerate the gRPC code from proto/, the AccessGrant DeepCopy and CRD
	$(GO) tool buf generate
	$(GO) tool controller-gen $(CRDGEN) output:crd:dir=deploy/crd
	cp deploy/crd/keywarden.io_accessgrants.yaml $(CHART_CRD)

.PHONY: generate-check
generate-check: ## Fail when generated code is out of date
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(GO) tool buf generate --output "$$tmp"; \
	if ! diff -r -q -x '*.proto' "$$tmp/proto" proto >/dev/null; then \
	  diff -r -x '*.proto' "$$tmp/proto" proto | head -40; echo "generated code is stale: run 'make generate'"; exit 1; fi; \
	$(GO) tool controller-gen $(CRDGEN) output:object:dir="$$tmp/crd" output:crd:dir="$$tmp/crd"; \
	for f in broker/grant/zz_generated.deepcopy.go deploy/crd/keywarden.io_accessgrants.yaml; do \
	  if ! diff -q "$$tmp/crd/$$(basename $$f)" "$$f" >/dev/null; then \
	    diff "$$tmp/crd/$$(basename $$f)" "$$f" | head -40; echo "$$f is stale: run 'make generate'"; exit 1; fi; \
	done; \
	if ! diff -q deploy/crd/keywarden.io_accessgrants.yaml $(CHART_CRD) >/dev/null; then \
	  echo "$(CHART_CRD) differs from deploy/crd: run 'make generate'"; exit 1; fi; \
	echo "generated code is up to date"

.PHONY: tidy-check
tidy-check: ## Fail when go.mod/go.sum are not tidy
	$(GO) mod tidy -diff

.PHONY: vuln
vuln: ## govulncheck (needs the vulnerability database to be reachable)
	$(GO) tool govulncheck $(PKGS)

# Container image (deploy/image): FROM scratch, the static binary, an SBOM; no Docker daemon.
# Every timestamp comes from SOURCE_DATE_EPOCH, so one commit gives one manifest digest.
IMAGE_ARCH        ?= amd64
IMAGE_REPO        ?= ghcr.io/keywarden/keywarden
IMAGE_DIR         := dist/image
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
REVISION          ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: image
image: ## Build the container image (OCI layout + tarball + SBOM) into dist/image
	@mkdir -p $(IMAGE_DIR)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -buildvcs=false \
	  -ldflags '-s -w -buildid= -X main.version=$(VERSION)' -o $(IMAGE_DIR)/keywarden-linux-$(IMAGE_ARCH) ./cmd/keywarden
	$(GO) run ./deploy/image -binary $(IMAGE_DIR)/keywarden-linux-$(IMAGE_ARCH) -arch $(IMAGE_ARCH) \
	  -version $(VERSION) -revision $(REVISION) -repository $(IMAGE_REPO) \
	  -source-date-epoch $(SOURCE_DATE_EPOCH) -out $(IMAGE_DIR)

.PHONY: clean
clean: ## Remove build outputs (keeps the tool cache in .bin/)
	rm -rf bin
