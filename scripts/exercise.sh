#!/usr/bin/env bash
# exercise.sh N [--fresh] [--solution]: workshop mode for chapter N.
#
# Each chapter marks its key code in its own source:
#     /* EXERCISE 03 BEGIN: what to write, as a hint */
#     ... the chapter's code ...
#     /* EXERCISE 03 STUB:
#     ... a few lines that compile and give wrong answers ...
#        EXERCISE 03 END */
# The exercise file, exercises/<chapter>/<file>.c, is generated from that source (so it cannot
# drift from it): the marked code is replaced by a TODO comment and the stub. The student fills
# in the TODOs; this script then builds the chapter's tests and programs against the student's
# file instead of the solution (in build/exercise/<chapter>/, a tree of links to the repository),
# runs the chapter's Check suite and says which checks pass.
#
#   --fresh     regenerate the exercise file from the chapter (discarding the student's edits)
#   --solution  run against the chapter's own file with the TODOs filled by the chapter's code
#               (what a finished exercise looks like; the repository's tests use it)
# EXERCISE_DIR=DIR keeps the exercise files in DIR instead of exercises/ (the self-test's).
# Exit status: 0 when every check passes, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

n=${1:-}
shift || true
fresh=0 solution=0
for a in "$@"; do
    case $a in
    --fresh) fresh=1 ;;
    --solution) solution=1 ;;
    *) echo "exercise.sh: unknown option '$a' (expected --fresh or --solution)" >&2; exit 2 ;;
    esac
done
case $n in
[1-6]) ;;
*) echo "exercise.sh: give a chapter number 1..6 (make exercise-N)" >&2; exit 2 ;;
esac
nn=$(printf '%02d' "$n")
chapter=$(ls -d "${nn}"_*/ 2>/dev/null | head -n 1)
chapter=${chapter%/}
[ -n "$chapter" ] || { echo "exercise.sh: no chapter $nn" >&2; exit 2; }
src=$(grep -l "EXERCISE $nn BEGIN" "$chapter"/*.c 2>/dev/null | head -n 1)
[ -n "$src" ] || { echo "exercise.sh: $chapter has no code marked 'EXERCISE $nn BEGIN'" >&2; exit 2; }
file=$(basename "$src")

# the student's file: the chapter's source with every marked region replaced by its TODO and stub
generate() {
    awk -v nn="$nn" '
        $0 ~ "EXERCISE " nn " BEGIN:" {
            hint = $0; sub(/.*BEGIN: */, "", hint); sub(/ *\*\/ *$/, "", hint)
            indent = $0; sub(/[^ ].*$/, "", indent)
            print indent "/* TODO(exercise " nn "): " hint " */"
            skip = 1; next
        }
        skip && $0 ~ "EXERCISE " nn " STUB:" { stub = 1; next }
        skip && $0 ~ "EXERCISE " nn " END" { skip = 0; stub = 0; next }
        skip && !stub { next }
        { print }
    ' "$src"
}

# the finished exercise: the chapter's code in place of each TODO, the markers and stubs gone
solve() {
    awk -v nn="$nn" '
        $0 ~ "EXERCISE " nn " BEGIN:" { next }
        $0 ~ "EXERCISE " nn " STUB:" { stub = 1; next }
        stub && $0 ~ "EXERCISE " nn " END" { stub = 0; next }
        stub { next }
        { print }
    ' "$src"
}

exdir=${EXERCISE_DIR:-exercises} # where the student's files live
student="$exdir/$chapter/$file"
if [ $solution = 1 ]; then
    mkdir -p "build/exercise/solved/$chapter"
    student="build/exercise/solved/$chapter/$file"
    solve >"$student"
elif [ $fresh = 1 ] || [ ! -f "$student" ]; then
    mkdir -p "$exdir/$chapter"
    generate >"$student"
    echo "exercise $nn: wrote $student from $src: fill in its TODO(exercise $nn) parts, then run 'make exercise-$n' again."
fi
todos=$(grep -c "TODO(exercise $nn)" "$student" || true)

# a tree of links to the repository, with the student's file in place of the chapter's
tree="build/exercise/$chapter"
mkdir -p "$tree"
for f in Makefile common scripts .ci; do
    [ -e "$f" ] && ln -sfn "$root/$f" "$tree/$f"
done
for d in [0-9][0-9]_*/; do
    d=${d%/}
    if [ "$d" = "$chapter" ]; then
        mkdir -p "$tree/$d"
        for f in "$d"/*; do ln -sfn "$root/$f" "$tree/$f"; done
        ln -sfn "$root/$student" "$tree/$d/$file"
    else
        ln -sfn "$root/$d" "$tree/$d"
    fi
done

echo "exercise $nn: building $chapter with $student ($todos TODO(s) left) ..."
log="$tree/build.log"
if ! make -C "$tree" --no-print-directory CUDA=0 "build/test/$chapter" programs >"$log" 2>&1; then
    grep -E "error:|undefined reference" "$log" | head -n 20
    echo "exercise $nn: $student does not compile yet (full log: $log)"
    exit 1
fi
out="$tree/test.log"
(cd "$tree" && "build/test/$chapter") >"$out" 2>&1
rc=$?
summary=$(grep -E "^[0-9]+%: Checks:" "$out" | tail -n 1)
grep -E ":[FE]:" "$out" | sed -E 's/^[^:]*:[0-9]+:[FE]:([^:]*):([^:]*):[^:]*: /  FAIL \2 (\1): /' | cut -c1-160
if [ $rc -eq 0 ]; then
    echo "exercise $nn: all checks pass -- $summary"
    exit 0
fi
echo "exercise $nn: not yet -- $summary"
[ "$todos" -gt 0 ] && echo "exercise $nn: $todos TODO(exercise $nn) part(s) left in $student"
echo "exercise $nn: the chapter's own code is the solution: $src (full test output: $out)"
exit 1
