# devid: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := .build/bin
# The release version is agent/dist/VERSION (semver); the build adds the
# commit. Packages take their version from the same file.
VERSION ?= $(shell cat agent/dist/VERSION)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Package date: the commit's, so that a rebuild of a commit is identical.
DATE ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
NFPM := .build/tools/nfpm
TOOLSMOD := -modfile=agent/dist/tools.mod
BINARIES := agent/cmd/devid-agent enroll/cmd/devid-jig simulator/cmd/devid-sim
# devid-jig as `make build` makes it for the station PC: with the PKCS#11
# CA key back-end, which loads the token's module with dlopen and so needs
# cgo (docs/ca.md, "The CA key in an HSM"). Everything else, and the jig
# of `make cross` and the packages, stays static (CGO_ENABLED=0).
PKCS11_BUILD := CGO_ENABLED=1 $(GO) build -tags pkcs11
PKCS11_PKGS := ./enroll/station/ca/... ./enroll/station/cli/...
# TEST_TIMEOUT bounds the whole go test run; CI allows 90 minutes, we aim for 15.
TEST_TIMEOUT ?= 20m
KEY ?= file

export CGO_ENABLED ?= 0
# Tests that need a host tool (swtpm, tpm2-tools, socat, openssl, node) or
# root (a tmpfs to fill) skip under a plain `go test` when it is missing;
# through make they fail instead (hal/hosttest). `make unit-test DEVID_REQUIRE=` lets them skip.
export DEVID_REQUIRE ?= all

.PHONY: help deps build test unit-test race demo bench lint cross image qemu-test fuzz soak clean dist-gen notices package lintian image-debian

help: ## List the targets.
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install everything tests and the demo need (idempotent).
	@scripts/deps.sh

build: ## Build the three binaries into .build/bin (devid-jig with cgo and PKCS#11, the others static).
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./,$(filter-out enroll/cmd/devid-jig,$(BINARIES)))
	$(PKCS11_BUILD) -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./enroll/cmd/devid-jig

test: deps ## Install deps, then run lint, every test, the packages (lintian) and the QEMU boards.
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory unit-test
	@$(MAKE) --no-print-directory package
	@$(MAKE) --no-print-directory qemu-test

unit-test: ## Run go test ./... (no dependency install), and the PKCS#11 (SoftHSM2) tests with cgo.
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	CGO_ENABLED=1 $(GO) test -tags pkcs11 -count=1 -timeout $(TEST_TIMEOUT) $(PKCS11_PKGS)

# The packages that start goroutines of their own, and their helpers.
RACE_PKGS := ./agent/... ./dps/... ./simulator/... ./enroll/factory ./enroll/rotate ./enroll/station/line ./hal/... ./scripts/qemu/boardinit

race: ## Run the tests of the packages that own goroutines under the race detector.
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

demo: deps build ## Factory -> CA -> DPS -> hub on the simulator (KEY=file|tpm).
	@scripts/demo.sh $(KEY)

bench: deps build ## Run the benchmarks and write .build/bench-report.md.
	@scripts/bench.sh

lint: ## gofmt, go vet, go mod tidy -diff (also of the packaging tools), staticcheck, govulncheck, size limits, generated files and notices.
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	CGO_ENABLED=1 $(GO) vet -tags pkcs11 $(PKCS11_PKGS)
	$(GO) mod tidy -diff
	$(GO) mod tidy $(TOOLSMOD) -diff
	$(GO) tool staticcheck ./...
	CGO_ENABLED=1 $(GO) tool staticcheck -tags pkcs11 $(PKCS11_PKGS)
	@scripts/vulncheck.sh
	@scripts/structure.sh
	$(GO) test -count=1 -run 'UpToDate' ./agent/dist

dist-gen: ## Rewrite the files generated from agent/dist/manifest.toml and agent/config.
	$(GO) run ./agent/dist/cmd/distgen generate

notices: ## Rewrite agent/dist/third-party-notices.txt from the module graph.
	$(GO) run ./agent/dist/cmd/distgen notices

$(NFPM): agent/dist/tools.mod agent/dist/tools.sum
	$(GO) build $(TOOLSMOD) -o $@ github.com/goreleaser/nfpm/v2/cmd/nfpm

package: cross $(NFPM) ## .deb packages (amd64, arm64, armhf), Yocto layer, Buildroot tree, SHA256SUMS in .build/dist; lintian.
	@rm -rf .build/dist
	$(GO) run ./agent/dist/cmd/distgen package -nfpm $(NFPM) -version $(VERSION) -date $(DATE)
	@ls -l .build/dist/*.deb .build/dist/*.tar.gz | awk '{printf "package: %8d bytes  %s\n", $$5, $$9}'
	@$(MAKE) --no-print-directory lintian

lintian: ## Run lintian on every package in .build/dist (overrides carry their reasons).
	@scripts/lintian.sh .build/dist/*.deb

image-debian: ## Build the arm64 Debian 12 systemd board image (mmdebstrap; cached in /var/cache/devid-qemu).
	@scripts/qemu/image-debian.sh

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

soak: deps ## The field-fault campaign with high counts; report in .build/soak-report.md.
	@scripts/soak.sh

clean: ## Remove build outputs.
	rm -rf .build
