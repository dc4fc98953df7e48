# devid: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := .build/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BINARIES := agent/cmd/devid-agent enroll/cmd/devid-jig simulator/cmd/devid-sim
# TEST_TIMEOUT bounds the whole go test run; CI allows 90 minutes, we aim for 15.
TEST_TIMEOUT ?= 20m
KEY ?= file

export CGO_ENABLED ?= 0
# Tests that need a host tool (swtpm, tpm2-tools, socat, openssl, node) skip
# under a plain `go test` when it is missing; through make they fail instead
# (hal/hosttest). `make unit-test DEVID_REQUIRE=` lets them skip.
export DEVID_REQUIRE ?= all

.PHONY: help deps build test unit-test race demo bench lint cross image qemu-test fuzz clean

help: ## List the targets.
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install everything tests and the demo need (idempotent).
	@scripts/deps.sh

build: ## Build the three binaries into .build/bin.
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./,$(BINARIES))

test: deps ## Install deps, then run lint, every test and the QEMU board test.
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory unit-test
	@$(MAKE) --no-print-directory qemu-test

unit-test: ## Run go test ./... (no dependency install).
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# The packages that start goroutines of their own, and their helpers.
RACE_PKGS := ./agent/... ./dps/... ./simulator/... ./enroll/factory ./enroll/rotate ./hal/... ./scripts/qemu/boardinit

race: ## Run the tests of the packages that own goroutines under the race detector.
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

demo: deps build ## Factory -> CA -> DPS -> hub on the simulator (KEY=file|tpm).
	@scripts/demo.sh $(KEY)

bench: deps build ## Run the benchmarks and write .build/bench-report.md.
	@scripts/bench.sh

lint: ## gofmt, go vet, go mod tidy -diff, staticcheck, govulncheck, size limits.
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(GO) tool staticcheck ./...
	@scripts/vulncheck.sh
	@scripts/structure.sh

cross: ## Static binaries for linux/amd64, linux/arm64, linux/arm (GOARM=7).
	@for t in amd64: arm64: arm:7; do \
	  arch=$${t%%:*}; arm=$${t##*:}; out=$(BIN)/linux-$$arch$${arm:+v$$arm}; mkdir -p $$out; \
	  echo "cross $$out"; \
	  GOOS=linux GOARCH=$$arch GOARM=$$arm CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out/ $(addprefix ./,$(BINARIES)) || exit 1; \
	done

image: ## Build the arm64 QEMU board image (kernel + Go init + agent).
	@scripts/qemu/image.sh

qemu-test: ## Boot the emulated board: program over UART, power-cycle, provision, telemetry.
	@scripts/qemu/test.sh

fuzz: ## Run each fuzz target briefly (FUZZTIME, default 10s).
	@scripts/fuzz.sh

clean: ## Remove build outputs.
	rm -rf .build
