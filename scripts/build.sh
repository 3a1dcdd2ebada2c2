#!/usr/bin/env bash
# Configures and builds loom into build/ (Release), or with --sanitize build-asan/ (ASan+UBSan), or with
# --tsan build-tsan/ (ThreadSanitizer). Further arguments name the targets to build (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build; extra=()
case "${1:-}" in
--sanitize) dir=build-asan; extra=(-DLOOM_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo); shift ;;
--tsan) dir=build-tsan; extra=(-DLOOM_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo); shift ;;
esac
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$dir" -j"$(nproc)" "${targets[@]}"
