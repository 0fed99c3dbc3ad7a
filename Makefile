# crank-ca: `make run` starts a development CA, `make test` runs every test.
GO        ?= go
BIN       ?= bin
CA_DIR    ?= .crank-ca
# Store drivers crank-ca does not offer are left out of the binary.
TAGS      ?= nobadger nomysql
GOFLAGS_BUILD = -trimpath -tags '$(TAGS)' -ldflags '-s -w'

.PHONY: all build release run test test-short vet lint bench bench-pg bench-go fuzz clean

all: build

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./cmd/...

# release builds the shipped programs as static (CGO_ENABLED=0), trimmed,
# stripped binaries with the build tags of `build`, stamped with VERSION
# (`crank-ca version` prints it), into $(RELEASE_DIR)/<os>-<arch>/ with a
# SHA256SUMS file, for every platform of RELEASE_PLATFORMS.
# TestReleaseBuild (integration/version_test.go) checks the result.
VERSION           ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)
RELEASE_DIR       ?= $(BIN)/release
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
RELEASE_CMDS      ?= crank-ca crank-agent hello-worker
release:
	@set -e; for p in $(RELEASE_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; out='$(RELEASE_DIR)'/$$os-$$arch; \
	  echo "release $(VERSION) $$os/$$arch: $$out/"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -buildvcs=auto -tags '$(TAGS)' \
	    -ldflags '-s -w -X github.com/crank-platform/crank-ca/internal/version.Stamp=$(VERSION)' \
	    -o "$$out/" $(addprefix ./cmd/,$(RELEASE_CMDS)); \
	  (cd "$$out" && sha256sum $(RELEASE_CMDS) > SHA256SUMS); \
	done

# run creates a development CA under $(CA_DIR) on first use, then serves it
# on $(LISTEN) until interrupted. LISTEN is written into a new CA's
# configuration; an existing CA_DIR keeps the address it was created with,
# so a different LISTEN for it stops with a message instead of being
# silently ignored.
LISTEN ?=
run: build
	@if [ ! -f $(CA_DIR)/crank-ca.json ]; then $(BIN)/crank-ca init --dir $(CA_DIR) $(if $(LISTEN),--listen $(LISTEN)); \
	elif [ -n "$(LISTEN)" ] && ! grep -q '"listen": "$(LISTEN)"' $(CA_DIR)/crank-ca.json; then \
	  echo "make run: $(CA_DIR) serves $$(sed -n 's/^  "listen": "\(.*\)",$$/\1/p' $(CA_DIR)/crank-ca.json), not $(LISTEN):" \
	       "use a new CA_DIR (make run LISTEN=$(LISTEN) CA_DIR=.crank-ca-other) or edit \"listen\" in $(CA_DIR)/crank-ca.json" >&2; exit 2; \
	fi
	@echo
	@echo "Mint a join token for a worker in another terminal:"
	@echo "  $(BIN)/crank-ca token create --config $(CA_DIR)/crank-ca.json --worker hello"
	@echo "Root fingerprint: run 'openssl x509 -in $(CA_DIR)/pki/root.crt -noout -fingerprint -sha256' or see the serve log."
	@echo
	$(BIN)/crank-ca serve --config $(CA_DIR)/crank-ca.json

# test runs vet, the unit tests with the race detector and the end-to-end
# tests (certbot and PostgreSQL tests skip when those are not installed;
# .ci/run installs them), then every benchmark once so they keep working.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./...

test-short:
	$(GO) test -short -count=1 ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# lint runs staticcheck at a pinned version (fetched through the module proxy).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	$(GO) run $(STATICCHECK) ./...

# bench runs crank-bench's standard set (new-worker, renew, storm) against
# a fresh CA that .ci/bench creates, starts on a free loopback port and
# stops; a couple of minutes on 2 cores. See docs/performance.md.
bench: build
	BIN='$(BIN)' .ci/bench

# bench-pg runs .ci/bench-pg: crank-ca on a private PostgreSQL server (fsync
# on), two replicas with every request alternating, one replica, then one of
# two replicas killed mid-run (retries, certificates missing); with
# BENCH_STEPCA=/path/to/step-ca also stock step-ca on the same server. Needs
# PostgreSQL's server binaries; a few minutes. See docs/performance.md.
bench-pg: build
	BIN='$(BIN)' .ci/bench-pg

# bench-go runs the Go benchmarks of the module.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# fuzz runs every fuzz target of the module for FUZZTIME each; .ci/fuzz
# finds them, so targets added later run too. It fails on a crash.
FUZZTIME ?= 5s
fuzz:
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' .ci/fuzz

clean:
	rm -rf $(BIN)
