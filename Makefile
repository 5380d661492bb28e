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
BENCHTIME ?= 1s

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
test: lint generate-check unit ## Everything CI runs: lint, generated code, unit + integration tests (-race)

.PHONY: unit
unit: ## Unit and in-process integration tests with -race
	$(GOTEST) $(PKGS)

.PHONY: bench
bench: ## Benchmarks (ratios are printed by the benchmarks that compare against a baseline)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 10s)
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool buf lint

.PHONY: generate
generate: ## Regenerate the gRPC code from proto/
	$(GO) tool buf generate

.PHONY: generate-check
generate-check: ## Fail when generated code is out of date
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(GO) tool buf generate --output "$$tmp"; \
	if ! diff -r -q -x '*.proto' "$$tmp/proto" proto >/dev/null; then \
	  diff -r -x '*.proto' "$$tmp/proto" proto | head -40; echo "generated code is stale: run 'make generate'"; exit 1; fi; \
	echo "generated code is up to date"

.PHONY: tidy-check
tidy-check: ## Fail when go.mod/go.sum are not tidy
	$(GO) mod tidy -diff

.PHONY: vuln
vuln: ## govulncheck (needs the vulnerability database to be reachable)
	$(GO) tool govulncheck $(PKGS)

.PHONY: clean
clean: ## Remove build outputs (keeps the tool cache in .bin/)
	rm -rf bin
