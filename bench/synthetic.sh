#!/usr/bin/env bash
# Synthetic data for clients with little data, on a non-IID split: federated Shakespeare (one client per
# role; roles from 64 lines up, so the sizes are skewed), the "tiny" GPT-2 shape from scratch, FedAvg with
# 10 clients per round and E = 10 local SGD steps. A teacher of the same shape is first trained centrally
# on public text from another source (the Brown corpus; no client data), then writes --synthetic N
# samples that every client with fewer than --synthetic-below examples mixes into its training.
# Prints per round the pooled evaluation accuracy and the worst evaluated client's accuracy
# (eval_acc_min) with and without the samples.
# Usage: bash bench/synthetic.sh [ROUNDS] [N] [BELOW] [BUILD_DIR]   (default 10 rounds, 200, 150, build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
n=${2:-200}
below=${3:-150}
build=${4:-build}
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
[ -x "$build/loom" ] || bash scripts/build.sh > /dev/null
out=runs/bench-synthetic
mkdir -p "$out"
cat "$LOOM_SHARED"/data/brown-corpus/c[a-c]?? > "$out/public.txt"
if [ ! -s "$out/teacher/model.safetensors" ]; then
  "$build/loom" train --model tiny --data "$out/public.txt" --steps 300 --batch 8 --seq 64 --lr 3e-3 --sample-len 0 \
      --eval-every 0 --seed 2 --out "$out/teacher" > "$out/teacher.log" 2>&1
fi
common=(--model tiny --data shakespeare --sample 10 --batch 8 --seq 64 --local-steps 10 --optimizer sgd --lr 0.5
        --clip 1 --rounds "$rounds" --eval-every 1 --eval-clients 30 --sample-len 0 --seed 1 --workers 2
        --quiet-clients)
run() { # name, extra flags...
  local name=$1
  shift
  rm -rf "${out:?}/$name"
  "$build/loom" sim "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1 || {
    echo "synthetic: loom sim $* failed (see $out/$name.log)" >&2
    exit 1
  }
}
run plain
run synthetic --synthetic "$n" --synthetic-below "$below" --synthetic-teacher "$out/teacher"
grep 'synthetic data' "$out/synthetic.log" | sed 's/^ *//'
col() { grep '"type":"round"' "$out/$1/metrics.jsonl" | sed "s/.*\"$2\":\([-0-9.e+]*\).*/\1/"; }
printf '%-6s %12s %12s %12s %12s\n' round acc_plain worst_plain acc_synth worst_synth
paste <(col plain round) <(col plain eval_acc) <(col plain eval_acc_min) <(col synthetic eval_acc) \
    <(col synthetic eval_acc_min) | awk '{printf "%-6s %12.4f %12.4f %12.4f %12.4f\n", $1, $2, $3, $4, $5}'
