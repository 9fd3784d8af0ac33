#!/usr/bin/env bash
# deps.sh: makes sure the Debian packages a make target needs are present, installing them
# with apt-get when we are root or have password-less sudo, and saying so.
#
#   scripts/deps.sh test   check + pkg-config   (required: stops with the command to run)
#   scripts/deps.sh plot   gnuplot-nox          (optional: without it, plots are skipped)
#   scripts/deps.sh server libmicrohttpd-dev libjansson-dev curl python3-venv
#                                               (optional: without them chapter 06 is built without its
#                                               HTTP server, and the server's tests are left out; make
#                                               test asks for them after Check)
#   scripts/deps.sh mpi    openmpi-bin libopenmpi-dev
#                                               (optional: without them chapter 04's tensor-parallel
#                                               program 04_kvcache_tp and its tests are left out)
#   scripts/deps.sh browser chromium chromium-driver
#                                               (optional: without them the test of chapter 06's live
#                                               page in a headless browser is skipped, and says so)
#   scripts/deps.sh check-prefix DIR
#                          unpacks Check's Debian packages (check, libsubunit0, libsubunit-dev)
#                          into DIR without installing them, for a machine that has no package
#                          registry (the GPU machine: scripts/gpu-check.sh); run it where apt works
#                          and copy DIR along
#
# CHECK_PREFIX=DIR (such an unpacked folder) counts as having Check.
# NO_APT=1 never calls apt-get (a machine without a package registry): it only reports.
set -u
what=${1:?usage: deps.sh test|plot|server|mpi|browser|check-prefix DIR}

# check-prefix DIR: apt-get download (no root needed) and dpkg -x, then check the two files the
# Makefile links against are there.
if [ "$what" = check-prefix ]; then
    dir=${2:?usage: deps.sh check-prefix DIR}
    mkdir -p "$dir" || exit 1
    debs=$(mktemp -d)
    trap 'rm -rf "$debs"' EXIT
    if ! (cd "$debs" && apt-get download check libsubunit0 libsubunit-dev >/dev/null 2>&1); then
        timeout 300 apt-get update -qq >/dev/null 2>&1
        (cd "$debs" && apt-get download check libsubunit0 libsubunit-dev >/dev/null) || {
            echo "deps.sh: apt-get download of check, libsubunit0 and libsubunit-dev failed" >&2
            exit 1
        }
    fi
    for f in "$debs"/*.deb; do dpkg -x "$f" "$dir" || exit 1; done
    for f in "$dir/usr/include/check.h" "$dir/usr/lib/$(gcc -dumpmachine)/libcheck_pic.a"; do
        [ -f "$f" ] || { echo "deps.sh: $f is missing after unpacking" >&2; exit 1; }
    done
    echo "Check unpacked under $dir (use it with CHECK_PREFIX=$dir)"
    exit 0
fi

missing=()
case $what in
test)
    if [ -z "${CHECK_PREFIX:-}" ]; then
        command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
        if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists check 2>/dev/null; then
            missing+=(check)
        fi
    fi
    ;;
plot)
    command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
    ;;
server)
    pkg-config --exists libmicrohttpd 2>/dev/null || missing+=(libmicrohttpd-dev)
    pkg-config --exists jansson 2>/dev/null || missing+=(libjansson-dev)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    ;;
browser)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    ;;
mpi)
    command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
    command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
    ;;
*)
    echo "deps.sh: unknown argument '$what' (expected test, plot, server, mpi, browser or check-prefix DIR)" >&2
    exit 2
    ;;
esac
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${NO_APT:-0}" = 1 ]; then
    sudo=(none)
elif [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    sudo=(none)
fi
if [ "${sudo[*]}" = none ]; then
    if [ "$what" = test ]; then
        echo "make: missing Debian packages: ${missing[*]}. Install them with:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    if [ "$what" = server ]; then
        echo "make: ${missing[*]} not installed, so chapter 06 is built without its HTTP server and its tests are left out; to get them: sudo apt-get install -y ${missing[*]}" >&2
    elif [ "$what" = browser ]; then
        echo "make: ${missing[*]} not installed, so the live page's browser test is skipped; to run it: sudo apt-get install -y ${missing[*]}" >&2
    elif [ "$what" = mpi ]; then
        echo "make: ${missing[*]} not installed, so chapter 04's tensor-parallel program and its tests are left out; to get them: sudo apt-get install -y ${missing[*]}" >&2
    else
        echo "make: ${missing[*]} is not installed, so plots are skipped; to get them: sudo apt-get install -y ${missing[*]}" >&2
    fi
    exit 0
fi

echo "make: installing ${missing[*]} with apt-get (needed by '$what') ..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! timeout 600 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    timeout 300 "${sudo[@]}" apt-get update -qq >/dev/null 2>&1
    if ! timeout 600 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        echo "make: apt-get could not install ${missing[*]}; install them and run make again" >&2
        [ "$what" = test ] && exit 1
        exit 0
    fi
fi
echo "make: installed ${missing[*]}" >&2
