#!/usr/bin/env bash
# server-test.sh: `06_batching server` with real clients -- the official openai Python client and
# curl -- held to the tokens `06_batching serve` printed for the same requests.
#
#   bash scripts/server-test.sh PROGRAM DIR
#
# PROGRAM is a built 06_batching (plain or AddressSanitizer); DIR holds what the Check test
# test_server_with_real_clients (06_batching/test_server.c) writes: model.bin (seq_len 128),
# tok.bin, the requests files ids.txt and text.txt, and serve's output for them, ids.expected and
# text.expected. Every server runs on a free port (--port 0) on the CPU; each is stopped with
# SIGTERM and must exit 0 within a second with no sanitizer report on its stderr (under
# AddressSanitizer, LeakSanitizer makes the exit status non-zero on a leak). The checks, one "ok"
# line per group:
#
#   greedy      every ids.txt request at temperature 0, stream off and on: token_ids equal serve's,
#               the streamed chunks concatenate to the whole text, usage counts right
#   seeded      temperature 0.8 with a seed: the same tokens every time, not the greedy ones
#   sampled     requests each with its own temperature, top_p, top_k and seed (sampled.txt), all
#               streaming at once: serve's tokens for the same file exactly (sampled.expected)
#   many        64 clients streaming at once (AsyncOpenAI): each equal to its solo run
#   disconnect  a client that leaves mid-stream: the others unchanged; /metrics: aborted >= 1,
#               no request running, no KV block used
#   errors      bad requests with curl: 400 (bad JSON, wrong types naming the field, prompts too
#               long, ids out of range, unsupported fields), 404, 405 with Allow, 413 past
#               --max-body; OpenAI's error object each time; the server still answers afterwards
#   text        text prompts on a server with --tokenizer: serve's continuations exactly
#   busy        --max-batch 1 --max-waiting 1 and concurrent requests: 503 with Retry-After: 1
#   idle        --idle-timeout 1: a silent connection is closed by the server
#   connlimit   --max-connections 2 with two connections held: a third is not served (closed, or
#               left waiting to be accepted until one of the two closes)
#   sigterm     SIGTERM with streams open: exit 0 within a second, every stream ends (its line
#               counts how: finished, error event, 503, refused, or cut without the error event)
#
# The clients live in build/venv (made here when missing: python3 -m venv, pip install openai);
# scripts/server_client.py holds the Python side. Prints "server-test: ok ..." per group and a
# summary, or one "server-test: FAIL ..." line (with the server's stderr tail) and exits 1.
set -u

