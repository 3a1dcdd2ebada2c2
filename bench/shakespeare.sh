#!/usr/bin/env bash
# FedSGD versus FedAvg on federated Shakespeare (natural non-IID split: one client per speaking role),
# next-character prediction with a 2-layer GPT-2-style transformer trained from scratch
# (configs/char-gpt2-small.json). Both sample 10 of the 88 clients per round, batches of 8 x 64
# characters. FedAvg: each client takes E = 10 local SGD steps (lr 0.5, gradient clip 1) and the server
# averages the models (weights |D_n|). FedSGD: each client computes one batch gradient at the global
# model and the server takes one SGD step (lr 0.2; 0.5 diverged) on their weighted mean. Prints the
# rounds each needs to reach the target accuracy on the clients' test lines, their ratio, and a plot.
# Usage: bash bench/shakespeare.sh [TARGET_ACC] [FEDAVG_ROUNDS] [FEDSGD_ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-0.25}
ravg=${2:-100}
rsgd=${3:-400}
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
bash scripts/build.sh > /dev/null
out=runs/bench-shakespeare
mkdir -p "$out"
common=(--model configs/char-gpt2-small.json --data shakespeare --sample 10 --batch 8 --seq 64
        --eval-every 5 --eval-clients 30 --sample-len 0 --seed 1 --workers 2 --quiet-clients)
./build/loom sim "${common[@]}" --strategy fedavg --local-steps 10 --optimizer sgd --lr 0.5 --clip 1 --rounds "$ravg" \
    --out "$out/fedavg"
./build/loom sim "${common[@]}" --strategy fedsgd --local-steps 1 --server-lr 0.2 --rounds "$rsgd" --out "$out/fedsgd"
./build/shakespeare_report --target "$target" --svg "$out/accuracy.svg" \
    FedAvg="$out/fedavg/metrics.jsonl" FedSGD="$out/fedsgd/metrics.jsonl"
