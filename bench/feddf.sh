#!/usr/bin/env bash
# FedDF's server distillation on a non-IID split: federated Shakespeare (one client per role, so each
# client's text is one character's lines), the "tiny" GPT-2 shape from scratch, FedAvg with 10 clients
# per round and E = 10 local SGD steps, with and without --server-distill on public text from another
# source (the Brown corpus, unlabeled: the server never sees a client's data). Prints the evaluation
# loss on the clients' held-out text after each round, for both runs, and the time per round.
# Usage: [LR=0.5] bash bench/feddf.sh [ROUNDS] [DISTILL_STEPS] [BUILD_DIR]   (default 10 rounds, 20 steps, build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
steps=${2:-20}
build=${3:-build}
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
[ -x "$build/loom" ] || bash scripts/build.sh > /dev/null
out=runs/bench-feddf${OUT_TAG:-}
mkdir -p "$out"
cat "$LOOM_SHARED"/data/brown-corpus/c[a-c]?? > "$out/public.txt" # press, editorials, reviews
common=(--model tiny --data shakespeare --sample 10 --batch 8 --seq 64 --local-steps 10 --optimizer sgd --lr "${LR:-0.5}"
        --clip 1 --rounds "$rounds" --eval-every 1 --eval-clients 30 --sample-len 0 --seed 1 --workers 2
        --quiet-clients)
run() { # name, extra flags...
  local name=$1
  shift
  rm -rf "${out:?}/$name"
  "$build/loom" sim "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1 || {
    echo "feddf: loom sim $* failed (see $out/$name.log)" >&2
    exit 1
  }
}
run fedavg
run feddf --server-distill "$out/public.txt" --distill-steps "$steps" --distill-temp 1 --distill-lr 1e-3
col() { grep '"type":"round"' "$out/$1/metrics.jsonl" | sed "s/.*\"$2\":\([-0-9.e+]*\).*/\1/"; }
printf '%-6s %14s %14s\n' round fedavg "feddf($steps)"
paste <(col fedavg round) <(col fedavg eval_loss) <(col feddf eval_loss) | awk '{printf "%-6s %14.4f %14.4f\n", $1, $2, $3}'
for n in fedavg feddf; do
  printf '%-8s %s\n' "$n" "$(grep -E '^time' "$out/$n.log")"
done
