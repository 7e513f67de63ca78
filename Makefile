# Keel: containerd runtime v2 shim (io.containerd.keel.v2).

GO      ?= go
PREFIX  ?= /usr/local
SHIM    := containerd-shim-keel-v2
BIN     := bin/$(SHIM)

# Unit tests cover every package but the end-to-end ones, so packages can be
# added (or not exist yet) without touching this file.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/integration')

.PHONY: all build test vet test-unit test-integration test-cri test-race-shim test-stress bench install deps demo clean

all: build

# -buildvcs=auto: `-v` and `-info` name the git commit of a build from a
# checkout (a GOFLAGS=-buildvcs=false in the environment would drop it).
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/$(SHIM)

vet:
	$(GO) vet ./...

test-unit:
	$(GO) test -race $(UNIT_PKGS)

# Needs root; runs against containerd 1.6, 1.7, 2.2 and 2.4 (scripts/install-deps.sh),
# each started as systemd starts it, with its own default config and the CRI.
# KEEL_TEST_RUNTIME=io.containerd.runc.v2 runs the same tests on the reference shim;
# KEEL_TEST_VERSIONS=2.4,1.7 narrows the versions. -parallel 4: tests that
# mostly wait for containerd to come back run their four versions at once.
test-integration:
	$(GO) test -count=1 -v -parallel 4 -timeout 30m ./integration/...

# Needs root: only the Kubernetes path (pods through each version's CRI),
# part of test-integration; about 10 s per containerd version.
test-cri:
	$(GO) test -count=1 -v -timeout 10m -run '^TestCRI' ./integration/

# Needs root: 1000 execs in one container and 50 containers at once, on
# containerd 2.4; checks the shim's fds, goroutines and live heap stay flat.
test-stress:
	KEEL_STRESS=1 $(GO) test -count=1 -v -timeout 20m -run 'TestStress' ./integration/

# Needs root: the lifecycle, event, exec, stdio, restart and CRI tests on
# containerd 2.4 with the shim built with -race; a data race any shim
# reports fails the run.
test-race-shim:
	KEEL_SHIM_RACE=1 KEEL_TEST_VERSIONS=2.4 $(GO) test -count=1 -v -timeout 20m \
		-run '^(TestRun|TestTaskLifecycle|TestEvents|TestExitOrderWithExecs|TestExecStdio|TestCloseIO|TestOOM$$|TestContainerdRestart|TestShimKilledReportsExit|TestCRIPod)' ./integration/

test: vet test-unit test-integration test-race-shim test-stress

# Needs root. Benchmarks Keel (the stripped build above) against
# containerd-shim-runc-v2 of the same containerd built as containerd's releases
# build it (CGO_ENABLED=0, -trimpath, -s -w; built once and cached in
# /opt/keel/bench-ref-<version>; Debian's own for 1.6), in one daemon: idle
# footprint with a breakdown of one shim's memory, `ctr run --rm` latency,
# time to running, create+start+exit and exec against a raw runc floor
# (with runtime invocations counted), one process start-up (`-v`) of each
# shim against a bare Go program, 1 GiB of stdout to a file and to FIFOs
# with 4 KiB, 64 KiB and 1 MiB writes.
# Go repeats one sub-benchmark's -count runs back to back, so the rounds
# (keel, runc; runc, keel; ...) come from KEEL_BENCH_ROUNDS instead.
# Raw output in bench.out, table of medians and keel/runc ratios in bench.txt.
# KEEL_BENCH_VERSIONS=1.6,2.4 adds containerd 1.6 (default: 2.4).
BENCH_ROUNDS  ?= 5
BENCH_RUNS    ?= 20
BENCH_ENV      = KEEL_SHIM_BINARY=$(CURDIR)/$(BIN) KEEL_BENCH_ROUNDS=$(BENCH_ROUNDS)
bench: SHELL := /bin/bash
bench: .SHELLFLAGS := -o pipefail -c
bench: build
	$(BENCH_ENV) $(GO) test -run '^$$' -bench 'Footprint|Stdout' -benchtime 1x -count 1 -timeout 0 ./integration/ | tee bench.out
	$(BENCH_ENV) $(GO) test -run '^$$' -bench 'StartExit|Overhead|ProcessStart' -benchtime $(BENCH_RUNS)x -count 1 -timeout 0 ./integration/ | tee -a bench.out
	$(GO) run ./integration/cmd/benchsum < bench.out | tee bench.txt

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/$(SHIM)

deps:
	bash scripts/install-deps.sh

demo:
	bash scripts/demo.sh

clean:
	rm -rf bin
