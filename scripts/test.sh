#!/usr/bin/env bash
# The test command: installs missing packages, builds loom (Release, ASan+UBSan, and ThreadSanitizer for
# the threaded tests), runs the CTest suite on each build, checks that no test left files in the work
# tree or a build directory, and ends with the totals of every stage. Needs ../shared beside the
# repository. LOOM_TEST_TSAN=0 skips the ThreadSanitizer stage, LOOM_TEST_FUZZ=0 the fuzzing stage.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/deps.sh --test
if [ ! -d ../shared/reference ]; then echo "test data missing: expected ../shared beside the repository" >&2; exit 1; fi

summary=()
total_pass=0 total_fail=0 bad=0
stage_time() { echo "$(( $(date +%s) - $1 ))s"; }

# What is in the work tree and at the top of the build directories (ctest's Testing/ aside): compared
# before and after the tests, so that files a test leaves behind are named.
worktree_state() {
    if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
        git status --porcelain --ignored --untracked-files=all | grep -Ev '^!! build[^/]*/' || true
    fi
    local d
    for d in build build-asan build-tsan; do
        if [ -d "$d" ]; then ls -A "$d" | grep -v '^Testing$' | sed "s|^|$d/|" || true; fi
    done
}

# run_suite NAME DIR [ctest options...]: runs ctest in DIR and records "NAME: N passed, M failed".
run_suite() {
    local name=$1 dir=$2 t log rc=0
    shift 2
    t=$(date +%s)
    log=$(mktemp "${TMPDIR:-/tmp}/loom_ctest_XXXXXX")
    echo "== tests, $name"
    (cd "$dir" && ctest --output-on-failure -j2 "$@") 2>&1 | tee "$log" || rc=$?
    local line total failed
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1 || true)
    rm -f "$log"
    if [ -z "$line" ]; then
        summary+=("$(printf '%-22s no ctest summary (exit %d) [%s]' "$name:" "$rc" "$(stage_time "$t")")")
        bad=1
        return
    fi
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<< "$line")
    failed=$(sed -E 's/.* ([0-9]+) tests? failed.*/\1/' <<< "$line")
    total_pass=$((total_pass + total - failed))
    total_fail=$((total_fail + failed))
    [ "$failed" -eq 0 ] && [ "$rc" -eq 0 ] || bad=1
    summary+=("$(printf '%-22s %d passed, %d failed [%s]' "$name:" "$((total - failed))" "$failed" "$(stage_time "$t")")")
}

t=$(date +%s); bash scripts/build.sh; summary+=("$(printf '%-22s [%s]' "build release:" "$(stage_time "$t")")")
t=$(date +%s); bash scripts/build.sh --sanitize; summary+=("$(printf '%-22s [%s]' "build asan+ubsan:" "$(stage_time "$t")")")
tsan=${LOOM_TEST_TSAN:-1}
if [ "$tsan" != 0 ]; then
    # only the targets of the tests labelled "threaded" (see CMakeLists.txt)
    t=$(date +%s)
    cmake -S . -B build-tsan -DLOOM_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
    mapfile -t threaded < <(cd build-tsan && ctest -N -L threaded 2>/dev/null | sed -n 's/^ *Test *#[0-9]*: *//p')
    bash scripts/build.sh --tsan "${threaded[@]}"
    summary+=("$(printf '%-22s [%s] (%s)' "build tsan:" "$(stage_time "$t")" "${threaded[*]}")")
fi

before=$(worktree_state)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_suite "release" build
run_suite "asan+ubsan" build-asan
if [ "$tsan" != 0 ]; then
    # libgomp is not instrumented, so ThreadSanitizer would report its barriers as races: the threaded
    # tests run with one OpenMP thread per worker (the simulator's own threads are what is checked).
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
    run_suite "tsan (threaded)" build-tsan -L threaded
    unset OMP_NUM_THREADS OPENBLAS_NUM_THREADS TSAN_OPTIONS
fi

# every libFuzzer harness for a bounded time (FUZZ_SECONDS each; LOOM_TEST_FUZZ=0 skips the stage)
if [ "${LOOM_TEST_FUZZ:-1}" != 0 ]; then
    t=$(date +%s)
    echo "== fuzzing, ${FUZZ_SECONDS:-1} s per harness"
    flog=$(mktemp "${TMPDIR:-/tmp}/loom_fuzz_XXXXXX")
    if FUZZ_SECONDS=${FUZZ_SECONDS:-1} bash scripts/fuzz.sh 2>&1 | tee "$flog"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        summary+=("$(printf '%-22s %d harnesses, no crash [%s]' "fuzz:" "$(grep -c ' ok, ' "$flog")" "$(stage_time "$t")")")
    else
        summary+=("$(printf '%-22s FAILED (inputs in build-fuzz/crashes/) [%s]' "fuzz:" "$(stage_time "$t")")")
        total_fail=$((total_fail + 1))
        bad=1
    fi
    rm -f "$flog"
fi


left=$(comm -13 <(sort <<< "$before") <(worktree_state | sort))
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ -n "$left" ]; then
    echo "tests left files behind (they must write only under a fresh /tmp directory):"
    sed 's/^/    /' <<< "$left"
    bad=1
else
    echo "work tree and build directories: nothing left behind"
fi
echo "total: $total_pass passed, $total_fail failed in $(stage_time "$t0")"
exit "$bad"
