#!/usr/bin/env bash
# Split learning (SplitLoRA): what a client moves and holds, against a client running the whole model and
# sending its LoRA update. bench/split_cost.c prints, for each cut k, the bytes of one step (activations and
# targets up, their gradient down), a round's bytes each way (E local steps, plus the client part's
# download and upload) against the whole adapter's, and the client's memory (its base weights, its part's
# workspace, 16 bytes a trained value) against the whole model's. Then one federated Shakespeare run split
# and unsplit (`loom sim --split-layer`), which must give the same global adapter, with both wall times.
# Usage: bash bench/split.sh [B [T [E]]]      (default batches of 4 x 128, 4 local steps a round)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-4} T=${2:-128} E=${3:-4}
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
bash scripts/build.sh > /dev/null
cmake --build build --target split_cost > /dev/null
for shape in gpt2-124m llama-110m; do
  ./build/split_cost "$shape" "$B" "$T" "$E" lora 8
  echo
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--model tiny --data shakespeare --sample 4 --batch 4 --seq 64 --local-steps "$E" --rounds 3 --peft lora
        --lora-r 8 --lr 0.05 --eval-every 0 --sample-len 0 --seed 1 --workers 1 --quiet-clients)
for k in none 2; do
  extra=()
  [ "$k" != none ] && extra=(--split-layer "$k")
  s=$(date +%s%N)
  ./build/loom sim "${common[@]}" "${extra[@]}" --out "$out/$k" > "$out/$k.log" 2>&1
  e=$(date +%s%N)
  printf 'loom sim, split %-5s %6d ms\n' "$k" $(((e - s) / 1000000))
done
cmp -s "$out/none/global.safetensors" "$out/2/global.safetensors" && echo "split and unsplit global adapters: identical"
grep -E "split bytes|traffic|client memory" "$out/2.log"
