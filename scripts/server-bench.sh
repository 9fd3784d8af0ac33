#!/usr/bin/env bash
# server-bench.sh BUILD_DIR [--quick]: chapter 06's server measured from the client's side, beside
# the in-process 'serve' of the same requests.
#
# What it teaches: what an HTTP front end costs a continuously batched engine. It starts
# 'BUILD_DIR/bin/06_batching server --port 0' (the built-in random model) and drives it with
# scripts/server_load.py (streaming clients, Python + httpx), then serves the same requests file
# in-process with '06_batching serve' (simulated clock: the engine's clock advances by each
# iteration's measured time and jumps over idle gaps). Three measurements:
#   (a) a rate sweep: for each Poisson rate one requests file (the same seed, so the same requests
#       at every rate), one 'http' row (open loop, server_load.py) and one 'in-process' row;
#       stdout and BUILD_DIR/bench/06_batching_server.dat, plotted by 06_batching/plot_server.gp
#       into BUILD_DIR/plots/06_batching_server.png;
#   (b) throughput with C concurrent streaming clients (closed loop, C = 64, 32 with --quick: at
#       least the server's max batch of 32) against in-process serve of the same requests all
#       arriving at time 0: both keep the batch full until the last requests drain;
#   (c) at low load (1 request per second, short outputs): the mean TTFT the clients measured
#       minus the mean TTFT the server measured for the same requests (its /metrics histogram,
#       from the request's arrival in the engine's queue to its first token): the time the HTTP
#       layer adds, both ways, in one run (no run-to-run noise in the difference). The TTFT p50 of
#       in-process serve is printed beside it for reference only: a separate run, whose engine never
#       sits idle between requests (its clock jumps), while the server waits about a second.
#   (b) also prints how long the server's engine thread ran on a core during the HTTP run and how
#       often it was preempted: on 2 cores it shares them with the connection threads and clients.
# Fairness: the engine runs on ENGINE_THREADS OpenMP threads (default 1) in both modes, and the
# load generator has the other core: on 2 cores a second engine thread would share a core with
# the clients, and the HTTP side would lose compute that in-process serve keeps. Prefix caching is
# off in both: the server would otherwise keep the blocks of one rate's requests and the next
# rate (the same prompts) would skip their prefill, while each 'serve' starts empty. Every HTTP
# request's ids are checked against in-process serve's (greedy: the same tokens).
# Needs gnuplot and a virtualenv with httpx (made at build/venv with the openai package if missing;
# PYTHON=... uses another interpreter that has httpx). --quick: every part smaller.
set -euo pipefail

fail() { echo "server-bench.sh: $*" >&2; exit 1; }

usage="usage: scripts/server-bench.sh BUILD_DIR [--quick]"
QUICK=0
case $# in
    1) ;;
    2) [ "$2" = --quick ] || fail "$usage"; QUICK=1 ;;
    *) fail "$usage" ;;
esac
BUILD_DIR=$1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$BUILD_DIR/bin/06_batching
[ -x "$BIN" ] || fail "$BIN is not built (make BUILD=$BUILD_DIR $BIN)"
"$BIN" server --help >/dev/null 2>&1 || fail "$BIN has no 'server' (built without libmicrohttpd and jansson?)"
command -v gnuplot >/dev/null || fail "gnuplot is not installed (make deps-plot)"

has_httpx() { [ -x "$1" ] && { "$1" -c "import httpx2" 2>/dev/null || "$1" -c "import httpx" 2>/dev/null; }; }
if [ -z "${PYTHON:-}" ]; then
    PYTHON=$ROOT/build/venv/bin/python
    if ! has_httpx "$PYTHON"; then
        echo "server-bench.sh: installing the openai package (with httpx) into build/venv" >&2
        { python3 -m venv "$ROOT/build/venv" && "$ROOT/build/venv/bin/pip" install -q 'openai>=1.55.3,<3'; } >&2 ||
            fail "could not make build/venv with the openai package"
    fi
fi
has_httpx "$PYTHON" || fail "$PYTHON cannot import httpx"
LOAD=("$PYTHON" "$ROOT/scripts/server_load.py")
HEADER=$(printf 'mode\trate\trequests\ttokens_per_s\tttft_p50_s\tttft_p99_s\titl_p50_ms\titl_p99_ms\ttpot_p50_ms\ttpot_p99_ms\tclient_cpu_s')

