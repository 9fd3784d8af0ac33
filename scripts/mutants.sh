#!/usr/bin/env bash
# mutants.sh: mutation testing with the project's own list of realistic bugs (make mutants).
#
# Reads scripts/mutants.txt (its header describes the format): each mutant is one exact string
# edit of one file -- a bug a reader could write in a mask, a scale, a rescale, a tail, a
# mapping, copy-on-write, a reference count, a budget, preemption, positions, sampling, the
# tokenizer, the metrics. The script
#   1. checks the whole list: every id unique, every file present, every `from` found EXACTLY
#      once in its file, every suite entry a chapter (1..6) or common (common/'s own suite) and
#      an existing Check case; a list
#      that has rotted is an error, never a silent pass;
#   2. copies the tree (git ls-files: tracked files and untracked ones git does not ignore) into
#      a scratch folder, build/mutants/tree, and builds it once (CUDA=0, SAN=0): the working
#      tree itself is never edited;
#   3. runs, on the unmutated copy, every suite entry the chosen mutants name (the baseline: a
#      case that fails already cannot catch anything);
#   4. for each mutant: applies the edit to the copy, rebuilds what changed, runs its suite
#      entries in order with a time limit until one fails (caught; a hang past the limit counts
#      as caught by timeout), then restores the file and its object (with a fresh timestamp, so
#      the next build relinks the original); a mutant that does not compile is an error in the
#      list, reported apart and not counted as caught;
#   5. prints a table (id, concept, file, result, what caught it, seconds) and the score.
# `scripts/mutants.sh --check` does step 1 only (a few seconds).
# Exit status 0 when at least 95% of the mutants that ran were caught, every survivor is marked
# 'expect: survives' with a note in the list, and there was no list, build or baseline error;
# 1 otherwise; 2 for bad usage.
#
# Environment:
#   MUTANTS=id1,id2   only these mutants          CHAPTER=N   only chapter N's mutants (those in
#   MUTANT_TIMEOUT=S  limit per suite run (300)   its folder, and common/ ones whose first suite is N;
#                                                 CHAPTER=common: those whose first suite is common)
#   MUTANTS_LIST=F    another list                MUTANTS_DIR=D   scratch folder (build/mutants)
#   BASELINE=0        skip the baseline runs      MUTANTS_JOBS=N  make -j (2)
# Needs bash, make, gcc, Check, git, tar, perl (Debian's perl-base: the exact string edits) and
# coreutils' timeout. The whole list takes about 15 minutes on 2 cores; CI does not run it.
set -u
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

list=${MUTANTS_LIST:-scripts/mutants.txt}
work=${MUTANTS_DIR:-build/mutants}
limit=${MUTANT_TIMEOUT:-300}
only=${MUTANTS:-}
chapter=${CHAPTER:-}
jobs=${MUTANTS_JOBS:-2}
check_only=0
say() { printf 'mutants: %s\n' "$*"; }
die() { printf 'mutants: error: %s\n' "$*" >&2; exit 2; }

case ${1:-} in
--check) check_only=1 ;;
'') ;;
*) die "unknown argument '$1' (the only one is --check: check the list, run nothing)" ;;
esac
CHAPTERS=(01_mha 02_mqa_gqa 03_flash 04_kvcache 05_paged 06_batching)

[ -f "$list" ] || die "no list '$list'"
case $chapter in '' | [1-6] | common) ;; *) die "CHAPTER must be 1..6 or common, got '$chapter'" ;; esac
case $limit in '' | *[!0-9]*) die "MUTANT_TIMEOUT must be a number of seconds, got '$limit'" ;; esac
for tool in git tar perl make timeout; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed"
done

