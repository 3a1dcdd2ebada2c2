#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/, clang with ASan+UBSan, in build-fuzz) and runs each for a
# bounded time from seeds written out of ../shared into a temporary directory. Fails if any harness
# finds a crash, a leak, undefined behaviour or a timeout; the input is kept in build-fuzz/crashes/.
#   scripts/fuzz.sh              each harness for FUZZ_SECONDS (default 10) seconds
#   FUZZ_SECONDS=300 scripts/fuzz.sh fuzz_dataset    a longer run of one harness
# Needs clang-14, libclang-rt-14-dev (libFuzzer and the sanitizer runtimes) and libomp-14-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${LOOM_SHARED:-../shared}
SECS=${FUZZ_SECONDS:-10}
CC_FUZZ=${CC_FUZZ:-$(command -v clang-14 || command -v clang || true)}
if [ -z "$CC_FUZZ" ]; then echo "fuzz: clang not found (apt-get install --no-install-recommends clang-14 libclang-rt-14-dev libomp-14-dev)" >&2; exit 1; fi
CC="$CC_FUZZ" cmake -S . -B build-fuzz -DLOOM_FUZZ=ON -DLOOM_SANITIZE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
if ! cmake --build build-fuzz -j2 --target loom_fuzz > build-fuzz/build.log 2>&1; then
  grep -E "error" build-fuzz/build.log | head -20 >&2
  echo "fuzz: the harnesses do not build (build-fuzz/build.log)" >&2
  exit 1
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
build-fuzz/fuzz/fuzz_make_seeds "$SHARED" "$tmp/seeds" > /dev/null
mkdir -p "$tmp/seeds/fuzz_sim_config" build-fuzz/crashes
cp configs/*.json "$tmp/seeds/fuzz_sim_config/" 2>/dev/null || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_safetensors fuzz_st_index fuzz_tokenizer_json fuzz_gpt2_bpe fuzz_tokenizer_bin fuzz_llama2c
           fuzz_adapter_config fuzz_config fuzz_dataset fuzz_sim_config fuzz_update fuzz_server
           fuzz_secagg fuzz_gguf)
fi
if [ $# -eq 0 ]; then targets+=(fuzz_paillier); fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$tmp/corpus/$t" "$tmp/seeds/$t"
  if build-fuzz/fuzz/$t -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
       -artifact_prefix="build-fuzz/crashes/$t-" -print_final_stats=1 \
       "$tmp/corpus/$t" "$tmp/seeds/$t" > "$tmp/$t.log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$tmp/$t.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $t ok, $execs executions in ${SECS}s"
  else
    failed=1
    echo "fuzz: $t FAILED (input kept under build-fuzz/crashes/):" >&2
    grep -E "ERROR|runtime error|fuzz_assert|SUMMARY|Test unit written" "$tmp/$t.log" | head -20 >&2
  fi
done
exit $failed