if [ $# -ne 2 ]; then
    echo "usage: bash scripts/server-test.sh PROGRAM DIR (see the comment at its top)" >&2
    exit 2
fi
PROG=$(realpath "$1") DIR=$(realpath "$2")
# the repository itself, also when run through a tree of links (make exercise-6): one build/venv
cd "$(dirname "$(realpath "$0")")/.." || exit 1
T=$(mktemp -d /tmp/server-test.XXXXXX) || exit 1
START=$(date +%s%N)
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
SRV_PID="" SRV_NAME="" SRV_URL="" SRV_PORT="" INFLIGHT=""
CLIENT="scripts/server_client.py"

# On any exit (a failure, or a signal such as the test's time limit): no server left running.
cleanup() {
    if [ -n "$SRV_PID" ]; then
        kill -KILL "$SRV_PID" 2>/dev/null
        wait "$SRV_PID" 2>/dev/null
    fi
    [ -n "$INFLIGHT" ] && kill "$INFLIGHT" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM ALRM

# A group's line, with the seconds since the previous one.
LAST=$(date +%s%N)
ok() {
    local ms
    ms=$(ms_since "$LAST")
    LAST=$(date +%s%N)
    echo "server-test: ok $* [$((ms / 1000)).$((ms % 1000 / 100)) s]"
}

# One line saying what failed, then the current server's stderr tail; exit 1.
fail() {
    echo "server-test: FAIL $*"
    if [ -n "$SRV_NAME" ] && [ -s "$T/$SRV_NAME.err" ]; then
        tail -n 8 "$T/$SRV_NAME.err" | sed "s/^/server-test:   $SRV_NAME stderr: /"
    fi
    exit 1
}

# ==== the Python clients ====================================================================

# build/venv with the openai client: kept when it imports one from 1.55.3 on (1.40 to 1.55.2 fail
# with httpx 0.28, which pip picks; 1.55.3, 2.x and 3.x pass this script), made or upgraded
# otherwise. flock (on build/): two builds testing at once make it once.
VENV=build/venv PY=build/venv/bin/python
have_openai() { # prints the version
    "$PY" -c 'import sys, openai
print(openai.__version__)
sys.exit(tuple(int(x) for x in openai.__version__.split(".")[:3] if x.isdigit()) < (1, 55, 3))' 2>/dev/null
}
if ! OPENAI_VERSION=$(have_openai); then
    mkdir -p build
    (
        flock 9
        have_openai >/dev/null && exit 0
        { [ -x "$PY" ] || python3 -m venv "$VENV"; } && "$VENV/bin/pip" install -q 'openai>=1.55.3,<3'
    ) 9<build >"$T/venv.log" 2>&1
    if ! OPENAI_VERSION=$(have_openai); then
        echo "server-test: FAIL could not make $VENV with the openai client (python3 -m venv; pip install" \
            "'openai>=1.55.3,<3'): $(tail -n 1 "$T/venv.log")"
        exit 1
    fi
fi
# One Python command; its "ok: ..." line becomes this group's line, a FAIL line fails the script.
client() {
    local group=$1 out
    shift
    out=$("$PY" "$CLIENT" "$@" 2>"$T/client.err")
    local rc=$?
    if [ $rc -ne 0 ] || [ "${out#ok: }" = "$out" ]; then
        out=${out#FAIL: }
        fail "$group: ${out:-$(tail -n 1 "$T/client.err")}"
    fi
    ok "$group: ${out#ok: }"
}

# ==== servers ===============================================================================

# start_server NAME [options...]: a server on a free port; sets SRV_PID, SRV_URL, SRV_PORT.
start_server() {
    SRV_NAME=$1
    shift
    "$PROG" server --port 0 --device cpu --checkpoint "$DIR/model.bin" "$@" >"$T/$SRV_NAME.out" 2>"$T/$SRV_NAME.err" &
    SRV_PID=$!
    local tries
    for ((tries = 0; tries < 600; tries++)); do # 30 s: the sanitizer build starts slower
        SRV_PORT=$(sed -n 's|.*listening on http://[^ ]*:\([0-9][0-9]*\) .*|\1|p' "$T/$SRV_NAME.out")
        [ -n "$SRV_PORT" ] && break
        kill -0 "$SRV_PID" 2>/dev/null || fail "$SRV_NAME: the server exited before listening"
        sleep 0.05
    done
    [ -n "$SRV_PORT" ] || fail "$SRV_NAME: no 'listening on' line within 30 s"
    SRV_URL="http://127.0.0.1:$SRV_PORT"
}

# stop_server LIMIT_MS: SIGTERM; the server must exit 0 within LIMIT_MS with a clean stderr.
# Sets STOP_MS, the time it took.
stop_server() {
    local limit=$1 t0 rc
    t0=$(date +%s%N)
    kill -TERM "$SRV_PID"
    (sleep 10 && kill -KILL "$SRV_PID") 2>/dev/null &
    local watchdog=$!
    wait "$SRV_PID" 2>/dev/null # (no "Killed" notice on the script's stderr)
    rc=$?
    STOP_MS=$(ms_since "$t0")
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    SRV_PID=""
    [ $rc -eq 0 ] || fail "$SRV_NAME: exit status $rc after SIGTERM (${STOP_MS} ms), expected 0"
    [ "$STOP_MS" -le "$limit" ] || fail "$SRV_NAME: exited ${STOP_MS} ms after SIGTERM, expected within $limit ms"
    if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error" "$T/$SRV_NAME.err"; then
        fail "$SRV_NAME: a sanitizer report on its stderr"
    fi
}

STOP_LIMIT=1000 # ms: the server's promise, sanitizer build included (its leak check is quick here)

# ==== bad requests with curl ================================================================

N_BAD=0
# expect_error WHAT STATUS PARAM FRAGMENT [curl arguments...]: the answer has STATUS; its body is
# kept and listed in $T/errors for check_error_bodies: OpenAI's error object naming PARAM ('-':
# none) with FRAGMENT in its message.
expect_error() {
    local what=$1 status=$2 param=$3 fragment=$4 code
    shift 4
    N_BAD=$((N_BAD + 1))
    code=$(curl -sS --max-time 20 -o "$T/error$N_BAD.body" -D "$T/headers" -w '%{http_code}' "$@" 2>"$T/curl.err") ||
        fail "errors: $what: curl failed: $(head -n 1 "$T/curl.err")"
    [ "$code" = "$status" ] ||
        fail "errors: $what: status $code, expected $status: $(head -c 300 "$T/error$N_BAD.body")"
    printf '%s\t%s\t%s\t%s\n' "$T/error$N_BAD.body" "$param" "$fragment" "$what ($status)" >>"$T/errors"
}

check_error_bodies() {
    local out
    out=$("$PY" "$CLIENT" error-bodies "$T/errors") || fail "$1: ${out#FAIL: }"
    rm -f "$T/errors"
}

# header NAME VALUE: the last answer carried that header (names case-insensitive).
expect_header() {
    grep -qi "^$1: $2"$'\r'"\?$" "$T/headers" ||
        fail "errors: no '$1: $2' header in: $(tr -d '\r' <"$T/headers" | tr '\n' '|')"
}

bad_requests() {
    local u="$SRV_URL/v1/completions" json=(-H 'Content-Type: application/json')
    expect_error "malformed JSON" 400 - "not valid JSON" "${json[@]}" -d '{"prompt":[1,2' "$u"
    expect_error "not an object" 400 - "must be a JSON object" "${json[@]}" -d '[1,2]' "$u"
    expect_error "max_tokens a string" 400 max_tokens "must be an integer" "${json[@]}" \
        -d '{"prompt":[1],"max_tokens":"ten"}' "$u"
    expect_error "temperature a string" 400 temperature "must be a number" "${json[@]}" \
        -d '{"prompt":[1],"temperature":"hot"}' "$u"
    expect_error "stream a number" 400 stream "true or false" "${json[@]}" -d '{"prompt":[1],"stream":1}' "$u"
    expect_error "prompt missing" 400 prompt "is required" "${json[@]}" -d '{"max_tokens":3}' "$u"
    local long
    long=$(seq -s, 1 129)
    expect_error "prompt of 129 tokens" 400 prompt "more than the model's seq_len 128" "${json[@]}" \
        -d "{\"prompt\":[$long]}" "$u"
    long=$(seq -s, 1 100)
    expect_error "prompt 100 + max_tokens 100" 400 max_tokens "can never run" "${json[@]}" \
        -d "{\"prompt\":[$long],\"max_tokens\":100}" "$u"
    expect_error "id out of range" 400 prompt "outside the vocabulary" "${json[@]}" -d '{"prompt":[1,100000]}' "$u"
    expect_error "negative id" 400 prompt "outside the vocabulary" "${json[@]}" -d '{"prompt":[-1]}' "$u"
    expect_error "text without --tokenizer" 400 prompt "no tokenizer" "${json[@]}" -d '{"prompt":"hello"}' "$u"
    expect_error "n 2" 400 n "must be 1" "${json[@]}" -d '{"prompt":[1],"n":2}' "$u"
    expect_error "stop" 400 stop "not supported" "${json[@]}" -d '{"prompt":[1],"stop":["x"]}' "$u"
    expect_error "top_p 0" 400 top_p "more than 0" "${json[@]}" -d '{"prompt":[1],"top_p":0}' "$u"
    expect_error "unknown model" 404 model "does not exist" "${json[@]}" -d '{"model":"gpt-4","prompt":[1]}' "$u"
    expect_error "unknown path" 404 - "no route" "$SRV_URL/v2/nothing"
    expect_error "GET /v1/completions" 405 - "use POST" "$u"
    expect_header Allow POST
    expect_error "POST /metrics" 405 - "use GET" -d '{}' "$SRV_URL/metrics"
    expect_header Allow GET
    printf '{"prompt":[1],"user":"%05000d"}' 0 >"$T/big.json" # 5 kB, past --max-body 4096
    expect_error "a body of 5 kB" 413 - "--max-body 4096" "${json[@]}" --data-binary "@$T/big.json" "$u"
    check_error_bodies errors
    local counted
    counted=$("$PY" "$CLIENT" counter "$SRV_URL" 'engine_requests_total{outcome="bad_request"}') ||
        fail "errors: ${counted#FAIL: }"
    [ "$counted" = "$N_BAD" ] || fail "errors: /metrics counts $counted bad requests, $N_BAD were sent"
}

# ==== 503 when the queue is full ============================================================

# 10 requests at once to a server that runs one and lets one wait: some must get 503.
busy() {
    local k n200=0 n503=0 code pids=()
    for k in $(seq 1 10); do
        curl -sS --max-time 60 -o "$T/busy$k.body" -D "$T/busy$k.headers" -w '%{http_code}' \
            -d "{\"prompt\":[$k],\"max_tokens\":120,\"temperature\":0}" "$SRV_URL/v1/completions" \
            >"$T/busy$k.code" 2>/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    for k in $(seq 1 10); do
        code=$(cat "$T/busy$k.code")
        case $code in
        200)
            n200=$((n200 + 1))
            grep -q '"completion_tokens":120' "$T/busy$k.body" || fail "busy: a 200 without its 120 tokens"
            ;;
        503)
            n503=$((n503 + 1))
            grep -qi '^Retry-After: 1'$'\r''\?$' "$T/busy$k.headers" || fail "busy: a 503 without 'Retry-After: 1'"
            printf '%s\t-\t--max-waiting 1\t503\n' "$T/busy$k.body" >>"$T/errors"
            ;;
        *) fail "busy: request $k answered $code, expected 200 or 503: $(head -c 300 "$T/busy$k.body")" ;;
        esac
    done
    [ $n503 -ge 1 ] || fail "busy: no 503 among 10 requests at once (--max-batch 1 --max-waiting 1)"
    check_error_bodies busy
    [ $n200 -ge 1 ] || fail "busy: none of 10 requests answered 200"
    local counted
    counted=$("$PY" "$CLIENT" counter "$SRV_URL" 'engine_requests_total{outcome="rejected_busy"}') ||
        fail "busy: ${counted#FAIL: }"
    [ "$counted" = "$n503" ] || fail "busy: /metrics counts $counted rejected_busy, $n503 got 503"
    BUSY="10 requests at once (--max-batch 1 --max-waiting 1): $n200 answered 200, $n503 got 503 with Retry-After: 1"
}

