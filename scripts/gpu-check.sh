#!/usr/bin/env bash
# gpu-check.sh: every GPU check of the repository in one run of at most 8 minutes, for a lent
# GPU machine (an H100 or H200 with 16 cores) that has nvcc and a GPU but no package registry
# and no Check library. A GPU is lent rarely, so the one run must count:
#
#   - It writes as it goes into OUTDIR, the one folder that comes back: summary.txt (a line per
#     step: PASS, FAIL or SKIP, seconds, the step's last line of output or why it was skipped),
#     steps.log (each finished step's command and the tail of its output), running.log (only
#     while a step runs: what a run that was killed was doing), and at the end logs.tar.gz
#     (every full log, the benchmark data and plots). Four files at most.
#   - It holds one deadline for the whole run (GPU_CHECK_BUDGET, 480 s). A step's time limit
#     is its own cap, cut to what its group and the whole run have left; a step that cannot
#     start in time is "skipped: out of time", and one stopped by the deadline rather than by
#     its own cap is skipped too -- counted as skipped, never as passed.
#   - It runs the steps in order of value: pre-flight (the GPU, nvcc, the Check prefix,
#     compute-sanitizer); the build with nvcc for the GPU's architecture; the CUDA cases of
#     every Check suite; every chapter's `verify --device cuda`; compute-sanitizer's memcheck
#     (with leak check), racecheck and initcheck on small verifies; whole programs on the GPU
#     against the CPU (generate with the cache, --prefill-chunk, --no-cache; serve), tokens
#     compared up to near-ties (04_kvcache _agree); the lessons with --device cuda; every
#     Check suite in full (programs then pick the GPU by default); last the benchmarks and
#     PyTorch's SDPA (scripts/sdpa_bench.py, when torch is there).
#   - It ends with one line, "gpu-check: PASS|FAIL (N passed, N failed, N skipped)", and exits
#     1 when anything failed.
#
#   usage: scripts/gpu-check.sh [--dry-run] OUTDIR
#
# --dry-run, for a machine without a GPU (CI runs it): builds (reusing build/, so it is quick
# after `make CUDA=1`), checks the Check prefix, walks every step (GPU steps: "skipped: no
# GPU", their commands in steps.log), checks that the groups that must finish fit the deadline,
# and prints the verdict line.
#
# A step fails when its command exits non-zero, or when it runs out its own cap in the groups
# that should be quick (the build, the CUDA tests, verify, the comparisons: a hang); in the
# others (compute-sanitizer, lessons, full suites, benchmarks) running out of time is a skip.
#
# Environment: GPU_CHECK_BUDGET (seconds, default 480); GPU_CHECK_ONLY=REGEX runs only the steps
# whose names match (a second run in leftover device time); GPU_CHECK_BUILD (default build) the
# build folder; CHECK_PREFIX (default .deps/check).
#
# Check comes from Debian packages unpacked where apt works and carried along; the Makefile's
# CHECK_PREFIX links it statically, so nothing of it is needed at run time:
#   here:    scripts/deps.sh check-prefix .deps/check      (.deps/ is ignored by git)
#   there:   scripts/gpu-check.sh "$OUT"                      (with .deps/check carried along)
set -u

# ==== internal helpers, run as steps (a step's command must be a program, for timeout) ==========

# _compare-generate BUILD ARGS...: chapter 04's generate on the CPU and on the GPU with the same
# arguments (the built-in model, greedy); the tokens must agree up to near-ties.
if [ "${1:-}" = _compare-generate ]; then
    build=$2
    shift 2
    prompt=$(printf '%s\n' "$@" | awk 'f {print; exit} $0 == "--prompt" {f = 1}')
    cpu=$("$build/bin/04_kvcache" generate --device cpu "$@") || { echo "generate --device cpu failed"; exit 1; }
    gpu=$("$build/bin/04_kvcache" generate --device cuda "$@") || { echo "generate --device cuda failed"; exit 1; }
    echo "cpu:  $cpu"
    echo "cuda: $gpu"
    exec "$build/bin/04_kvcache" _agree "$prompt" "$cpu" "$gpu"
fi