CORES=$(getconf _NPROCESSORS_ONLN)
THREADS=${ENGINE_THREADS:-1}
export OMP_NUM_THREADS=$THREADS
if [ $QUICK = 1 ]; then
    RATES="4 16"; N_SWEEP=16; N_CONC=32; CONC=32; N_LOW=5; LOW_RATE=2
else
    RATES="2 4 8 16 32"; N_SWEEP=64; N_CONC=128; CONC=64; N_LOW=20; LOW_RATE=1
fi
WORK=$BUILD_DIR/bench/server
DAT=$BUILD_DIR/bench/06_batching_server.dat
PNG=$BUILD_DIR/plots/06_batching_server.png
mkdir -p "$WORK" "$BUILD_DIR/plots"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
echo "machine: ${cpu:-unknown CPU}, $CORES cores; engine on $THREADS thread(s) (OMP_NUM_THREADS) in both modes"

# ---- the server -----------------------------------------------------------------------------
SERVER_PID=
stop_server() { [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
trap 'stop_server || true' EXIT
"$BIN" server --port 0 --prefix-caching off >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
URL=
for _ in $(seq 300); do
    URL=$(grep -o 'listening on http://[^ ]*' "$WORK/server.out" 2>/dev/null | sed 's/listening on //' || true)
    [ -n "$URL" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server stopped at its start: $(tail -n1 "$WORK/server.log")"
    sleep 0.1
done
[ -n "$URL" ] || fail "the server did not print 'listening on' within 30 s"
echo "server: $URL"

# in_process FILE RATE MODE: serve FILE in-process (its ids into FILE.out), print its row
in_process() {
    "$BIN" serve --requests "$1" --prefix-caching off --metrics "$1.metrics" --iterations "$1.iter" \
        >"$1.out" 2>"$1.log" || fail "serve --requests $1: $(tail -n1 "$1.log")"
    "${LOAD[@]}" serve-row --metrics "$1.metrics" --iterations "$1.iter" --rate "$2" --mode "$3"
}
gen() { # gen FILE N RATE PROMPT_MEDIAN OUTPUT_MEDIAN SEED
    "$BIN" gen-requests --out "$1" --n "$2" --rate "$3" --prompt-median "$4" --output-median "$5" \
        --seed "$6" >/dev/null 2>&1 || fail "gen-requests --out $1 failed"
}
# busiest_thread: the id of the server's thread with the most CPU time (after (a): its engine loop)
busiest_thread() {
    local t best=-1 tid='' ticks
    for t in /proc/"$SERVER_PID"/task/*; do
        ticks=$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null) || continue
        if [ "${ticks:-0}" -gt "$best" ]; then best=$ticks; tid=${t##*/}; fi
    done
    echo "$tid"
}
# thread_stat TID: '<CPU ticks> <times preempted (nonvoluntary context switches)>' of the server's thread TID
thread_stat() {
    echo "$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/task/$1/stat")" \
         "$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "/proc/$SERVER_PID/task/$1/status")"
}
field() { awk -F'\t' -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next } { print $k }' "$1"; }

# ---- (a) the rate sweep ---------------------------------------------------------------------
echo
echo "(a) rate sweep: $N_SWEEP requests per rate (skewed lengths, prompt median 16, output median 32)"
echo "$HEADER" | tee "$DAT"
for rate in $RATES; do
    f=$WORK/sweep_$rate.txt
    gen "$f" "$N_SWEEP" "$rate" 16 32 1
    in_process "$f" "$rate" in-process >"$f.row"
    "${LOAD[@]}" --url "$URL" --requests "$f" --rate "$rate" --expect "$f.out" >>"$f.row" 2>"$f.load.log" ||
        fail "load at rate $rate: $(tail -n1 "$f.load.log")"
    tee -a "$DAT" <"$f.row"
done

# ---- (b) C concurrent streaming clients -----------------------------------------------------
echo
echo "(b) $CONC concurrent streaming clients, $N_CONC requests (closed loop) against in-process serve of them all arriving at time 0"
f=$WORK/concurrent.txt
gen "$f.gen" "$N_CONC" 1 16 32 2
awk '/^#/ { print; next } { $1 = "0"; print }' "$f.gen" >"$f"
engine_tid=$(busiest_thread)
before=$(thread_stat "$engine_tid")
( echo "$HEADER"
  in_process "$f" "$CONC" in-process-at-0
  start=$(date +%s.%N)
  "${LOAD[@]}" --url "$URL" --requests "$f" --concurrency "$CONC" --expect "$f.out" 2>"$f.load.log" ||
      fail "load with $CONC clients: $(tail -n1 "$f.load.log")"
  echo "$start $(date +%s.%N)" >"$f.wall" ) >"$f.rows"
