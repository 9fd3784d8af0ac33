#!/usr/bin/env bash
# page-test.sh: chapter 06's live page (06_batching/page.html, served at / by `06_batching server`)
# in a real browser: Debian's headless chromium, driven by Selenium (PyPI, in build/venv) through
# Debian's chromedriver -- no browser is downloaded.
#
#   bash scripts/page-test.sh PROGRAM MODEL.bin
#
# PROGRAM is a built 06_batching (plain or AddressSanitizer), MODEL.bin a small checkpoint
# (06_batching/test_server.c's test_the_live_page writes one: seq_len 128). Two servers, each on a
# free port on the CPU, each stopped with SIGTERM (exit 0, no sanitizer report):
#
#   live   --max-batch 12 --num-blocks 40: twelve clients with one shared prompt prefix fill the
#          pool, share blocks and preempt; scripts/page_test.py live checks the page against
#          /metrics and every /state against the engine's invariants (see its docstring)
#   big    --max-batch 256 --num-blocks 4096: 256 requests at once; page_test.py big checks every
#          block and sequence is drawn and prints the page's draw time per update
#
# Screenshots (the test's artifacts): build/artifacts/page-live.png and page-big.png. Without
# chromium or chromedriver the test says so and is skipped (exit 0): `make test` installs them as
# root (scripts/deps.sh browser), CI too. Prints "page-test: ok ..." per server, or one
# "page-test: FAIL ..." line and exits 1.
set -u
if [ $# -ne 2 ]; then
    echo "usage: bash scripts/page-test.sh PROGRAM MODEL.bin (see the comment at its top)" >&2
    exit 2
fi
PROG=$(realpath "$1") MODEL=$(realpath "$2")
cd "$(dirname "$(realpath "$0")")/.." || exit 1
T=$(mktemp -d /tmp/page-test.XXXXXX) || exit 1
SRV_PID=""
cleanup() {
    [ -n "$SRV_PID" ] && kill -KILL "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM ALRM
fail() {
    echo "page-test: FAIL $*"
    [ -s "$T/server.err" ] && tail -n 8 "$T/server.err" | sed "s/^/page-test:   server stderr: /"
    exit 1
}

CHROMIUM=$(command -v chromium || true) DRIVER=$(command -v chromedriver || true)
if [ -z "$CHROMIUM" ] || [ -z "$DRIVER" ]; then
    echo "page-test: skipped: the browser test needs Debian's chromium and chromium-driver (sudo apt-get install -y chromium chromium-driver; make test installs them as root)"
    exit 0
fi

# build/venv with Selenium (server-test.sh makes the venv with the openai client; either may come
# first). flock: two builds testing at once install it once.
VENV=build/venv PY=build/venv/bin/python
if ! "$PY" -c 'import selenium' 2>/dev/null; then
    mkdir -p build
    (
        flock 9
        "$PY" -c 'import selenium' 2>/dev/null && exit 0
        { [ -x "$PY" ] || python3 -m venv "$VENV"; } && "$VENV/bin/pip" install -q 'selenium>=4.11,<5'
    ) 9<build >"$T/venv.log" 2>&1
    "$PY" -c 'import selenium' 2>/dev/null ||
        fail "could not make $VENV with Selenium (pip install 'selenium>=4.11,<5'): $(tail -n 1 "$T/venv.log")"
fi
mkdir -p build/artifacts

# start_server [options...]: a server on a free port; sets SRV_PID and URL.
start_server() {
    # one OpenMP thread: on a 2-core machine the browser gets the other core, as it would on its own
    # machine in a workshop (the page's draw time is measured, not the engine's)
    OMP_NUM_THREADS=1 "$PROG" server --port 0 --device cpu --checkpoint "$MODEL" "$@" >"$T/server.out" \
        2>"$T/server.err" &
    SRV_PID=$!
    local port="" tries
    for ((tries = 0; tries < 600; tries++)); do
        port=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\) .*|\1|p' "$T/server.out")
        [ -n "$port" ] && break
        kill -0 "$SRV_PID" 2>/dev/null || fail "the server exited before listening"
        sleep 0.05
    done
    [ -n "$port" ] || fail "no 'listening on' line within 30 s"
    URL="http://127.0.0.1:$port"
}

stop_server() {
    kill -TERM "$SRV_PID"
    wait "$SRV_PID"
    local rc=$?
    SRV_PID=""
    [ $rc -eq 0 ] || fail "the server exited with status $rc after SIGTERM"
    grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error" "$T/server.err" && fail "a sanitizer report on its stderr"
    return 0
}

# check MODE: page_test.py MODE against the running server; its "ok: ..." line becomes ours.
check() {
    local out
    out=$("$PY" scripts/page_test.py "$1" "$URL" "build/artifacts/page-$1.png" "$CHROMIUM" "$DRIVER" 2>"$T/client.err")
    local rc=$?
    if [ $rc -ne 0 ] || [ "${out#ok: }" = "$out" ]; then
        out=${out#FAIL: }
        fail "$1: ${out:-$(tail -n 3 "$T/client.err")}"
    fi
    echo "page-test: ok $1: ${out#ok: }"
}

start_server --max-batch 12 --num-blocks 40
check live
stop_server
start_server --max-batch 256 --max-waiting 256 --max-connections 300 --num-blocks 4096
check big
stop_server