# _compare-serve BUILD DIR: chapter 06 serves a generated workload on the CPU and on the GPU;
# each request's tokens must agree up to near-ties.
if [ "${1:-}" = _compare-serve ]; then
    build=$2 dir=$3
    "$build/bin/06_batching" gen-requests --out "$dir/requests.txt" --n 6 --rate 0 --prompt-median 8 \
        --output-median 16 --seed 5 || exit 1
    "$build/bin/06_batching" serve --requests "$dir/requests.txt" --device cpu >"$dir/serve-cpu.txt" || exit 1
    "$build/bin/06_batching" serve --requests "$dir/requests.txt" --device cuda >"$dir/serve-cuda.txt" || exit 1
    rc=0 i=0
    while read -r _ _ prompt_ids; do
        cpu=$(sed -n "s/^$i: //p" "$dir/serve-cpu.txt")
        gpu=$(sed -n "s/^$i: //p" "$dir/serve-cuda.txt")
        echo "request $i: cpu:  $cpu"
        echo "request $i: cuda: $gpu"
        "$build/bin/04_kvcache" _agree "$prompt_ids" "$cpu" "$gpu" || rc=1
        i=$((i + 1))
    done < <(grep -v '^#' "$dir/requests.txt")
    [ $i -gt 0 ] || { echo "no requests were read"; exit 1; }
    exit $rc
fi

# _check-prefix PREFIX: the unpacked Check is complete and links (a pre-flight with a clear message).
if [ "${1:-}" = _check-prefix ]; then
    p=$2
    lib=$p/usr/lib/x86_64-linux-gnu
    for f in "$p/usr/include/check.h" "$lib/libcheck_pic.a" "$lib/libsubunit.a"; do
        if [ ! -f "$f" ]; then
            echo "the Check prefix lacks $f: make it where apt works with" \
                "'scripts/deps.sh check-prefix .deps/check' and carry .deps/check along (no test binary is built without it)"
            exit 1
        fi
    done
    src=$(mktemp -d)
    printf '#include <check.h>\nint main(void){SRunner *r = srunner_create(suite_create("x")); srunner_free(r); return 0;}\n' \
        >"$src/t.c"
    if ! ${CC:-gcc} -I"$p/usr/include" "$src/t.c" "$lib/libcheck_pic.a" "$lib/libsubunit.a" -pthread -lrt -lm \
        -o "$src/t" || ! "$src/t"; then
        rm -rf "$src"
        echo "the Check prefix $p does not link here (see the compiler's message above)"
        exit 1
    fi
    rm -rf "$src"
    echo "Check prefix $p: complete, links statically"
    exit 0
fi

# ==== the run ===================================================================================

dry=0
if [ "${1:-}" = --dry-run ]; then
    dry=1
    shift
fi
out=${1:?usage: gpu-check.sh [--dry-run] OUTDIR}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.." || exit 2
root=$PWD

budget=${GPU_CHECK_BUDGET:-480}
reserve=15 # seconds kept for the verdict and the archive
start=$(date +%s)
build=${GPU_CHECK_BUILD:-build}
jobs=$(nproc 2>/dev/null || echo 4)
export CHECK_PREFIX=${CHECK_PREFIX:-$root/.deps/check}
export NO_APT=1 # no package registry there: never wait on apt-get
work=$root/$build/gpu-check # full logs, packed into logs.tar.gz at the end
rm -rf "$work" && mkdir -p "$work/logs" || exit 2
summary=$out/summary.txt steps=$out/steps.log running=$out/running.log
: >"$summary"
: >"$steps"
rm -f "$running" "$out/logs.tar.gz"
n_pass=0 n_fail=0 n_skip=0 last_status="" child=""

# Each group's cap on the seconds its steps may take together. The groups that must finish
# (preflight .. verify) fit the deadline even if each takes its whole cap; the rest share
# what is left, in this order.
declare -A cap_of=([preflight]=20 [build]=200 [cuda-tests]=120 [verify]=100 [sanitizer]=150 [compare]=60
                   [lesson]=60 [suite]=120 [bench]=90)
declare -A used_of=()
must_finish=(preflight build cuda-tests verify)

say() { printf '%s\n' "$*" | tee -a "$summary"; }

# record NAME STATUS SECONDS NOTE
record() {
    last_status=$2
    printf '%-26s %-4s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$summary"
    case $2 in
    PASS) n_pass=$((n_pass + 1)) ;;
    FAIL) n_fail=$((n_fail + 1)) ;;
    *) n_skip=$((n_skip + 1)) ;;
    esac
}

