#!/usr/bin/env bash
# arm64-deps.sh: what `make test-arm64` needs to cross build for aarch64 Linux and run the tests
# under user-mode emulation, on a Debian 12 machine as root (or with password-less sudo),
# unattended.
#
#   usage: scripts/arm64-deps.sh [DIR]      (DIR defaults to .deps/check-arm64, ignored by git)
#
# 1. the cross compiler, the arm64 C library and qemu-user, with apt-get if they are missing;
# 2. Check and libsubunit for arm64, unpacked (not installed) into DIR with Debian's multiarch
#    packages, so the Makefile links them statically from DIR/usr/lib/aarch64-linux-gnu. That
#    needs arm64 added to dpkg's architectures (`dpkg --add-architecture arm64`) for apt to know
#    the arm64 package lists; nothing arm64 is installed into the system.
# Running it again when everything is there does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.deps/check-arm64}
triplet=aarch64-linux-gnu
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    sudo=(none)
fi
need_root() {
    if [ "${sudo[*]}" = none ]; then
        echo "arm64-deps.sh: $1 needs root (or password-less sudo); as root run: $2" >&2
        exit 1
    fi
}
updated=0
apt_update() {
    [ "$updated" = 1 ] && return 0
    timeout 600 "${sudo[@]}" apt-get update -qq </dev/null >/dev/null
    updated=1
}

# 1. the toolchain and the emulator
missing=()
command -v $triplet-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/$triplet/include/stdio.h ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    need_root "installing ${missing[*]}" "apt-get install -y ${missing[*]}"
    echo "arm64-deps.sh: installing ${missing[*]} with apt-get ..." >&2
    if ! timeout 900 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null 2>&1; then
        apt_update
        timeout 900 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
    fi
fi

# 2. Check for arm64, unpacked into DIR
if [ -f "$dir/usr/include/check.h" ] && [ -f "$dir/usr/lib/$triplet/libcheck_pic.a" ] &&
    [ -f "$dir/usr/lib/$triplet/libsubunit.a" ]; then
    exit 0
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    need_root "adding arm64 to dpkg's architectures" "dpkg --add-architecture arm64 && apt-get update"
    "${sudo[@]}" dpkg --add-architecture arm64
    updated=0 # the arm64 package lists are not there yet
    apt_update
fi
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
pkgs=(check:arm64 libsubunit0:arm64 libsubunit-dev:arm64)
# apt-get download runs as the calling user and writes into the current folder
if ! (cd "$dl" && apt-get download "${pkgs[@]}" </dev/null >/dev/null 2>&1); then
    need_root "updating apt's package lists" "apt-get update"
    apt_update
    (cd "$dl" && apt-get download "${pkgs[@]}" </dev/null >/dev/null)
fi
mkdir -p "$dir"
for f in "$dl"/*.deb; do dpkg -x "$f" "$dir"; done
if [ ! -f "$dir/usr/include/check.h" ] || [ ! -f "$dir/usr/lib/$triplet/libcheck_pic.a" ]; then
    echo "arm64-deps.sh: the unpacked packages have no $dir/usr/lib/$triplet/libcheck_pic.a" >&2
    exit 1
fi
echo "arm64-deps.sh: Check for arm64 unpacked under $dir" >&2
