#!/usr/bin/env bash
# Installs what Keel's build, tests and demo need, and only what is missing:
#  - Debian packages: runc, containerd (1.6, the oldest version we support),
#    busybox-static (the test image), crun and criu;
#  - containerd v1.7 and v2.x, built from source into
#    $KEEL_CONTAINERD_PREFIX/containerd-<version>/bin (versions pinned in
#    scripts/containerd-versions.env). The three builds run in parallel:
#    about 5 min on 4 cores, 12 on 2.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix_override=${KEEL_CONTAINERD_PREFIX:-}
# shellcheck source=containerd-versions.env
. "$here/containerd-versions.env"
# KEEL_CONTAINERD_PREFIX in the environment wins (the Go tests honour it too).
KEEL_CONTAINERD_PREFIX=${prefix_override:-$KEEL_CONTAINERD_PREFIX}

log() { echo "install-deps: $*"; }

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: must run as root (apt-get install, $KEEL_CONTAINERD_PREFIX)" >&2
	exit 1
fi

missing=()
for pkg in runc containerd busybox-static crun criu; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$pkg")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	log "apt-get install ${missing[*]}"
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
	log "Debian packages already installed"
fi

# build_containerd VERSION: build containerd, ctr and the runc shim of that
# release. It builds into a temp dir and renames it into place, so an
# interrupted build is never taken for a complete one.
build_containerd() {
	local version=$1
	local dest="$KEEL_CONTAINERD_PREFIX/containerd-$version"
	local tmp="$dest.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp/bin"
	case $version in
	v1.*)
		# `go install pkg@version` refuses modules whose go.mod has
		# exclude (or replace) directives, as 1.7's has: build in a
		# writable copy of the module instead, letting go resolve its
		# go.mod as a main module does.
		local dir
		dir=$(cd "$tmp" && go mod download -json "github.com/containerd/containerd@$version" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
		if [ -z "$dir" ] || [ ! -d "$dir" ]; then
			echo "go mod download github.com/containerd/containerd@$version gave no module dir" >&2
			return 1
		fi
		cp -r "$dir" "$tmp/src"
		chmod -R u+w "$tmp/src"
		(cd "$tmp/src" && go build -mod=mod -o "$tmp/bin/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2)
		rm -rf "$tmp/src"
		;;
	*)
		GOBIN="$tmp/bin" go install \
			"github.com/containerd/containerd/v2/cmd/containerd@$version" \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$version" \
			"github.com/containerd/containerd/v2/cmd/ctr@$version"
		;;
	esac
	rm -rf "$dest"
	mv "$tmp" "$dest"
}

have_containerd() {
	local bin="$KEEL_CONTAINERD_PREFIX/containerd-$1/bin"
	[ -x "$bin/containerd" ] && [ -x "$bin/ctr" ] && [ -x "$bin/containerd-shim-runc-v2" ] &&
		"$bin/containerd" --version | grep -q " ${1#v}"
}

pids=()
versions=()
for version in "$KEEL_CONTAINERD_V17" "$KEEL_CONTAINERD_V22" "$KEEL_CONTAINERD_V24"; do
	if have_containerd "$version"; then
		log "containerd $version already in $KEEL_CONTAINERD_PREFIX/containerd-$version/bin"
		continue
	fi
	log "building containerd $version (log: /tmp/keel-build-containerd-$version.log)"
	mkdir -p "$KEEL_CONTAINERD_PREFIX"
	build_containerd "$version" >"/tmp/keel-build-containerd-$version.log" 2>&1 &
	pids+=($!)
	versions+=("$version")
done
failed=0
for i in "${!pids[@]}"; do
	if wait "${pids[$i]}"; then
		log "built containerd ${versions[$i]}"
	else
		log "building containerd ${versions[$i]} FAILED:"
		cat "/tmp/keel-build-containerd-${versions[$i]}.log" >&2
		failed=1
	fi
done
exit $failed
