#!/usr/bin/env bash
# exercise.sh N [--fresh] [--solution] [--check]: workshop mode for chapter N.
#
# The lesson code is the solution and carries no exercise markers. Exercise N is described by
# scripts/exercises/NN.ex, a small text file:
#     # comment lines (only before "hint:")
#     file: 03_flash/flash.c          the lesson file, <chapter>/<name>
#     begin: <first line of the region to cut out>
#     end: <last line of the region>  (may be the same line as begin)
#     hint:
#     <what to write, any number of lines; joined and re-wrapped into the TODO comment>
#     stub:
#     <to the end of the file: code that compiles and gives wrong answers, indented as if the
#      region started at column 0; @FILE@ becomes the file line's path>
# Anchors are compared with the source's lines after trimming white space on both sides: begin
# must match exactly one line of the file, end exactly one line from the begin line on. Anything
# else stops the script with a one-line error naming the spec and the anchor, so code that a
# refactor moved or changed is caught (make exercise-check runs --check for every spec).
#
# The exercise file, exercises/<chapter>/<name>, is generated from the lesson file (so it cannot
# drift from it): the region is replaced by "/* TODO(exercise NN): hint */" and the stub. The
# student fills in the TODO; this script then builds the chapter's tests and programs against the
# student's file instead of the solution (in $BUILD/exercise/<chapter>/, a tree of links to the
# repository), runs the chapter's Check suite and says which checks pass.
#
#   --fresh     regenerate the exercise file from the chapter (discarding the student's edits)
#   --solution  run against the chapter's own, untouched file (what a finished exercise looks
#               like; the repository's tests use it)
#   --check     only check that the spec's anchors resolve; build nothing
# EXERCISE_DIR=DIR keeps the exercise files in DIR instead of exercises/ (the self-test's).
# BUILD=DIR (default build; make passes it when given on its command line) holds the link trees.
# Exit status: 0 when every check passes, 1 otherwise, 2 for a usage error or a broken spec.
set -u
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

n=${1:-}
shift || true
fresh=0 solution=0 check=0
for a in "$@"; do
    case $a in
    --fresh) fresh=1 ;;
    --solution) solution=1 ;;
    --check) check=1 ;;
    *) echo "exercise.sh: unknown option '$a' (expected --fresh, --solution or --check)" >&2; exit 2 ;;
    esac
done
case $n in
[1-6]) ;;
*) echo "exercise.sh: give a chapter number 1..6 (make exercise-N)" >&2; exit 2 ;;
esac
nn=$(printf '%02d' "$n")
build=${BUILD:-build}
abs() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s' "$root/$1" ;; esac; }
trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    printf '%s' "${s%"${s##*[![:space:]]}"}"
}

# ---- the spec ----
spec=scripts/exercises/$nn.ex
bad() { echo "exercise.sh: $spec: $*" >&2; exit 2; }
[ -f "$spec" ] || { echo "exercise.sh: no exercise $nn: $spec does not exist" >&2; exit 2; }
src='' begin='' end='' hint='' stub='' part=head
while IFS= read -r line || [ -n "$line" ]; do
    case $part in
    head)
        case $line in
        '#'* | '') ;;
        file:*) src=$(trim "${line#file:}") ;;
        begin:*) begin=$(trim "${line#begin:}") ;;
        end:*) end=$(trim "${line#end:}") ;;
        hint:) part=hint ;;
        *) bad "unexpected line '$line' (expected file:, begin:, end:, hint: or a # comment)" ;;
        esac
        ;;
    hint)
        if [ "$line" = "stub:" ]; then part=stub; else hint="$hint${hint:+ }$(trim "$line")"; fi
        ;;
    stub) stub="$stub$line"$'\n' ;;
    esac
