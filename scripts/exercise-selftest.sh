#!/usr/bin/env bash
# exercise-selftest.sh (make exercise-check): proves workshop mode in both directions. First every
# spec in scripts/exercises/ must resolve (its file exists, its begin and end anchors each match
# exactly once: a refactor that moved or changed the code fails here, naming the spec), and
# chapters 1..6 must each have one. Then, for every chapter, the exercise file as generated from
# the chapter must fail the chapter's tests (with its TODO message), and the chapter's own file
# must pass them. Uses its own folder for the exercise files ($BUILD/exercise/selftest, BUILD
# defaulting to build), so a student's work in exercises/ is never touched.
set -u
cd "$(dirname "$0")/.." || exit 2
export EXERCISE_DIR=${BUILD:-build}/exercise/selftest
rc=0

# the specs: named NN.ex for a chapter 01..06, and their anchors resolve
declare -A ok=()
for spec in scripts/exercises/*; do
    name=${spec##*/}
    case $name in
    0[1-6].ex) ;;
    *)
        echo "exercise-selftest: $spec: not a spec (expected scripts/exercises/NN.ex, NN = 01..06)"
        rc=1
        continue
        ;;
    esac
    n=${name:1:1}
    if out=$(bash scripts/exercise.sh "$n" --check 2>&1); then
        ok[$n]=1
    else
        echo "exercise-selftest: $spec: FAILED: $out"
        rc=1
    fi
done

for n in 1 2 3 4 5 6; do
    if [ -z "${ok[$n]:-}" ]; then
        [ -f "scripts/exercises/0$n.ex" ] ||
            echo "exercise-selftest: chapter $n: scripts/exercises/0$n.ex is missing"
        echo "exercise-selftest: chapter $n: FAILED (its spec does not resolve)"
        rc=1
        continue
    fi
    crc=0
    # untouched: the suite must fail, and the stub itself must have run (its exercise_todo
    # message is in the suite's full log, which exercise.sh keeps in $BUILD/exercise/<chapter>/)
    log="${BUILD:-build}/exercise/$(basename "$(ls -d 0"$n"_*/)")/test.log"
    if out=$(bash scripts/exercise.sh "$n" --fresh 2>&1) || ! grep -q "not yet" <<<"$out" ||
        ! grep -q "TODO: exercise 0$n," "$log" 2>/dev/null; then
        echo "exercise-selftest: chapter $n: the untouched exercise did not fail with its TODO message"
        echo "$out" | tail -n 5
        crc=1
    fi
    if ! out=$(bash scripts/exercise.sh "$n" --solution 2>&1); then
        echo "exercise-selftest: chapter $n: the chapter's own code does not pass"
        echo "$out" | tail -n 5
        crc=1
    fi
    [ $crc -eq 0 ] || rc=1
    echo "exercise-selftest: chapter $n: $([ $crc -eq 0 ] && echo "fails untouched, passes solved" || echo FAILED)"
done
exit $rc