# ---- the list -----------------------------------------------------------------------------------
ids=() files=() froms=() tos=() concepts=() suites=() expects=() notes=() lines=() has_to=()
n=-1 lineno=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    case $line in '#'*) continue ;; esac
    [ -n "${line// /}" ] || continue
    key=${line%%:*}
    val=${line#*:}
    val=${val# }
    if [ "$key" = id ]; then
        n=$((n + 1))
        ids[n]=$val files[n]='' froms[n]='' tos[n]='' concepts[n]='' suites[n]='' expects[n]='' notes[n]=''
        lines[n]=$lineno has_to[n]=0
        continue
    fi
    [ "$n" -ge 0 ] || die "$list:$lineno: '$key:' before the first 'id:'"
    case $key in
    file) files[n]=$val ;;
    from) froms[n]=$val ;;
    to) tos[n]=$val has_to[n]=1 ;;
    concept) concepts[n]=$val ;;
    suites) suites[n]=$val ;;
    expect) expects[n]=$val ;;
    note) notes[n]=$val ;;
    *) die "$list:$lineno: unknown key '$key' (expected id, file, from, to, concept, suites, expect, note)" ;;
    esac
done <"$list"
total=$((n + 1))
[ "$total" -gt 0 ] || die "$list has no mutants"

# count_in FILE FROM: how often the unescaped FROM occurs in FILE (perl: an exact, literal match)
count_in() {
    MUT_FROM=$2 perl -0777 -ne '
        my $f = $ENV{MUT_FROM}; $f =~ s/\\(.)/$1 eq "n" ? "\n" : $1 eq "t" ? "\t" : $1/ge;
        my $c = 0; my $at = 0;
        while (($at = index($_, $f, $at)) >= 0) { $c++; $at += length $f }
        print $c' "$1"
}

# apply_to FILE FROM TO: replaces the one occurrence (checked before) in place
apply_to() {
    MUT_FROM=$2 MUT_TO=$3 perl -0777 -i -pe '
        my ($f, $t) = ($ENV{MUT_FROM}, $ENV{MUT_TO});
        for ($f, $t) { s/\\(.)/$1 eq "n" ? "\n" : $1 eq "t" ? "\t" : $1/ge }
        my $at = index($_, $f); substr($_, $at, length $f) = $t if $at >= 0' "$1"
}

suite_dir() { # the folder of suite N (1..6) or common, whose test_*.c files make build/test/<folder>
    if [ "$1" = common ]; then echo common; else echo "${CHAPTERS[$1 - 1]}"; fi
}