after=$(thread_stat "$engine_tid")
tail -n +2 "$f.rows"
read -r t0 t1 <"$f.wall"
read -r cpu0 nv0 <<<"$before"
read -r cpu1 nv1 <<<"$after"
tick=$(getconf CLK_TCK)
makespan=$(awk -F'\t' '$1 == "makespan_s" { print $2 }' "$f.metrics")
awk -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v c="$(( cpu1 - cpu0 ))" -v k="$tick" \
    -v n="$(( nv1 - nv0 ))" -v m="$makespan" 'BEGIN {
    printf "in-process serve computed these tokens in %.2f s of engine time; through HTTP the clients took %.2f s, " \
           "in which the server'"'"'s engine thread ran %.2f s on a core and was preempted %d times\n", m, w, c / k, n }'
inproc=$(field "$f.rows" tokens_per_s | sed -n 1p)
http=$(field "$f.rows" tokens_per_s | sed -n 2p)
pct=$(awk -v a="$http" -v b="$inproc" 'BEGIN { printf "%.1f", 100 * a / b }')
ok=$(awk -v p="$pct" 'BEGIN { print (p >= 95) ? "reached" : "not reached" }')
echo "summary: HTTP throughput with $CONC concurrent streaming clients is $pct% of in-process serve" \
     "($http against $inproc tokens/s) (expected >= 95%; $ok)"

# ---- (c) the HTTP layer's TTFT at low load --------------------------------------------------
echo
echo "(c) low load: $N_LOW requests at $LOW_RATE per second (output median 8)"
f=$WORK/low.txt
gen "$f" "$N_LOW" "$LOW_RATE" 16 8 3
( echo "$HEADER"
  in_process "$f" "$LOW_RATE" in-process
  "${LOAD[@]}" --url "$URL" --requests "$f" --rate "$LOW_RATE" --expect "$f.out" --server-ttft "$f.ttft" 2>"$f.load.log" ||
      fail "load at low rate: $(tail -n1 "$f.load.log")" ) >"$f.rows"
tail -n +2 "$f.rows"
ms() { awk -v x="$1" 'BEGIN { printf "%.2f", 1e3 * x }'; }
client=$(ms "$(awk -F'\t' '$1 == "client_ttft_mean_s" { print $2 }' "$f.ttft")")
server=$(ms "$(awk -F'\t' '$1 == "server_ttft_mean_s" { print $2 }' "$f.ttft")")
inproc_p50=$(ms "$(field "$f.rows" ttft_p50_s | sed -n 1p)")
http_p50=$(ms "$(field "$f.rows" ttft_p50_s | sed -n 2p)")
echo "mean TTFT of these $N_LOW requests: $client ms measured by the clients, $server ms measured by the server" \
     "(from the request's arrival in its queue to its first token)"
echo "TTFT p50: $http_p50 ms through HTTP, $inproc_p50 ms in-process on the simulated clock" \
     "(separate runs: their difference, $(awk -v h="$http_p50" -v i="$inproc_p50" 'BEGIN { printf "%+.2f", h - i }') ms, holds run-to-run noise too)"
added=$(awk -v c="$client" -v s="$server" 'BEGIN { printf "%.2f", c - s }')
ok=$(awk -v a="$added" 'BEGIN { print (a < 5) ? "reached" : "not reached" }')
echo "summary: the HTTP layer adds $added ms to TTFT at low load (the clients' mean minus the server's, same requests)" \
     "(expected < 5 ms; $ok)"

# ---- the plot, and the server's exit --------------------------------------------------------
gnuplot -e "datafile='$DAT'; outfile='$PNG'; setup='$ROOT/common/plot_setup.gp'; term='png'; which='server'" \
    "$ROOT/06_batching/plot_server.gp" || fail "gnuplot could not draw $PNG"
echo
echo "$DAT"
echo "$PNG"
kill -TERM "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[ $rc = 0 ] || fail "the server exited with status $rc after SIGTERM: $(tail -n1 "$WORK/server.log")"
echo "server: stopped by SIGTERM, exit status 0"
