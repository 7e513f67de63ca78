#!/usr/bin/env bash
# Installs what Keel's build, tests and demo need, and only what is missing,
# without touching what the machine already runs:
#  - Debian packages that start no service: busybox-static (the test
#    image), crun, criu, tmux (terminal tests), e2fsprogs, fuse3 and
#    fuse-overlayfs (rootfs mount tests), and runc only if no runc is on
#    PATH (Docker's containerd.io ships its own, and conflicts with it);
#  - Debian's containerd 1.6 (the oldest version Keel supports), unpacked
#    from its .deb into $KEEL_CONTAINERD_PREFIX/containerd-debian/bin, never
#    installed as a package: no containerd.service is started, and a
#    containerd the machine has (Debian's, Docker's containerd.io, a
#    tarball's) is left as it is;
#  - containerd v1.7 and v2.x, built from source into
#    $KEEL_CONTAINERD_PREFIX/containerd-<version>/bin (versions pinned in
#    scripts/containerd-versions.env). The three builds run in parallel:
#    about 5 min on 4 cores, 12 on 2.
#
# --dry-run (or KEEL_DEPS_DRY_RUN=1) only says what it would do;
# KEEL_DEPS_CONTAINERD=2.4 (a comma-separated list of 1.6, 1.7, 2.2, 2.4)
# provides only those containerd versions (the demo needs one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
prefix_override=${KEEL_CONTAINERD_PREFIX:-}
# shellcheck source=containerd-versions.env
. "$here/containerd-versions.env"
# KEEL_CONTAINERD_PREFIX in the environment wins (the Go tests honour it too).
KEEL_CONTAINERD_PREFIX=${prefix_override:-$KEEL_CONTAINERD_PREFIX}
dry=${KEEL_DEPS_DRY_RUN:-}
[ "${1:-}" = "--dry-run" ] && dry=1
wanted=",${KEEL_DEPS_CONTAINERD:-1.6,1.7,2.2,2.4},"
# wants VERSION (v2.4.2 or 1.6): whether KEEL_DEPS_CONTAINERD asks for it.
wants() {
	local v=${1#v}
	case $wanted in *",${v%.*},"*) return 0 ;; esac
	return 1
}

log() { echo "install-deps: $*"; }
# run CMD...: does it, or with --dry-run says it would.
run() {
	if [ -n "$dry" ]; then
		log "would run: $*"
	else
		"$@"
	fi
}

if [ "$(id -u)" != 0 ] && [ -z "$dry" ]; then
	echo "install-deps: must run as root (apt-get install, $KEEL_CONTAINERD_PREFIX)" >&2
	exit 1
fi

if found=$(command -v containerd); then
	log "leaving the machine's containerd alone: $found ($("$found" --version 2>/dev/null || echo 'version unknown'))"
fi
packages=(busybox-static crun criu tmux e2fsprogs fuse3 fuse-overlayfs)
if found=$(command -v runc); then
	log "using the runc already here: $found"
else
	packages+=(runc)
fi
missing=()
for pkg in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$pkg")
	fi
done
apt_updated=
apt_update() {
	[ -n "$apt_updated" ] || run apt-get update
	apt_updated=1
}
if [ ${#missing[@]} -gt 0 ]; then
	log "apt-get install ${missing[*]}"
	apt_update
	# No package here has a service to start, but should one: a
	# policy-rc.d that says no keeps it from starting during the install.
	policy=/usr/sbin/policy-rc.d
	if [ -z "$dry" ] && [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	run env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
	log "Debian packages already installed"
fi

# Debian's containerd 1.6, unpacked privately: its binaries, no service.
debian_bin="$KEEL_CONTAINERD_PREFIX/containerd-debian/bin"
if ! wants 1.6.x; then
	:
elif [ -x "$debian_bin/containerd" ] && "$debian_bin/containerd" --version | grep -q ' 1\.6\.'; then
	log "Debian's containerd 1.6 already in $debian_bin"
else
	log "unpacking Debian's containerd 1.6 package into $debian_bin (not installing it)"
	if [ -z "$dry" ]; then
		apt_update
		work=$(mktemp -d)
		(cd "$work" && apt-get download containerd && dpkg-deb -x containerd_*.deb root)
		mkdir -p "$debian_bin"
		for b in containerd ctr containerd-shim-runc-v2; do
			install -m 0755 "$work/root/usr/bin/$b" "$debian_bin/$b"
		done
		rm -rf "$work"
		"$debian_bin/containerd" --version
	fi
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
	wants "$version" || continue
	if have_containerd "$version"; then
		log "containerd $version already in $KEEL_CONTAINERD_PREFIX/containerd-$version/bin"
		continue
	fi
	log "building containerd $version into $KEEL_CONTAINERD_PREFIX/containerd-$version (log: /tmp/keel-build-containerd-$version.log)"
	[ -z "$dry" ] || continue
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