chapter_of_file() { # 1..6 for a chapter's file, empty for common/ and others
    local k
    for k in 0 1 2 3 4 5; do
        case $1 in "${CHAPTERS[k]}"/*) echo $((k + 1)); return ;; esac
    done
}

# ---- which mutants, and is the list sound -------------------------------------------------------
declare -A seen
sel=() list_errors=0 list_err_msg=()
list_error() { list_errors=$((list_errors + 1)); list_err_msg+=("$1"); }
for ((i = 0; i < total; i++)); do
    id=${ids[i]} where="$list:${lines[i]} ($id)"
    case $id in '' | *[!A-Za-z0-9-]*) list_error "$where: the id must be letters, digits and '-'"; continue ;; esac
    [ -z "${seen[$id]:-}" ] || list_error "$where: id used twice"
    seen[$id]=1
    if [ -n "$only" ] && [[ ",$only," != *",$id,"* ]]; then continue; fi
    if [ -n "$chapter" ]; then
        c=$(chapter_of_file "${files[i]}")
        first=${suites[i]%%|*}; first=${first// /}; first=${first%%:*}
        [ "${c:-$first}" = "$chapter" ] || continue
    fi
    sel+=("$i")
done
if [ -n "$only" ]; then
    IFS=, read -ra wanted <<<"$only"
    for w in "${wanted[@]}"; do [ -n "${seen[$w]:-}" ] || die "MUTANTS names '$w', which is not in $list"; done
fi
[ "${#sel[@]}" -gt 0 ] || die "no mutant matches MUTANTS='$only' CHAPTER='$chapter'"

# suite entries of mutant i, one per line: "N<TAB>case" (case empty: the whole suite)
entries_of() {
    local e part num cs
    IFS='|' read -ra part <<<"${suites[$1]}"
    for e in "${part[@]}"; do
        e=$(printf '%s' "$e" | sed 's/^ *//; s/ *$//')
        [ -n "$e" ] || continue
        num=${e%%:*}
        if [ "$num" = "$e" ]; then cs=''; else cs=${e#*:}; fi
        printf '%s\t%s\n' "$num" "$cs"
    done
}

for i in "${sel[@]}"; do
    id=${ids[i]} f=${files[i]} where="$list:${lines[i]} ($id)"
    [ -n "$f" ] && [ -f "$f" ] || { list_error "$where: file '$f' does not exist"; continue; }
    case $f in *.cu) list_error "$where: '$f' is CUDA code, which this CPU build (CUDA=0) does not compile"; continue ;; esac
    [ -n "${froms[i]}" ] || { list_error "$where: no 'from:'"; continue; }
    [ "${has_to[i]}" = 1 ] || { list_error "$where: no 'to:' (write 'to:' alone to delete the text)"; continue; }
    [ "${froms[i]}" != "${tos[i]}" ] || { list_error "$where: 'to' equals 'from'"; continue; }
    [ -n "${concepts[i]}" ] || list_error "$where: no 'concept:'"
    [ -n "${suites[i]}" ] || { list_error "$where: no 'suites:'"; continue; }
    if [ -n "${expects[i]}" ]; then
        [ "${expects[i]}" = survives ] || list_error "$where: 'expect:' can only say 'survives'"
        [ -n "${notes[i]}" ] || list_error "$where: 'expect: survives' needs a note saying why"
    fi
    cnt=$(count_in "$f" "${froms[i]}")
    [ "$cnt" = 1 ] || list_error "$where: 'from' occurs $cnt times in $f (it must occur exactly once)"
    while IFS=$'\t' read -r num cs; do
        case $num in [1-6] | common) ;; *) list_error "$where: suite '$num' is not a chapter number 1..6 or common"; continue ;; esac
        [ -n "$cs" ] || continue
        tf=$(ls "$(suite_dir "$num")"/test_*.c 2>/dev/null)
        grep -qF -e "tcase_create(\"$cs\")" -e ".name = \"$cs\"" $tf || # a case of a TestingCase table
            list_error "$where: suite $num has no case '$cs'"
    done < <(entries_of "$i")
done
if [ "$list_errors" -gt 0 ]; then
    printf 'mutants: %d error(s) in %s:\n' "$list_errors" "$list" >&2
    printf '  %s\n' "${list_err_msg[@]}" >&2
    say "FAIL: fix the list first (nothing was run)"
    exit 1
fi
if [ "$check_only" = 1 ]; then
    say "the list is sound: ${#sel[@]} of $total mutants checked (every 'from' found once, every suite case exists)"
    exit 0
fi
say "${#sel[@]} of $total mutants from $list (suite time limit ${limit} s)"

# ---- the scratch copy ---------------------------------------------------------------------------
start_all=$(date +%s)
git rev-parse --git-dir >/dev/null 2>&1 || die "$root is not a git checkout (the copy uses git ls-files)"
tree=$work/tree logs=$work/logs
rm -rf "$tree" "$logs"
mkdir -p "$tree" "$logs" || die "cannot create $work"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' p; do [ -e "$p" ] && printf '%s\0' "$p"; done |
    tar --null -T - -cf - | tar -C "$tree" -xf - || die "copying the tree into $tree failed"
tree_abs=$(cd "$tree" && pwd)

