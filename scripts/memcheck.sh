#!/usr/bin/env bash
# memcheck.sh [BUILD]: every chapter's verify (at --smoke sizes) and a short serve under valgrind:
# no memory error, no definitely lost byte. `make memcheck` runs it on build/memcheck, a CPU-only
# build for x86-64-v3 (AVX2): valgrind 3.19 stops with SIGILL on the AVX-512 instructions that
# -march=native emits on an AVX-512 host. OpenMP's thread pool keeps its threads' stacks until
# exit: valgrind calls those "possibly lost", which is not counted.
set -u
cd "$(dirname "$0")/.." || exit 2
build=${1:-build}
command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed (apt-get install valgrind)"; exit 1; }
vg=(valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --suppressions=scripts/valgrind.supp)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rc=0
run() {
    local name=$1
    shift
    local start=$(date +%s)
    if "${vg[@]}" "$@" >"$tmp/out" 2>"$tmp/err"; then
        printf 'memcheck %-28s ok   (%ss) %s\n' "$name" "$(($(date +%s) - start))" "$(tail -n 1 "$tmp/out")"
    else
        printf 'memcheck %-28s FAIL (exit %s)\n' "$name" "$?"
        grep -E "==[0-9]+==" "$tmp/err" | head -n 30
        rc=1
    fi
}
for prog in "$build"/bin/0*; do
    run "$(basename "$prog") verify" "$prog" verify --smoke --device cpu
done
printf '0 4 1 2 3\n0.01 3 7\n0.02 5 9 8 7 6\n0.03 2 5\n' >"$tmp/r.txt"
run "06_batching serve" "$build/bin/06_batching" serve --requests "$tmp/r.txt" --max-batch 2 --num-blocks 3 \
    --block-size 4 --device cpu
exit $rc