done <"$spec"
[ -n "$src" ] || bad "no 'file:' line"
[ -n "$begin" ] || bad "no 'begin:' anchor"
[ -n "$end" ] || bad "no 'end:' anchor"
hint=$(trim "$hint")
[ -n "$hint" ] || bad "no hint (the lines after 'hint:')"
case $hint in *'*/'*) bad "the hint may not contain '*/'" ;; esac
stub=${stub%"${stub##*[!$'\n']}"} # without its trailing empty lines
[ -n "$stub" ] || bad "no stub (the lines after 'stub:')"
stub=${stub//@FILE@/$src}
case $src in
[0-9][0-9]_*/*) ;;
*) bad "file '$src' is not <chapter>/<name>" ;;
esac
chapter=${src%%/*}
file=${src#*/}
case $file in */*) bad "file '$src' is not directly in its chapter folder" ;; esac
[ -f "$src" ] || bad "file '$src' does not exist"

# the region: "first last" line numbers, or the reason why not on stderr
region=$(B=$begin E=$end awk '
    function add(list, k, x) { return k > 5 ? list (k == 6 ? ",..." : "") : list (k > 1 ? "," : "") x }
    { t = $0; gsub(/^[ \t\r]+|[ \t\r]+$/, "", t) }
    t == ENVIRON["B"] { nb++; bl = NR; bls = add(bls, nb, NR) }
    t == ENVIRON["E"] { ne++; el[ne] = NR }
    END {
        if (nb != 1) { print "begin", nb + 0, bls; exit }
        for (i = 1; i <= ne; i++)
            if (el[i] >= bl) { k++; last = el[i]; els = add(els, k, el[i]) }
        if (k != 1) { print "end", k + 0, els; exit }
        print "ok", bl, last
    }' "$src")
read -r what first last <<<"$region"
case $what in
ok) ;;
begin)
    [ "$first" = 0 ] && bad "begin anchor not found in $src: '$begin'"
    bad "begin anchor matches $first lines of $src (lines $last), not one: '$begin'"
    ;;
*)
    [ "$first" = 0 ] && bad "end anchor not found in $src from the begin anchor on: '$end'"
    bad "end anchor matches $first lines of $src from the begin anchor on (lines $last), not one: '$end'"
    ;;
esac
if [ $check = 1 ]; then
    echo "exercise $nn: $spec: cuts lines $first-$last of $src"
    exit 0
fi

# the student's file: the lesson file with the region replaced by the TODO comment and the stub
generate() {
    H=$hint S=$stub awk -v nn="$nn" -v first="$first" -v last="$last" '
        NR == first {
            indent = $0; sub(/[^ \t].*$/, "", indent)
            # the hint, wrapped to lines of at most 100 columns where the words allow it
            nw = split(ENVIRON["H"], w, " ")
            line = indent "/* TODO(exercise " nn "):"
            for (i = 1; i <= nw; i++) {
                if (length(line) + 1 + length(w[i]) + (i == nw ? 3 : 0) > 100 && line !~ /:$/) {
                    print line
                    line = indent "  "
                }
                line = line " " w[i]
            }
            print line " */"
            ns = split(ENVIRON["S"], s, "\n")
            for (i = 1; i <= ns; i++) print (s[i] == "" ? "" : indent s[i])
        }
        NR >= first && NR <= last { next }
        { print }
    ' "$src"
}

exdir=${EXERCISE_DIR:-exercises} # where the student's files live
student="$exdir/$chapter/$file"
if [ $solution = 1 ]; then
    mkdir -p "$build/exercise/solved/$chapter"
    student="$build/exercise/solved/$chapter/$file"
    cp "$src" "$student"
elif [ $fresh = 1 ] || [ ! -f "$student" ]; then
    mkdir -p "$exdir/$chapter"
    generate >"$student"
    echo "exercise $nn: wrote $student from $src: fill in its TODO(exercise $nn) parts, then run 'make exercise-$n' again."
fi
todos=$(grep -c "TODO(exercise $nn)" "$student" || true)

# a tree of links to the repository, with the student's file in place of the chapter's
tree="$build/exercise/$chapter"
mkdir -p "$tree"
for f in Makefile common scripts .ci; do
    [ -e "$f" ] && ln -sfn "$root/$f" "$tree/$f"
done
for d in [0-9][0-9]_*/; do
    d=${d%/}
    if [ "$d" = "$chapter" ]; then
        rm -rf "${tree:?}/$d" # only links (and never followed): none left from an older layout
        mkdir -p "$tree/$d"
        for f in "$d"/*; do ln -sfn "$root/$f" "$tree/$f"; done
        ln -sfn "$(abs "$student")" "$tree/$d/$file"
    else
        ln -sfn "$root/$d" "$tree/$d"
    fi
done

echo "exercise $nn: building $chapter with $student ($todos TODO(s) left) ..."
log="$tree/build.log"
# Only what the chapter's suite needs: its test binary and the programs its program tests run
# (chapter 02's compare with 01_mha, chapters 05 and 06 with 04_kvcache and 05_paged; chapter 04's
# tensor-parallel case runs 04_kvcache_tp, built when Open MPI is there).
case $n in
1) progs="01_mha" ;;
2) progs="01_mha 02_mqa_gqa" ;;
3) progs="03_flash" ;;
4) progs="04_kvcache$(command -v mpicc >/dev/null 2>&1 && echo " 04_kvcache_tp")" ;;
5) progs="04_kvcache 05_paged" ;;
6) progs="04_kvcache 05_paged 06_batching" ;;
esac
targets=("build/test/$chapter")
for p in $progs; do targets+=("build/bin/$p"); done
# BUILD=build: the tree's own build folder, whatever BUILD the caller's make passed down
if ! make -C "$tree" --no-print-directory CUDA=0 BUILD=build "${targets[@]}" >"$log" 2>&1; then
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