make_args=(CUDA=0 SAN=0 FUZZ=0 MEMCHECK=0)
[ -z "${CHECK_PREFIX:-}" ] || make_args+=("CHECK_PREFIX=$(cd "$CHECK_PREFIX" && pwd)")
build() { # the programs and test binaries of the scratch copy; output to $1
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$tree_abs" -j"$jobs" "${make_args[@]}" tests >"$1" 2>&1
}
say "building the scratch copy in $tree (CUDA=0 SAN=0) ..."
t0=$(date +%s)
build "$logs/build.log" || { tail -n 20 "$logs/build.log" >&2; die "the unmutated copy does not build (log: $logs/build.log)"; }
say "built in $(($(date +%s) - t0)) s"

# run_entry NUM CASE LOG: one suite entry in the scratch copy; prints pass|fail|timeout|empty
run_entry() {
    local ch rc
    ch=$(suite_dir "$1")
    (
        cd "$tree_abs" || exit 2
        unset CK_RUN_SUITE CK_RUN_CASE CK_INCLUDE_TAGS CK_EXCLUDE_TAGS CK_FORK
        if [ -n "$2" ]; then export CK_RUN_CASE="$2"; fi
        exec timeout -k 10 "$limit" "build/test/$ch"
    ) >"$3" 2>&1 </dev/null
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo timeout
    elif [ "$rc" != 0 ]; then echo fail
    elif grep -q "Checks: 0," "$3"; then echo empty
    else echo pass; fi
}
entry_name() { if [ -n "$2" ]; then printf '%s:%s' "$1" "$2"; else printf '%s' "$1"; fi; }

# ---- the baseline -------------------------------------------------------------------------------
declare -A base
if [ "${BASELINE:-1}" != 0 ]; then
    declare -A need
    for i in "${sel[@]}"; do
        while IFS=$'\t' read -r num cs; do need["$num"$'\t'"$cs"]=1; done < <(entries_of "$i")
    done
    say "baseline: ${#need[@]} suite entries on the unmutated copy ..."
    t0=$(date +%s)
    k=0
    for e in "${!need[@]}"; do
        num=${e%%$'\t'*} cs=${e#*$'\t'}
        k=$((k + 1))
        r=$(run_entry "$num" "$cs" "$logs/baseline-$k.log")
        base[$e]=$r
        [ "$r" = pass ] || say "baseline: $(entry_name "$num" "$cs") gives '$r' unmutated (log: $logs/baseline-$k.log)"
    done
    say "baseline done in $(($(date +%s) - t0)) s"
fi

# ---- the mutants --------------------------------------------------------------------------------
res=() by=() secs=()
caught=0 survived=0 unexplained=0 errors=0 ran=0
for i in "${sel[@]}"; do
    id=${ids[i]} f=${files[i]}
    t0=$(date +%s)
    log=$logs/$id.log
    : >"$log"
    src=$tree_abs/$f
    obj=
    case $f in *.c) obj=$tree_abs/build/obj/${f%.c}.o ;; esac
    cp -p "$src" "$logs/.orig" || die "cannot back up $src"
    if [ -n "$obj" ] && [ -f "$obj" ]; then cp -p "$obj" "$logs/.orig.o"; else rm -f "$logs/.orig.o"; fi
    result= caught_by=
    bad_base=
    while IFS=$'\t' read -r num cs; do
        e="$num"$'\t'"$cs"
        if [ -n "${base[$e]:-}" ] && [ "${base[$e]}" != pass ]; then bad_base=$(entry_name "$num" "$cs"); fi
    done < <(entries_of "$i")
    if [ -n "$bad_base" ]; then
        result="ERROR: baseline" caught_by="$bad_base fails unmutated"
    else
        apply_to "$src" "${froms[i]}" "${tos[i]}"
        touch "$src"
        if cmp -s "$src" "$logs/.orig"; then
            result="ERROR: not applied"
        elif ! build "$log.build"; then
            result="ERROR: no build" caught_by="first error: $(grep -m1 'error:' "$log.build" | sed 's/^.*error: //' | cut -c1-60)"
        else
            result=survived
            while IFS=$'\t' read -r num cs; do
                r=$(run_entry "$num" "$cs" "$log.run")
                { echo "== $(entry_name "$num" "$cs"): $r"; cat "$log.run"; } >>"$log"
                case $r in
                fail) result=caught caught_by=$(entry_name "$num" "$cs"); break ;;
                timeout) result="caught (timeout)" caught_by="$(entry_name "$num" "$cs") > ${limit} s"; break ;;
                empty) result="ERROR: no checks ran" caught_by=$(entry_name "$num" "$cs"); break ;;
                esac
            done < <(entries_of "$i")
            rm -f "$log.run"
        fi
        # revert: the original source (its own timestamp) and its object, touched so that the
        # libraries and programs built from the mutant are relinked at the next build
        cp -p "$logs/.orig" "$src"
        if [ -f "$logs/.orig.o" ]; then cp -p "$logs/.orig.o" "$obj" && touch "$obj"; else touch "$src"; fi
    fi
    secs_i=$(($(date +%s) - t0))
    case $result in
    caught*) caught=$((caught + 1)) ran=$((ran + 1)) ;;
    survived)
        ran=$((ran + 1)) survived=$((survived + 1))
        if [ "${expects[i]}" = survives ]; then result="survived (expected)"; else
            result="SURVIVED (unexplained)" unexplained=$((unexplained + 1)); fi ;;
    *) errors=$((errors + 1)) ;;
    esac
    if [[ $result == caught* ]] && [ "${expects[i]}" = survives ]; then
        result="$result; list says survives"
    fi
    res[i]=$result by[i]=$caught_by secs[i]=$secs_i
    printf 'mutants: [%d/%d] %-32s %-24s %s %s(%d s)\n' "$((${#res[@]}))" "${#sel[@]}" "$id" "$result" \
        "${caught_by:+by $caught_by }" "" "$secs_i"
