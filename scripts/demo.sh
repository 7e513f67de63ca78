#!/usr/bin/env bash
# Demo: build Keel, start a private containerd configured for it in a temp
# dir (never the machine's own), import the busybox test image and run
#   ctr run --rm --runtime io.containerd.keel.v2 docker.io/library/busybox:keel demo-N echo hello from keel
# then stop containerd and clean up.
#
# KEEL_DEMO_CONTAINERD=1.6|1.7|2.2|2.4 picks the containerd (default 2.4).
# It never installs or starts a system containerd, nor replaces a runc:
# install-deps.sh provides only the chosen version, privately in
# $KEEL_CONTAINERD_PREFIX, and says what it used and what it did.
#
# KEEL_DEMO_RUNTIME=io.containerd.runc.v2 runs the same demo on the reference shim.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
prefix_override=${KEEL_CONTAINERD_PREFIX:-}
. scripts/containerd-versions.env
KEEL_CONTAINERD_PREFIX=${prefix_override:-$KEEL_CONTAINERD_PREFIX}
version=${KEEL_DEMO_CONTAINERD:-2.4}
runtime=${KEEL_DEMO_RUNTIME:-io.containerd.keel.v2}
ref=docker.io/library/busybox:keel
ns=keeldemo
id="demo-$$"

case $version in
1.6) bin="$KEEL_CONTAINERD_PREFIX/containerd-debian/bin" cfgversion=2 ;;
1.7) bin="$KEEL_CONTAINERD_PREFIX/containerd-$KEEL_CONTAINERD_V17/bin" cfgversion=2 ;;
2.2) bin="$KEEL_CONTAINERD_PREFIX/containerd-$KEEL_CONTAINERD_V22/bin" cfgversion=3 ;;
2.4) bin="$KEEL_CONTAINERD_PREFIX/containerd-$KEEL_CONTAINERD_V24/bin" cfgversion=3 ;;
*) echo "demo: KEEL_DEMO_CONTAINERD must be 1.6, 1.7, 2.2 or 2.4" >&2; exit 2 ;;
esac

step() { echo; echo "==> $*"; }

step "installing dependencies"
KEEL_DEPS_CONTAINERD=$version bash scripts/install-deps.sh
step "building Keel (make build)"
make build

# Short dir: unix socket paths must stay under 108 bytes.
dir=$(mktemp -d /tmp/keel-demo-XXXX)
ctr() { "$bin/ctr" -a "$dir/c.sock" -n "$ns" "$@"; }
cleanup() {
	local rc=$?
	step "cleaning up $dir"
	if [ -n "${cpid:-}" ] && kill -0 "$cpid" 2>/dev/null; then
		ctr task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
		ctr task rm -f "$id" >/dev/null 2>&1 || true
		ctr containers rm "$id" >/dev/null 2>&1 || true
		kill "$cpid"
		wait "$cpid" 2>/dev/null || true
	fi
	if [ $rc != 0 ] && [ -f "$dir/containerd.log" ]; then
		echo "demo failed; last lines of containerd's log (with the shim's):"
		tail -n 40 "$dir/containerd.log"
	fi
	# Deepest mounts first; there are none unless something went wrong.
	grep -o " $dir/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l || true
	rm -rf "$dir"
	rmdir "/run/containerd/runc/$ns" 2>/dev/null || true
	exit $rc
}
trap cleanup EXIT

step "building the busybox image (go run ./integration/cmd/mkimage)"
go run ./integration/cmd/mkimage -o "$dir/busybox.tar"

step "starting containerd $version in $dir"
q='"'
disabled=""
for p in io.containerd.grpc.v1.cri io.containerd.cri.v1.images io.containerd.cri.v1.runtime \
	io.containerd.snapshotter.v1.btrfs io.containerd.snapshotter.v1.zfs \
	io.containerd.snapshotter.v1.devmapper io.containerd.snapshotter.v1.aufs \
	io.containerd.internal.v1.tracing io.containerd.tracing.processor.v1.otlp \
	io.containerd.nri.v1.nri io.containerd.internal.v1.opt; do
	disabled+="${disabled:+, }$q$p$q"
done
cat >"$dir/config.toml" <<EOT
version = $cfgversion
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [$disabled]

[grpc]
  address = "$dir/c.sock"

[ttrpc]
  address = "$dir/c.sock.ttrpc"

[debug]
  level = "debug"
EOT
# Keel's bin/ first: containerd finds containerd-shim-keel-v2 in its PATH.
PATH="$root/bin:$bin:$PATH" "$bin/containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
cpid=$!
for _ in $(seq 100); do
	ctr version >/dev/null 2>&1 && break
	sleep 0.1
done
ctr version 2>/dev/null | sed -n '/Server/,$p'

step "importing $ref"
ctr images import "$dir/busybox.tar"

step "ctr run --rm --runtime $runtime $ref $id echo hello from keel"
out=$(ctr run --rm --runtime "$runtime" "$ref" "$id" echo hello from keel)
echo "$out"
[ "$out" = "hello from keel" ]
step "demo OK"
