#!/usr/bin/env bash
# check-docs.sh: every command the README and docs/ show runs as written.
#
# It collects the command lines of their indented code blocks (lines starting with
# "build/bin/", "make" or "mpirun", continuation lines joined) and, in a scratch folder where
# build/ is the repository's, runs them in the order the documents give them:
#   - build/bin/... commands run as written when every file they name exists there (files written
#     by earlier commands, such as gen-requests's, count); commands that need a file the reader
#     downloads or makes (stories15M.bin, Q.npy) and the long ones (bench, lessons, server) run with
#     --help appended instead, which still checks the subcommand and every option name and value;
#   - mpirun commands (chapter 04's tensor parallelism) likewise, under Open MPI's mpirun (as root
#     with Open MPI's two OMPI_ALLOW_RUN_AS_ROOT variables); skipped, and counted, without mpirun;
#   - make commands are checked with make -n (the target exists and its recipe expands).
# Needs the programs built (make). Exit status 1 if any command fails; each failure is printed.
set -u
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ln -s "$root/build" "$scratch/build"

# the commands, one per line: "file<TAB>command"
awk '
    FNR == 1 { block = 0 }
    /^    / {
        line = substr($0, 5)
        if (cont != "") { cmd = cont " " line; cont = "" }
        else if (line ~ /^(build\/bin\/|make( |$)|mpirun )/) cmd = line
        else next
        if (cmd ~ /\\$/) { sub(/ *\\$/, "", cmd); cont = cmd; next }
        sub(/[ ]+#.*$/, "", cmd)
        print FILENAME "\t" cmd
        next
    }
    { cont = "" }
' README.md docs/*.md >"$scratch/commands"

fails=0 ran=0 helped=0 made=0 skipped=0
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
while IFS=$'\t' read -r file cmd; do
    set -f
    eval "words=( $cmd )" # the shell's own splitting: quoted prompts stay one word
    set +f
    case "${words[0]}" in
    make)
        if (cd "$root" && make -n "${words[@]:1}" >/dev/null 2>&1); then
            made=$((made + 1))
        else
            echo "FAIL ($file): '$cmd' (make -n fails)"
            fails=$((fails + 1))
        fi
        continue
        ;;
    mpirun)
        if ! command -v mpirun >/dev/null 2>&1 || [ ! -x build/bin/04_kvcache_tp ]; then
            skipped=$((skipped + 1)) # no Open MPI here (MPI=0): nothing to run it with
            continue
        fi
        ;;
    esac
    full=1
    [ ${#words[@]} -eq 1 ] && full=0                           # a lesson: long
    for w in "${words[@]:1}"; do
        case $w in
        bench | server | --help) full=0 ;; # server runs until it is stopped
        *.bin | *.npy | *.txt | *.tsv)
            [ -e "$scratch/$w" ] || { [ "${prev:-}" = --out ] || [ "${prev:-}" = --metrics ] || [ "${prev:-}" = --iterations ] || full=0; } ;;
        esac
        prev=$w
    done
    prev=
    if [ $full = 1 ]; then
        (cd "$scratch" && timeout 300 "${words[@]}" >/dev/null 2>"$scratch/err")
        rc=$?
        ran=$((ran + 1))
    else
        (cd "$scratch" && timeout 60 "${words[@]}" --help >/dev/null 2>"$scratch/err")
        rc=$?
        helped=$((helped + 1))
    fi
    if [ $rc -ne 0 ]; then
        echo "FAIL ($file): '$cmd'$([ $full = 0 ] && echo " (with --help)"): exit $rc: $(head -c 300 "$scratch/err")"
        fails=$((fails + 1))
    fi
done <"$scratch/commands"
echo "check-docs: $ran commands run as written, $helped checked with --help, $made make targets checked$([ $skipped -gt 0 ] && echo ", $skipped mpirun commands skipped (no Open MPI)"); $fails failed"
[ $fails -eq 0 ]