done
rm -f "$logs/.orig" "$logs/.orig.o"

# ---- the table and the score --------------------------------------------------------------------
report=$work/report.txt
{
    printf '%-32s %-24s %-26s %-24s %-44s %5s\n' id concept file result "caught by" s
    for i in "${sel[@]}"; do
        printf '%-32s %-24s %-26s %-24s %-44s %5d\n' "${ids[i]}" "${concepts[i]:0:24}" "${files[i]}" "${res[i]}" \
            "${by[i]:--}" "${secs[i]}"
    done
    echo
    for i in "${sel[@]}"; do
        case ${res[i]} in
        survived*) printf 'survivor %s: %s\n' "${ids[i]}" "${notes[i]}" ;;
        SURVIVED*) printf 'UNEXPLAINED survivor %s (%s): add a test that catches it, or mark it expect: survives with the reason\n' \
            "${ids[i]}" "${notes[i]}" ;;
        esac
    done
    pct=$(awk -v c="$caught" -v r="$ran" 'BEGIN { printf "%.1f", r ? 100 * c / r : 0 }')
    elapsed=$(($(date +%s) - start_all))
    printf '\n%d caught of %d (%s%%); %d survived (%d unexplained); %d error(s); %d min %d s on %s, %s cores\n' \
        "$caught" "$ran" "$pct" "$survived" "$unexplained" "$errors" $((elapsed / 60)) $((elapsed % 60)) \
        "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || uname -m)" "$(nproc)"
} | tee "$report"
say "table in $report, each mutant's test output in $logs/<id>.log"

pass=$(awk -v c="$caught" -v r="$ran" 'BEGIN { print (r > 0 && c * 100 >= 95 * r) ? 1 : 0 }')
if [ "$pass" = 1 ] && [ "$errors" = 0 ] && [ "$unexplained" = 0 ]; then
    say "PASS"
    exit 0
fi
[ "$pass" = 1 ] || say "FAIL: fewer than 95% of the mutants were caught"
[ "$errors" = 0 ] || say "FAIL: $errors mutant(s) could not be run (ERROR rows above)"
[ "$unexplained" = 0 ] || say "FAIL: $unexplained survivor(s) are not explained in $list"
exit 1