# ==== the checks ============================================================================

IDS="$DIR/ids.txt" IDS_EXP="$DIR/ids.expected"
for f in model.bin tok.bin ids.txt ids.expected text.txt text.expected; do
    [ -s "$DIR/$f" ] || fail "setup: $DIR/$f is missing or empty"
done

start_server ids --max-body 4096
client greedy greedy "$SRV_URL" "$IDS" "$IDS_EXP"
client seeded seeded "$SRV_URL" "$IDS"
client sampled sampled "$SRV_URL" "$DIR/sampled.txt" "$DIR/sampled.expected"
client many many "$SRV_URL" "$IDS" "$IDS_EXP" --clients 64
client disconnect disconnect "$SRV_URL" "$IDS" "$IDS_EXP"
bad_requests
out=$("$PY" "$CLIENT" greedy "$SRV_URL" "$IDS" "$IDS_EXP" --limit 2) || fail "errors: after them: ${out#FAIL: }"
ok "errors: $N_BAD bad requests answered 400/404/405/413 with OpenAI's error object naming the field;" \
    "the server still answers (2 greedy requests equal serve's)"
stop_server "$STOP_LIMIT"
STOPS="ids ${STOP_MS} ms"

start_server text --tokenizer "$DIR/tok.bin"
client text text "$SRV_URL" "$DIR/text.txt" "$DIR/text.expected"
stop_server "$STOP_LIMIT"
STOPS="$STOPS, text ${STOP_MS} ms"

