#!/usr/bin/env bash
# Scale of the in-process simulator: 10,000 simulated LoRA clients on the GPT-2 124M shape (random
# weights, the GPT-2 tokenizer; LoRA r 4 on c_attn: 147,456 trainable values) over SST-2 split IID
# (about 6 examples per client), in one process. What is per client and what is shared:
#   shared, read-only  the frozen base (124M parameters), the data set, the tokenizer
#   per worker         one trainer (activations of a B x T batch) and its LoRA vector
#   per client         its example lists, its loom_client_state (data position; no vector: SCAFFOLD's
#                      c_i and a compression residual only when those are on) and its engine slots
# So memory should not grow with the clients: the script measures the peak RSS of a 10,000-client
# population against a 10-client one (the same round), and the round time as the clients per round
# grow (10, 100, 1000; one local step of 1 x 16 tokens each; no evaluation: --test-frac 0).
# Usage: bash bench/scale_clients.sh [PER_ROUND ...]   (default 10 100 1000; LOOM_BIN, WORKERS)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(10 100 1000)
workers=${WORKERS:-1}
out=runs/bench-scale
mkdir -p "$out"
common=(--model gpt2-124m --tokenizer "$LOOM_SHARED/data/gpt2-tokenizer" --peft lora --lora-r 4
        --target-modules c_attn --data "$LOOM_SHARED/data/sst2/train.tsv" --format tsv --text-col sentence
        --label-col label --partition iid --test-frac 0 --rounds 1 --local-steps 1 --batch 1 --seq 16
        --sample-len 0 --seed 1 --workers "$workers" --quiet-clients)
run() { # name clients per_round
  local dir="$out/$1"
  rm -rf "$dir"
  /usr/bin/time -f '%M' -o "$dir.rss" "$L" sim "${common[@]}" --clients "$2" --sample "$3" --out "$dir" \
      > "$dir.log" 2>&1 || { echo "scale: loom sim --clients $2 --sample $3 failed (see $dir.log)" >&2; exit 1; }
  local secs rss
  secs=$(grep -o '"seconds":[0-9.e+-]*' "$dir/metrics.jsonl" | head -1 | cut -d: -f2)
  rss=$(cat "$dir.rss")
  printf '%9d %9d %10.2f %12.1f %10.0f\n' "$2" "$3" "$secs" "$(awk -v s="$secs" -v n="$3" 'BEGIN { print 1000 * s / n }')" \
      "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
  echo "$rss" > "$dir.kb"
}
printf '%9s %9s %10s %12s %10s\n' clients per_round round_s ms_per_client rss_MiB
run pop10 10 10
for n in "${sizes[@]}"; do run "n$n" 10000 "$n"; done
awk -v a="$(cat "$out/pop10.kb")" -v b="$(cat "$out/n${sizes[0]}.kb")" \
    'BEGIN { printf "peak RSS of 10,000 clients minus 10 clients (same round): %.1f MiB, %.0f bytes per client\n", (b - a) / 1024, (b - a) * 1024 / 9990 }'
