#!/usr/bin/env bash
# Decentralized federation against the centralized run: the same data, seeds and client training
# (the "tiny" GPT-2 shape from scratch, 8 IID clients of the first 400 kB of Tiny Shakespeare, E = 10
# local SGD steps of 8 x 32 tokens, every client every round) as loom sim's FedAvg and as peers that
# gossip over several topologies (Metropolis-Hastings weights). Prints per run the final consensus
# distance, the average model's evaluation loss and accuracy, the peers' own accuracy (mean, min, max)
# and the vectors exchanged per peer per round; metrics.jsonl and the plots stay in runs/bench-decentral.
# Usage: bash bench/decentral.sh [ROUNDS]      (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-20}
out=runs/bench-decentral
mkdir -p "$out"
head -c 400000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$out/text.txt"
common=(--model tiny --data "$out/text.txt" --clients 8 --batch 8 --seq 32 --local-steps 10 --optimizer sgd --lr 0.5
        --clip 1 --rounds "$rounds" --eval-every 5 --sample-len 0 --seed 1 --workers 2 --quiet-clients)
printf '%-24s %12s %10s %8s %22s %12s\n' run consensus eval_loss acc "peer acc (min..max)" vectors/peer
row() { # NAME DIR VECTORS_PER_PEER
  awk -v name="$1" -v v="$3" '/"type":"round"/ { last = $0 } END {
      c = "-"; l = "nan"; a = "nan"; pa = "-"; lo = ""; hi = ""
      if (match(last, /"consensus":[-0-9.eE+]+/)) c = sprintf("%.3g", substr(last, RSTART + 12, RLENGTH - 12))
      if (match(last, /"eval_loss":[-0-9.eE+]+/)) l = substr(last, RSTART + 12, RLENGTH - 12)
      if (match(last, /"eval_acc":[-0-9.eE+]+/)) a = substr(last, RSTART + 11, RLENGTH - 11)
      if (match(last, /"peer_acc_mean":[-0-9.eE+]+/)) pa = sprintf("%.4f", substr(last, RSTART + 16, RLENGTH - 16))
      if (match(last, /"peer_acc_min":[-0-9.eE+]+/)) lo = sprintf("%.4f", substr(last, RSTART + 15, RLENGTH - 15))
      if (match(last, /"peer_acc_max":[-0-9.eE+]+/)) hi = sprintf("%.4f", substr(last, RSTART + 15, RLENGTH - 15))
      printf "%-24s %12s %10.4f %8.4f %22s %12s\n", name, c, l, a, pa (lo != "" ? " (" lo ".." hi ")" : ""), v
    }' "$2/metrics.jsonl"
}
rm -rf "$out/fedavg"
"$L" sim "${common[@]}" --out "$out/fedavg" > "$out/fedavg.log" 2>&1
row "fedavg (server)" "$out/fedavg" "2 (up+down)"
for spec in "full 1" "ring 1" "ring 5" "kregular:4 1" "ring 0"; do
  set -- $spec
  dir="$out/${1//:/_}-s$2"
  rm -rf "$dir"
  "$L" sim "${common[@]}" --decentralized --topology "$1" --gossip-steps "$2" --out "$dir" > "$dir.log" 2>&1
  deg=$(sed -n 's/.*degree \([0-9]*\)\.\..*/\1/p' "$dir.log" | head -1)
  row "$1, $2 step(s)" "$dir" "$((deg * $2))"
done
