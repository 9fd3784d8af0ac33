#!/usr/bin/env bash
# gpu-check.sh: every GPU check of the repository in one run, for a lent GPU machine that has
# nvcc and a GPU but no package registry and no Check library.
#
#   usage: scripts/gpu-check.sh OUTDIR
#
# It builds with nvcc, runs every Check suite (CUDA cases included), every chapter's
# `verify --device cuda`, compute-sanitizer memcheck on a small verify, and the GPU benchmarks,
# then leaves in OUTDIR: summary.txt (one line per step: status, seconds, last line of output)
# and logs.tar.gz (every log, the benchmark .dat files and plots). Designed to finish in under
# 5 minutes on one H100; each step has its own time limit.
#
# Check comes from Debian packages unpacked on a machine where apt works, and is linked
# statically (the Makefile's CHECK_PREFIX does this):
#   here:    ../shared/tools/check-prefix.sh .deps/check      (.deps/ is ignored by git)
#   there:   scripts/gpu-check.sh "$OUT"                      (with .deps/check carried along)
set -u
out=${1:?usage: gpu-check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 1
export CHECK_PREFIX=${CHECK_PREFIX:-$PWD/.deps/check}
export NO_APT=1 # no package registry there: never wait on apt-get
logs=$(mktemp -d)
summary=$out/summary.txt
: >"$summary"
jobs=$(nproc 2>/dev/null || echo 4)

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in NAME.log, and a line in summary.txt
step() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - start))" \
        "$(grep -v '^\s*$' "$logs/$name.log" | tail -n 1 | cut -c1-150)" | tee -a "$summary"
}

{
    echo "gpu-check.sh on $(hostname) at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not found"
    command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2
} | tee -a "$summary"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

step build 240 make -j"$jobs" CUDA=1 all
step test 240 make CUDA=1 test
for prog in build/bin/0*; do
    c=$(basename "$prog")
    step "verify-$c" 120 "$prog" verify --device cuda
done
if [ -n "$sanitizer" ]; then
    # every CUDA kernel at small sizes under the three checkers: out-of-bounds and misaligned
    # accesses (memcheck, with leaks), shared-memory races (racecheck), reads of uninitialised
    # device memory (initcheck)
    for tool in memcheck racecheck initcheck; do
        extra=()
        [ $tool = memcheck ] && extra=(--leak-check full)
        for prog in build/bin/0*; do
            c=$(basename "$prog")
            step "$tool-$c" 240 "$sanitizer" --tool $tool "${extra[@]}" --error-exitcode 9 \
                "$prog" verify --device cuda --smoke
        done
    done
else
    echo "compute-sanitizer not found: memcheck, racecheck, initcheck skipped" | tee -a "$summary"
fi
for prog in build/bin/0*; do
    c=$(basename "$prog")
    step "bench-$c" 180 "$prog" bench --device cuda
done

# the whole model on the GPU must generate the CPU's greedy tokens (chapter 04 on)
if [ -x build/bin/04_kvcache ]; then
    step generate-cpu 120 build/bin/04_kvcache generate --device cpu --prompt "1 2 3" --max-new 64
    step generate-cuda 120 build/bin/04_kvcache generate --device cuda --prompt "1 2 3" --max-new 64
    if [ "$(head -n 1 "$logs/generate-cpu.log")" = "$(head -n 1 "$logs/generate-cuda.log")" ]; then
        echo "generate: cpu and cuda tokens identical" | tee -a "$summary"
    else
        echo "generate: cpu and cuda tokens DIFFER" | tee -a "$summary"
    fi
fi

# PyTorch's attention on the same shapes, for chapter 03's comparison (PyTorch is there, not here)
if command -v python3 >/dev/null 2>&1; then
    step sdpa-pytorch 120 python3 scripts/sdpa_bench.py
fi

cp -r build/bench build/plots "$logs/" 2>/dev/null
cp "$summary" "$logs/"
tar czf "$out/logs.tar.gz" -C "$logs" .
rm -rf "$logs"
echo "logs: $out/logs.tar.gz" | tee -a "$summary"