# step GROUP NAME CAP gpu|cpu COMMAND...: runs COMMAND with its output in running.log, within
# min(CAP, what GROUP has left, what the run has left); records PASS (exit 0), FAIL, or SKIP.
step() {
    local group=$1 name=$2 cap=$3 needs=$4
    shift 4
    local shown
    shown=$(printf '%q ' "$@")
    if [ -n "${GPU_CHECK_ONLY:-}" ] && ! [[ $name =~ $GPU_CHECK_ONLY ]]; then
        record "$name" SKIP 0 "skipped: not selected (GPU_CHECK_ONLY)"
        return
    fi
    if [ "$needs" = gpu ] && [ "$have_gpu" = 0 ]; then
        record "$name" SKIP 0 "skipped: no GPU"
        printf '=== %s (skipped: no GPU): %s\n' "$name" "$shown" >>"$steps"
        return
    fi
    local now left group_left limit
    now=$(date +%s)
    left=$((start + budget - reserve - now))
    group_left=$((${cap_of[$group]} - ${used_of[$group]:-0}))
    limit=$cap
    ((group_left < limit)) && limit=$group_left
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        record "$name" SKIP 0 "skipped: out of time ($group has ${group_left}s, the run ${left}s)"
        return
    fi
    # in the background, so that a signal to this script is handled at once (see on_signal)
    timeout --kill-after=5 "$limit" "$@" >"$running" 2>&1 </dev/null &
    child=$!
    wait "$child"
    local rc=$? secs=$(($(date +%s) - now))
    child=""
    used_of[$group]=$((${used_of[$group]:-0} + secs))
    mv -f "$running" "$work/logs/$name.log"
    local last status note
    last=$(grep -v '^[[:space:]]*$' "$work/logs/$name.log" | tail -n 1 | cut -c1-140)
    if [ $rc = 0 ]; then
        status=PASS note=$last
    elif { [ $rc = 124 ] || [ $rc = 137 ]; } && ((limit < cap)); then
        status=SKIP note="skipped: out of time (stopped after ${limit}s of its ${cap}s cap)"
    elif { [ $rc = 124 ] || [ $rc = 137 ]; } && [[ " sanitizer lesson suite bench " == *" $group "* ]]; then
        status=SKIP note="skipped: did not finish within its cap of ${cap}s"
    elif [ $rc = 124 ] || [ $rc = 137 ]; then
        status=FAIL note="timed out after its cap of ${cap}s (a hang?): $last"
    else
        status=FAIL note="exit $rc: $last"
    fi
    record "$name" "$status" "$secs" "$note"
    {
        printf '=== %s (%s, %ss, limit %ss): %s\n' "$name" "$status" "$secs" "$limit" "$shown"
        if [ "$status" = FAIL ]; then tail -n 150 "$work/logs/$name.log"; else tail -n 30 "$work/logs/$name.log"; fi
    } >>"$steps"
}

finish() {
    rm -f "$running"
    local verdict=PASS
    [ $n_fail -gt 0 ] && verdict=FAIL
    say "finished in $(($(date +%s) - start)) s of the ${budget} s budget"
    cp "$summary" "$work/"
    cp -r "$build/bench" "$build/plots" "$work/" 2>/dev/null
    tar czf "$out/logs.tar.gz" -C "$work" . 2>/dev/null && say "logs: $out/logs.tar.gz"
    say "gpu-check: $verdict ($n_pass passed, $n_fail failed, $n_skip skipped)"
    [ $verdict = PASS ]
}

on_signal() {
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
    if [ -f "$running" ]; then # the step in flight: its output so far
        { echo "=== the step in flight when the signal came:"; tail -n 100 "$running"; } >>"$steps"
        mv -f "$running" "$work/logs/interrupted.log"
    fi
    record interrupted FAIL $(($(date +%s) - start)) "the run was stopped by a signal; steps after this did not run"
    finish
    exit 1
}
trap on_signal TERM INT HUP

# ---- pre-flight -------------------------------------------------------------------------------
say "gpu-check.sh$([ $dry = 1 ] && echo ' --dry-run') on $(hostname) at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $jobs cores, budget ${budget}s"
have_gpu=0
arch=sm_90
if [ $dry = 1 ]; then
    record gpu SKIP 0 "skipped: no GPU (dry run)"
