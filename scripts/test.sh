#!/usr/bin/env bash
# The test command: installs missing packages, builds loom twice (Release, and ASan+UBSan), and runs
# the whole CTest suite on both builds. Needs ../shared beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ ! -d ../shared/reference ]; then echo "test data missing: expected ../shared beside the repository" >&2; exit 1; fi
bash scripts/build.sh
bash scripts/build.sh --sanitize
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== tests, release build"
(cd build && ctest --output-on-failure -j2)
echo "== tests, ASan+UBSan build"
(cd build-asan && ctest --output-on-failure -j2 -LE nosan)
