#!/usr/bin/env bash
# The accuracy cost of update compression on federated Shakespeare: the same `loom sim` run (the
# "tiny" GPT-2 shape from scratch, FedAvg, 10 of the clients per round, E = 10 local SGD steps) with
# each --compress codec: none (f32), fp16, int8 (per-chunk absmax scales) and topk:0.01 (error
# feedback). Prints per codec the final evaluation loss and perplexity and the bytes uploaded (the
# encoded update sizes summed over the rounds), against f32. bench/compress_cost.c measures the same
# through loom_sim_run directly.
# Usage: bash bench/compress.sh [ROUNDS] [CODEC ...]      (default 10 rounds, all four codecs)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
shift || true
codecs=("$@")
[ ${#codecs[@]} -eq 0 ] && codecs=(none fp16 int8 topk:0.01)
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
bash scripts/build.sh > /dev/null
out=runs/bench-compress
mkdir -p "$out"
common=(--model tiny --data shakespeare --sample 10 --batch 8 --seq 64 --local-steps 10 --optimizer sgd --lr 0.5
        --clip 1 --rounds "$rounds" --eval-every 0 --eval-clients 30 --sample-len 0 --seed 1 --workers 2
        --quiet-clients)
printf '%-12s %10s %10s %14s %8s\n' codec eval_loss perplexity bytes_up vs_f32
base=""
for c in "${codecs[@]}"; do
  dir="$out/${c//:/_}"
  rm -rf "$dir"
  ./build/loom sim "${common[@]}" --compress "$c" --out "$dir" > "$dir.log" 2>&1 || {
    echo "compress: loom sim --compress $c failed (see $dir.log)" >&2
    exit 1
  }
  # the round rows: the last eval_loss and the sum of bytes_up
  read -r loss up < <(awk '/"type":"round"/ {
      if (match($0, /"eval_loss":[-0-9.eE+]+/)) loss = substr($0, RSTART + 12, RLENGTH - 12)
      if (match($0, /"bytes_up":[-0-9.eE+]+/)) up += substr($0, RSTART + 11, RLENGTH - 11)
    } END { printf "%s %.0f\n", loss, up }' "$dir/metrics.jsonl")
  [ -z "$base" ] && base=$up
  awk -v c="$c" -v l="$loss" -v u="$up" -v b="$base" \
    'BEGIN { printf "%-12s %10.4f %10.3f %14.0f %8.4f\n", c, l, exp(l), u, u / b }'
done