elif nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    have_gpu=1
    say "$(nvidia-smi -L 2>&1 | head -n 4)"
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
    [[ $cc =~ ^[0-9]+$ ]] && arch=sm_$cc
    record gpu PASS 0 "$(nvidia-smi -L | head -n 1 | cut -c1-100); building for $arch"
else
    record gpu FAIL 0 "nvidia-smi finds no GPU: every GPU step is skipped"
fi

nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
if [ -n "$nvcc_path" ]; then
    export PATH=$(dirname "$nvcc_path"):$PATH
    record nvcc PASS 0 "$("$nvcc_path" --version | tail -n 2 | head -n 1)"
else
    record nvcc FAIL 0 "nvcc not found (PATH, /usr/local/cuda/bin): nothing CUDA can be built"
fi

have_check=0
if [ $dry = 1 ] && [ ! -e "$CHECK_PREFIX/usr/include/check.h" ] && pkg-config --exists check 2>/dev/null; then
    record check-prefix SKIP 0 "skipped: no Check prefix at $CHECK_PREFIX (a real run fails here); the dry run uses the system's Check"
    unset CHECK_PREFIX
    have_check=1
else
    step preflight check-prefix 60 cpu "$self" _check-prefix "$CHECK_PREFIX"
    [ "$last_status" = PASS ] && have_check=1
fi

