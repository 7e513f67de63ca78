# Keel: containerd runtime v2 shim (io.containerd.keel.v2).

GO      ?= go
PREFIX  ?= /usr/local
SHIM    := containerd-shim-keel-v2
BIN     := bin/$(SHIM)

# Unit tests cover every package but the end-to-end ones, so packages can be
# added (or not exist yet) without touching this file.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/integration')

.PHONY: all build test vet test-unit test-integration install deps demo clean

all: build

build:
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/$(SHIM)

vet:
	$(GO) vet ./...

test-unit:
	$(GO) test -race $(UNIT_PKGS)

# Needs root; runs against containerd 1.6, 2.2 and 2.4 (scripts/install-deps.sh).
# KEEL_TEST_RUNTIME=io.containerd.runc.v2 runs the same tests on the reference shim.
test-integration:
	$(GO) test -count=1 -v -timeout 30m ./integration/...

test: vet test-unit test-integration

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/$(SHIM)

deps:
	bash scripts/install-deps.sh

demo:
	bash scripts/demo.sh

clean:
	rm -rf bin
