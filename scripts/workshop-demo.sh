#!/usr/bin/env bash
# workshop-demo.sh: the engine at work, to watch on its live page -- `make workshop-demo`.
#
#   bash scripts/workshop-demo.sh [BUILD]        (BUILD: the build folder, default build)
#
# Starts `06_batching server` (the built-in random model, or CHECKPOINT=M.bin) with a small pool
# (--max-batch 16 --num-blocks 80), prints the page's address, and replays a half-minute workload
# against it with scripts/server_load.py (the load client of `make bench-server`), round after round:
#
#   0-3 s     60 requests sharing a 96-token system prompt, 20 a second: the queue fills, the batch
#             reaches 16, the prompt's blocks are shared (white marks on the pool), and the pool
#             runs out as the sequences grow: the newest one is preempted, again and again (red in
#             the grid, "preempted" in the waiting queue)
#   to ~20 s  the engine works through the queue, then drains: nothing runs, and the blocks stay
#             cached (grey) under their names
#   20-26 s   60 requests of uniform lengths, 10 a second: the pool fills again, cached blocks are
#             evicted for new ones
#
# (On a 2-core AMD EPYC: the first wave took until 16 s, with 115 preemptions; a round, 31 s.)
# Environment: PORT (8000), HOST (127.0.0.1; 0.0.0.0 lets the room's laptops open the page),
# ROUNDS (0: until Ctrl-C), CHECKPOINT (a llama2.c checkpoint instead of the random model: its
# seq_len must hold 96 + 48 prompt and 320 new tokens). Ctrl-C stops the load and the server.
set -u
BUILD=${1:-build}
PORT=${PORT:-8000} HOST=${HOST:-127.0.0.1} ROUNDS=${ROUNDS:-0}
cd "$(dirname "$(realpath "$0")")/.." || exit 1
PROG=$BUILD/bin/06_batching
[ -x "$PROG" ] || { echo "workshop-demo: $PROG is not built (make)" >&2; exit 1; }
T=$(mktemp -d /tmp/workshop-demo.XXXXXX) || exit 1
SRV_PID="" LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
    if [ -n "$SRV_PID" ]; then
        kill -TERM "$SRV_PID" 2>/dev/null
        wait "$SRV_PID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'echo; echo "workshop-demo: stopped"; exit 0' INT TERM

# The load client's Python (httpx comes with the openai package), as scripts/server-test.sh makes it.
PY=build/venv/bin/python
if ! "$PY" -c 'import httpx' 2>/dev/null && ! "$PY" -c 'import httpx2' 2>/dev/null; then
    echo "workshop-demo: making build/venv with the openai package (for httpx) ..."
    mkdir -p build
    { [ -x "$PY" ] || python3 -m venv build/venv; } && build/venv/bin/pip install -q 'openai>=1.55.3,<3' ||
        { echo "workshop-demo: could not make build/venv (python3-venv, and PyPI, are needed)" >&2; exit 1; }
fi

# The workload: two files of gen-requests, the second shifted to start at 20 s.
"$PROG" gen-requests --out "$T/a.txt" --workload shared-prefix --n 60 --rate 20 --shared-prefix 96 \
    --question-min 16 --question-max 48 --output-median 160 --seed 1 >/dev/null 2>&1 || exit 1
"$PROG" gen-requests --out "$T/b.txt" --workload uniform --n 60 --rate 10 --prompt-median 48 --output-median 96 \
    --seed 2 >/dev/null 2>&1 || exit 1
{ cat "$T/a.txt"; awk '/^#/ || NF == 0 { print; next } { $1 = sprintf("%.3f", $1 + 20); print }' "$T/b.txt"; } \
    >"$T/requests.txt" # (comment lines kept as they are)

"$PROG" server --host "$HOST" --port "$PORT" --max-batch 16 --num-blocks 80 --block-size 16 --idle-timeout 300 \
    ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} >"$T/server.out" 2>"$T/server.err" &
SRV_PID=$!
for ((i = 0; i < 200; i++)); do
    grep -q "listening on" "$T/server.out" && break
    kill -0 "$SRV_PID" 2>/dev/null || { cat "$T/server.err" >&2; exit 1; }
    sleep 0.05
done
URL="http://127.0.0.1:$PORT"
echo "workshop-demo: the engine's live page is at http://$([ "$HOST" = 0.0.0.0 ] && hostname -I | cut -d' ' -f1 || echo "$HOST"):$PORT/"
echo "workshop-demo: a round is 120 requests, about half a minute (a shared-prefix burst, a pause, mixed lengths); Ctrl-C stops"
round=0
while [ "$ROUNDS" -eq 0 ] || [ "$round" -lt "$ROUNDS" ]; do
    round=$((round + 1))
    "$PY" scripts/server_load.py --url "$URL" --requests "$T/requests.txt" >"$T/load.out" 2>"$T/load.err" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    rc=$?
    LOAD_PID=""
    [ $rc -eq 0 ] || { echo "workshop-demo: the load failed: $(tail -n 1 "$T/load.err")" >&2; exit 1; }
    preempt=$(curl -s "$URL/metrics" | sed -n 's/^engine_preemptions_total //p')
    hit=$(curl -s "$URL/metrics" | sed -n 's/^engine_prefix_cache_hit_rate //p')
    echo "workshop-demo: round $round done: $(awk -F'\t' '{printf "%d requests, %.0f tokens/s, TTFT p50 %.2f s", $3, $4, $5}' "$T/load.out"); preemptions so far ${preempt:-?}, prefix cache hit rate ${hit:-?}"
done
