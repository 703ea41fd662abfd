# qchain — see README.md. Every target installs what it needs.
GO        ?= go
BIN       := bin/qchain
FUZZTIME  ?= 10s
PKGS      := ./...
export QCHAIN_BIN := $(CURDIR)/$(BIN)

.PHONY: all build deps test unit integration demo bench fuzz lint clean

all: build

# A static binary (no cgo: the net package would otherwise link libc and
# start through the dynamic loader, several ms of every short command).
# It is copied into place as an installer would: a file the linker wrote
# through a mapping sits in the page cache in 4 KiB pages, and starting it
# costs about 1 ms more on every run until it is evicted.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags urfave_cli_no_docs -o $(BIN).link ./cli/qchain
	cp $(BIN).link $(BIN).new && mv -f $(BIN).new $(BIN) && rm -f $(BIN).link

# deps installs the qemu tools the tests and the demo run against.
deps:
	@scripts/deps.sh

# QEMU_PKGS run against real qemu processes: once with the system's QEMU
# (7.2 on Debian 12) and once with QEMU 10.0 (scripts/qemu10.sh) first in
# PATH. Tests read the version of the qemu-img in PATH and compare with the
# matching output layout (10.0's by default, --compat=7.2 for 7.x).
QEMU_PKGS := ./qmp/... ./chain/... ./fixtures/... ./integration/...
QEMU10    = PATH="$$(scripts/qemu10.sh):$$PATH"

# QCHAIN_REQUIRE_GUEST: a test that needs the real guest fails instead of
# skipping when it cannot be had (make deps builds it).
test: export QCHAIN_REQUIRE_GUEST = 1
test: deps lint build
	@echo "== tests, system QEMU: $$(qemu-img --version | head -1)"
	$(GO) test -count=1 -timeout 20m $(PKGS)
	@echo "== tests, QEMU 10.0: $$($(QEMU10) qemu-img --version | head -1)"
	$(QEMU10) $(GO) test -count=1 -timeout 20m $(QEMU_PKGS)

unit: build
	$(GO) test -count=1 ./qcow2/... ./qmp/... ./chain/... ./cli/... ./fixtures/...

integration: deps build
	$(GO) test -count=1 -timeout 20m ./integration/...
	$(QEMU10) $(GO) test -count=1 -timeout 20m ./integration/...

demo: deps build
	@scripts/demo.sh
	@scripts/demo-snapshots.sh

# BENCH_FLAGS, e.g. '-run snapshot -n 9', go to the bench (see its doc.go).
# Static like qchain: the bench's binary also runs the direct checkpoint
# client, timed against qchain.
bench: deps build
	CGO_ENABLED=0 $(GO) run ./integration/bench $(BENCH_FLAGS)

fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf bin