sanitizer=$(command -v compute-sanitizer || ls "$(dirname "${nvcc_path:-/usr/local/cuda/bin/nvcc}")/compute-sanitizer" 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
    record compute-sanitizer PASS 0 "$sanitizer"
else
    record compute-sanitizer SKIP 0 "skipped: compute-sanitizer not found; its steps are skipped"
fi

# ---- build ------------------------------------------------------------------------------------
step build build-programs 200 cpu make -j"$jobs" CUDA=1 GPU_ARCH="$arch" BUILD="$build" programs
# A compiler there that is not the one here may warn where this one does not, and -Werror would
# then cost the whole run: the failure stays recorded, and the build is retried with warnings
# as warnings so that the GPU steps still run.
lenient=()
if [ "$last_status" = FAIL ] && grep -q 'Werror' "$work/logs/build-programs.log"; then
    printf '#!/bin/sh\nexec %s "$@" -Wno-error\n' "${CC:-gcc}" >"$work/cc-no-werror"
    chmod +x "$work/cc-no-werror"
    lenient=(CC="$work/cc-no-werror")
    step build build-programs-no-werror 200 cpu make -j"$jobs" "${lenient[@]}" CUDA=1 GPU_ARCH="$arch" BUILD="$build" \
        programs
fi
if [ $have_check = 1 ]; then
    step build build-tests 120 cpu make -j"$jobs" ${lenient[@]+"${lenient[@]}"} CUDA=1 GPU_ARCH="$arch" BUILD="$build" tests
else
    record build-tests SKIP 0 "skipped: no Check (see check-prefix)"
fi

chapters=()
for p in "$build"/bin/0*; do [ -x "$p" ] && chapters+=("$(basename "$p")"); done
[ ${#chapters[@]} -gt 0 ] || chapters=(01_mha 02_mqa_gqa 03_flash 04_kvcache 05_paged 06_batching)

# ---- the CUDA cases of every Check suite (only the "cuda" case: CK_RUN_CASE) ------------------
for c in "${chapters[@]}"; do
    if [ -x "$build/test/$c" ]; then
        step cuda-tests "cuda-tests-$c" 90 gpu env CK_RUN_CASE=cuda CK_VERBOSITY=verbose REQUIRE_CUDA=1 "$build/test/$c"
    else
        record "cuda-tests-$c" SKIP 0 "skipped: no test binary $build/test/$c"
    fi
done

# ---- every chapter's verify on the GPU --------------------------------------------------------
for c in "${chapters[@]}"; do
    step verify "verify-$c" 60 gpu "$build/bin/$c" verify --device cuda
done

# ---- compute-sanitizer on small verifies, the most telling first -------------------------------
# memcheck: out-of-bounds and misaligned accesses, and device memory never freed (--leak-check);
# racecheck: shared-memory hazards; initcheck: reads of device memory never written. Chapters 01
# and 02 go through initcheck with their naive kernel only: cuBLAS's own workspaces are not ours.
sanitize() { # NAME TOOL CHAPTER [extra verify args]
    local name=$1 tool=$2 c=$3
    shift 3
    local extra=(--error-exitcode 9)
    [ "$tool" = memcheck ] && extra+=(--leak-check full)
    step sanitizer "$name" 60 gpu "$sanitizer" --tool "$tool" "${extra[@]}" --print-limit 20 \
        "$build/bin/$c" verify --device cuda --smoke "$@"
}
if [ -n "$sanitizer" ] || [ $dry = 1 ]; then
    sanitizer=${sanitizer:-compute-sanitizer}
    sanitize memcheck-03_flash memcheck 03_flash
    sanitize racecheck-04_kvcache racecheck 04_kvcache
    sanitize racecheck-05_paged racecheck 05_paged
    sanitize memcheck-04_kvcache memcheck 04_kvcache
    sanitize memcheck-05_paged memcheck 05_paged
    sanitize memcheck-06_batching memcheck 06_batching
    sanitize racecheck-03_flash racecheck 03_flash
    sanitize memcheck-01_mha memcheck 01_mha
    sanitize memcheck-02_mqa_gqa memcheck 02_mqa_gqa
    sanitize initcheck-03_flash initcheck 03_flash
    sanitize initcheck-05_paged initcheck 05_paged
    sanitize initcheck-04_kvcache initcheck 04_kvcache
    sanitize initcheck-06_batching initcheck 06_batching
    sanitize racecheck-01_mha racecheck 01_mha
    sanitize initcheck-01_mha initcheck 01_mha --kernel 1
    sanitize initcheck-02_mqa_gqa initcheck 02_mqa_gqa --kernel 1
else
    record sanitizer SKIP 0 "skipped: compute-sanitizer not found"
fi

# ---- whole programs on the GPU against the CPU -------------------------------------------------
step compare generate-cache 30 gpu "$self" _compare-generate "$build" --prompt "1 2 3" --max-new 48
step compare generate-prefill-chunk 30 gpu "$self" _compare-generate "$build" --prompt "1 2 3 4 5 6 7 8 9" \
    --max-new 24 --prefill-chunk 4
step compare generate-no-cache 30 gpu "$self" _compare-generate "$build" --prompt "1 2 3" --max-new 24 --no-cache
step compare serve-06 40 gpu "$self" _compare-serve "$build" "$work"

# ---- the lessons with --device cuda (those with GPU parts first) ------------------------------
for c in 06_batching 01_mha 02_mqa_gqa 03_flash 04_kvcache 05_paged; do
    [ -x "$build/bin/$c" ] || [ $dry = 1 ] || continue
    step lesson "lesson-$c" 60 gpu "$build/bin/$c" --device cuda
done

# ---- every Check suite in full, with the GPU present --------------------------------------------
for c in "${chapters[@]}"; do
    [ -x "$build/test/$c" ] || continue
    step suite "suite-$c" 90 gpu env REQUIRE_CUDA=1 "$build/test/$c"
done

# ---- benchmarks, last --------------------------------------------------------------------------
for c in "${chapters[@]}"; do
    step bench "bench-$c" 45 gpu "$build/bin/$c" bench --device cuda
done
if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch' 2>/dev/null; then
    step bench sdpa-pytorch 45 gpu python3 scripts/sdpa_bench.py
else
    record sdpa-pytorch SKIP 0 "skipped: no python3 with torch"
fi

# ---- the time budget (the dry run's check that the plan fits) ----------------------------------
sum=0 plan=""
for g in "${must_finish[@]}"; do
    sum=$((sum + ${cap_of[$g]}))
    plan+="${plan:+ + }$g ${cap_of[$g]}"
done
rest=""
for g in sanitizer compare lesson suite bench; do rest+="${rest:+, }$g ${cap_of[$g]}"; done
if ((sum <= budget - reserve && budget <= 540)); then
    record time-budget PASS $(($(date +%s) - start)) "$plan = ${sum}s <= ${budget}s - ${reserve}s; then, as time allows: $rest"
else
    record time-budget FAIL $(($(date +%s) - start)) "$plan = ${sum}s does not fit ${budget}s - ${reserve}s (or the budget is over 540s: one device command may run 600s)"
fi

finish
