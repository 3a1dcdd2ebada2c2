#!/usr/bin/env bash
# Heterogeneous and personalized clients on one non-IID federated classification task: homogeneous LoRA,
# HetLoRA (zero-padding and rank-wise), FLoRA stacking, FFA-LoRA, FedRA, local fine-tuning after
# federation, and FedPer-style personalization (a private last layer), each with the mean and the worst
# client's test accuracy after the last round and the bytes the clients sent per round.
#
# The setting: AG News (../shared/data/ag-news/test.csv: 7,600 news titles and descriptions, 4 topics
# named world, sports, business, science as the verbalizers). The model is the pretrained stories260K
# Llama (llama2.c, 5 layers, 512-token vocabulary), first fine-tuned centrally on the even rows (public
# data: 2,000 AdamW steps of 8 x 48 tokens), then federated with LoRA (r 8 on q_proj, v_proj) on the odd
# rows, split among 10 clients by a Dirichlet(0.3) draw over the labels (each client sees mostly one or
# two topics), all of them in every round: ROUNDS rounds of LOCAL_STEPS AdamW steps of 8 x 48 tokens.
# Every client is evaluated after the last round on its own 20% test split (loom sim --client-eval).
#
# Methods (loom sim flags on top of the common ones):
#   lora              plain LoRA FedAvg, every client at rank 8
#   hetlora-pad       --client-ranks 2,4,8 (in turn): HetLoRA, zero-padded aggregation
#   hetlora-rankwise  --client-ranks 2,4,8 --hetlora-agg rankwise
#   hetlora-sparsity  --client-ranks 2,4,8 --hetlora-agg sparsity (zero-padding weighted by ||B_k A_k||_F)
#   flora             --client-ranks 2,4,8 --hetlora-agg stack (the stacked product merged each round)
#   ffa-lora          --lora-freeze-a (A frozen at its seeded value, B trained and averaged)
#   fedra             --fedra-layers 2 (each client adapts 2 of the 5 layers per round, drawn by the seed)
#   lora+finetune     plain LoRA, then --finetune-steps FT local steps per client
#   fedper            --private layers.4. --finetune-steps FT: the last layer's adapters stay on each
#                     client (never sent, never averaged), then the same local fine-tuning
#
# Usage: bash bench/heterogeneity.sh [--readme]
#   --readme  also copy the plot to docs/heterogeneity.svg and replace the README's table between the
#             markers <!-- heterogeneity:begin --> and <!-- heterogeneity:end -->
# Environment: ROUNDS (10), LOCAL_STEPS (5), FT (10), ALPHA (0.3), WORKERS (2), SEED (1), METHODS (a
# space-separated subset of the list above), LOOM_BIN (a loom binary) and REPORT_BIN (a hetero_report
# binary) instead of building build/. Runs go to runs/bench-heterogeneity/; a finished run is not run
# again (delete its directory to redo it). About 7 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
readme=0
[ "${1:-}" = --readme ] && readme=1
rounds=${ROUNDS:-10}
local_steps=${LOCAL_STEPS:-5}
ft=${FT:-10}
alpha=${ALPHA:-0.3}
workers=${WORKERS:-2}
seed=${SEED:-1}
methods=${METHODS:-"lora hetlora-pad hetlora-rankwise hetlora-sparsity flora ffa-lora fedra lora+finetune fedper"}
. bench/lib.sh
if [ -n "${REPORT_BIN:-}" ]; then
  R=$REPORT_BIN
else
  bash scripts/build.sh hetero_report > /dev/null
  R=./build/hetero_report
fi
S="$LOOM_SHARED/data/stories260K"
out=runs/bench-heterogeneity
mkdir -p "$out"
data="$out/ag_news_odd.csv"
public="$out/ag_news_even.csv"
[ -s "$data" ] || awk 'NR % 2 == 1' "$LOOM_SHARED/data/ag-news/test.csv" > "$data"
[ -s "$public" ] || awk 'NR % 2 == 0' "$LOOM_SHARED/data/ag-news/test.csv" > "$public"
labels=(--format csv --text-col 2 --label-col 1 --labels world,sports,business,science)
if [ ! -s "$out/warm/model.safetensors" ]; then
  echo "heterogeneity: fine-tuning stories260K on the public half (once; about two minutes)"
  "$L" train --model "$S/stories260K.bin" --tokenizer "$S/tok512.bin" --peft full --data "$public" "${labels[@]}" \
    --steps 2000 --batch 8 --seq 48 --optimizer adamw --lr 0.002 --eval-every 0 --sample-len 0 --threads 2 \
    --out "$out/warm" > "$out/warm.log" 2>&1 || { echo "heterogeneity: the warm start failed, see $out/warm.log" >&2; exit 1; }
fi
common=(--model "$out/warm" --tokenizer "$S/tok512.bin" --data "$data" "${labels[@]}" --partition dirichlet
        --alpha "$alpha" --clients 10 --rounds "$rounds" --local-steps "$local_steps" --batch 8 --seq 48
        --optimizer adamw --lr 0.002 --eval-every 0 --sample-len 0 --quiet-clients --workers "$workers" --seed "$seed"
        --peft lora --lora-r 8 --client-eval)
flags_of() {
  case "$1" in
  lora) ;;
  hetlora-pad) echo "--client-ranks 2,4,8" ;;
  hetlora-rankwise) echo "--client-ranks 2,4,8 --hetlora-agg rankwise" ;;
  hetlora-sparsity) echo "--client-ranks 2,4,8 --hetlora-agg sparsity" ;;
  flora) echo "--client-ranks 2,4,8 --hetlora-agg stack" ;;
  ffa-lora) echo "--lora-freeze-a" ;;
  fedra) echo "--fedra-layers 2" ;;
  lora+finetune) echo "--finetune-steps $ft" ;;
  fedper) echo "--private layers.4. --finetune-steps $ft" ;;
  *) echo "heterogeneity: unknown method $1" >&2; return 1 ;;
  esac
}
args=()
for m in $methods; do
  f=$(flags_of "$m")
  dir="$out/$m"
  if [ ! -s "$dir/global.safetensors" ]; then
    rm -rf "$dir"
    echo "heterogeneity: $m ($f)"
    # shellcheck disable=SC2086
    "$L" sim "${common[@]}" $f --out "$dir" > "$dir.log" 2>&1 || { echo "heterogeneity: $m failed, see $dir.log" >&2; exit 1; }
  fi
  args+=("$m=$dir/metrics.jsonl")
done
"$R" --svg "$out/heterogeneity.svg" "${args[@]}" | tee "$out/table.md"
echo "heterogeneity: plot $out/heterogeneity.svg"
if [ $readme = 1 ]; then
  cp "$out/heterogeneity.svg" docs/heterogeneity.svg
  awk -v table="$out/table.md" '
    /<!-- heterogeneity:begin -->/ { print; while ((getline l < table) > 0) print l; skip = 1; next }
    /<!-- heterogeneity:end -->/ { skip = 0 }
    !skip' README.md > README.md.tmp && mv README.md.tmp README.md
  echo "heterogeneity: README.md table and docs/heterogeneity.svg updated"
fi
