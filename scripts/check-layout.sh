#!/usr/bin/env bash
# check-layout.sh: the size rules of docs/architecture.md ("One obvious place"), checked.
#
#   every chapter's main.c          at most 450 lines (the lesson and the subcommand table)
#   every other .c file             at most 500 lines (tests excepted: test_*.c)
#   every function in a .c or .cu   at most 90 lines, from the line with its opening brace to
#   file (CUDA __global__ kernels   its closing brace (a function is a line starting with a
#   excepted)                       name or a type, and a brace alone at column 0; the closing
#                                   brace alone at column 0, the repository's style)
#
# Prints each breach as "file:line: what" and exits 1 if there is any; 0 and one summary line
# otherwise. make check-layout runs it; CI too.
set -u
cd "$(dirname "$0")/.." || exit 2
bad=0
say() { echo "$1"; bad=1; }

for f in [0-9][0-9]_*/main.c; do
    n=$(wc -l <"$f")
    [ "$n" -le 450 ] || say "$f:1: main.c has $n lines (at most 450: the lesson and the subcommand table)"
done
for f in common/*.c [0-9][0-9]_*/*.c; do
    case $(basename "$f") in test_*.c | main.c) continue ;; esac
    n=$(wc -l <"$f")
    [ "$n" -le 500 ] || say "$f:1: $n lines (at most 500: split it along its concepts)"
done

# functions: a line at column 0 that is not a comment, a preprocessor line or a closing brace,
# followed by "{" alone at column 0; the function ends at the next "}" alone at column 0.
long=$(awk '
    FNR == 1 { sig = ""; start = 0 }
    /^[A-Za-z_]/ && !/^(typedef|struct|enum|union)[ {]/ && !/;[ \t]*$/ { sig = $0; sigline = FNR }
    /^\{[ \t]*$/ && sig != "" { start = FNR; name = sig; at = sigline; next }
    /^\}/ && start {
        n = FNR - start + 1
        if (n > 90 && name !~ /__global__/)
            printf "%s:%d: function of %d lines (at most 90): %s\n", FILENAME, at, n, substr(name, 1, 80)
        start = 0; sig = ""
    }
' common/*.c common/*.cu [0-9][0-9]_*/*.c [0-9][0-9]_*/*.cu)
if [ -n "$long" ]; then
    echo "$long"
    bad=1
fi

if [ $bad = 0 ]; then
    echo "check-layout: every main.c <= 450 lines, every other .c <= 500, every function <= 90 lines"
fi
exit $bad
