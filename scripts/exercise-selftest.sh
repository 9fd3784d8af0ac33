#!/usr/bin/env bash
# exercise-selftest.sh: proves workshop mode in both directions, for every chapter: the exercise
# file as generated from the chapter must fail the chapter's tests (with its TODO message), and
# the same file with the TODOs filled by the chapter's own code must pass them. Uses its own
# folder for the exercise files, so a student's work in exercises/ is never touched.
set -u
cd "$(dirname "$0")/.." || exit 2
export EXERCISE_DIR=build/exercise/selftest
rc=0
for n in 1 2 3 4 5 6; do
    out=$(bash scripts/exercise.sh "$n" --fresh 2>&1)
    if [ $? -eq 0 ] || ! grep -q "not yet" <<<"$out" || ! grep -q "TODO" <<<"$out"; then
        echo "exercise-selftest: chapter $n: the untouched exercise did not fail with its TODO message"
        echo "$out" | tail -n 5
        rc=1
    fi
    if ! out=$(bash scripts/exercise.sh "$n" --solution 2>&1); then
        echo "exercise-selftest: chapter $n: the exercise filled with the chapter's code does not pass"
        echo "$out" | tail -n 5
        rc=1
    fi
    echo "exercise-selftest: chapter $n: $([ $rc -eq 0 ] && echo "fails untouched, passes solved" || echo FAILED)"
done
exit $rc