start_server busy --max-batch 1 --max-waiting 1
busy
ok "busy: $BUSY"
stop_server "$STOP_LIMIT"
STOPS="$STOPS, busy ${STOP_MS} ms"

start_server idle --idle-timeout 1
client idle idle 127.0.0.1 "$SRV_PORT"
stop_server "$STOP_LIMIT"
STOPS="$STOPS, idle ${STOP_MS} ms"

start_server connlimit --max-connections 2
client connlimit connlimit 127.0.0.1 "$SRV_PORT"
stop_server "$STOP_LIMIT"
STOPS="$STOPS, connlimit ${STOP_MS} ms"

# SIGTERM while 32 streams are open (one running at a time, the others waiting): the client
# writes $T/ready once a stream has two chunks; the server must then stop at once.
start_server sigterm --max-batch 1
"$PY" "$CLIENT" inflight "$SRV_URL" "$T/ready" 32 >"$T/inflight.out" 2>"$T/client.err" &
INFLIGHT=$!
for ((tries = 0; tries < 3000; tries++)); do # 60 s
    [ -e "$T/ready" ] && break
    kill -0 "$INFLIGHT" 2>/dev/null || break
    sleep 0.02
done
[ -e "$T/ready" ] || fail "sigterm: the streams did not start: $(cat "$T/inflight.out") $(tail -n 1 "$T/client.err")"
stop_server "$STOP_LIMIT"
STOPS="$STOPS, sigterm with streams open ${STOP_MS} ms"
wait "$INFLIGHT"
INFLIGHT=""
out=$(cat "$T/inflight.out")
if [ "${out#ok: }" = "$out" ]; then
    out=${out#FAIL: }
    fail "sigterm: ${out:-$(tail -n 1 "$T/client.err")}"
fi
ok "sigterm: ${out#ok: }; the server exited 0 after ${STOP_MS} ms"

ok "stops: every server exited 0 after SIGTERM within $STOP_LIMIT ms ($STOPS), no sanitizer report"
echo "server-test: all checks passed in $(($(ms_since "$START") / 1000)) s (${PROG#"$PWD"/}, openai $OPENAI_VERSION)"
