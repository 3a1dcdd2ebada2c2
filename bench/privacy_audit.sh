#!/usr/bin/env bash
# What differential privacy buys against membership inference and canary extraction, on one fixed
# federated setting run three times: without DP, with DP at epsilon about 8 and about 2.
#
# The setting: the pretrained stories260K Llama (llama2.c, 512-token vocabulary) fine-tuned with LoRA
# (r 16 on all seven projections) by FedAvg over 4 clients of Tiny Shakespeare, every client every
# round, 10 rounds of 15 local AdamW steps (lr 0.01, batches of 8 x 64 tokens). Each client's file
# holds 64 lines of one passage, one line per example (blank-line separated paragraphs). Client 0 is
# the canary client: its 64 lines are the odd lines of a passage (the members), and 4 canaries
# "my secret code is # # # # # #" are appended to it 4 times each (loom audit canaries --insert).
# The even lines of the same passage, never trained on, are the non-members.
#
# Each run is audited with loom audit mia (loss threshold, and calibrated by the pretrained base as
# the reference model) and loom audit exposure (each canary ranked among 1000 random candidates of
# its format: exposure at most log2(1001) = 9.97 bits, about 1.44 for a canary never seen).
#
# DP (MODE, default sgd): --dp sgd (DP-SGD in every client's training: example-level DP, the level
# that membership of an example needs), central (DP-FedAvg) or local. The noise multiplier for a
# target epsilon comes from loom dp sigma with q and steps as the mode accounts them (sgd: q = batch /
# the fewest examples of a client, steps = rounds x local steps; central: q = clients per round /
# clients, steps = rounds; local: q = 1, steps = rounds, noise doubled), delta 1e-5; the table reports
# the epsilon the run itself wrote in its last metrics.jsonl round row. A DP run that fails, or that
# writes no epsilon, stops the script with an error.
#
# Usage: bash bench/privacy_audit.sh [MODE] [ROWS]
#   MODE  sgd (default), central or local
#   ROWS  the runs, default "none 8 2" (no DP, then each target epsilon)
# Environment: ROUNDS (10), LOCAL_STEPS (15), CANDIDATES (1000), DP_CLIP (sgd 1, central/local 5),
# DP_DELTA (1e-5), WORKERS (2), LOOM_BIN (a loom binary to use instead of building build/loom).
# Runs go to runs/bench-privacy-audit/.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-sgd}
rows=${2:-"none 8 2"}
case "$mode" in
sgd | central | local) ;;
*) echo "privacy_audit: MODE must be sgd, central or local (got '$mode')" >&2; exit 2 ;;
esac
rounds=${ROUNDS:-10}
local_steps=${LOCAL_STEPS:-15}
candidates=${CANDIDATES:-1000}
delta=${DP_DELTA:-1e-5}
workers=${WORKERS:-2}
if [ "$mode" = sgd ]; then clip=${DP_CLIP:-1}; else clip=${DP_CLIP:-5}; fi
batch=8
seq=64
nclients=4
for tool in python3 awk; do
  command -v "$tool" > /dev/null || { echo "privacy_audit: needs $tool" >&2; exit 1; }
done
. bench/lib.sh
M="$LOOM_SHARED/data/stories260K/stories260K.bin"
K="$LOOM_SHARED/data/stories260K/tok512.bin"
TXT="$LOOM_SHARED/data/tinyshakespeare/input.txt"
for f in "$M" "$K" "$TXT"; do
  [ -s "$f" ] || { echo "privacy_audit: missing $f (LOOM_SHARED=$LOOM_SHARED)" >&2; exit 1; }
done
out=runs/bench-privacy-audit
rm -rf "$out"
mkdir -p "$out/clients"
t_start=$(date +%s)

# ---- data: one line per example (each its own paragraph)
para() { awk 'NF { print; print "" }'; }
awk 'length($0) > 20' "$TXT" > "$out/lines.txt"
sed -n '3001,3128p' "$out/lines.txt" | awk 'NR % 2 == 1' > "$out/members.txt"
sed -n '3001,3128p' "$out/lines.txt" | awk 'NR % 2 == 0' > "$out/nonmembers.txt"
para < "$out/members.txt" > "$out/clients/client_0.txt"
for c in $(seq 1 $((nclients - 1))); do
  sed -n "$((6001 + 64 * c)),$((6064 + 64 * c))p" "$out/lines.txt" | para > "$out/clients/client_$c.txt"
done
$L audit canaries --out "$out/canaries" --n 4 --seed 11 --insert "$out/clients/client_0.txt" --repeat 4 2> /dev/null
# the fewest examples of a client (non-blank lines: one example each), for DP-SGD's sampling rate
min_ex=$(for f in "$out"/clients/*.txt; do grep -c . "$f"; done | sort -n | head -1)

common=(--clients-dir "$out/clients" --model "$M" --tokenizer "$K" --peft lora --lora-r 16
        --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
        --rounds "$rounds" --local-steps "$local_steps" --batch "$batch" --seq "$seq" --optimizer adamw --lr 0.01
        --test-frac 0 --eval-every 0 --sample-len 0 --seed 1 --workers "$workers" --quiet-clients)

# noise multiplier for a target epsilon under MODE's accounting
sigma_for() {
  local eps=$1 q steps
  case "$mode" in
  sgd) q=$(awk -v b=$batch -v n="$min_ex" 'BEGIN { q = b / n; if (q > 1) q = 1; printf "%.10g", q }'); steps=$((rounds * local_steps)) ;;
  central) q=1; steps=$rounds ;;
  local) q=1; steps=$rounds ;;
  esac
  local s
  s=$($L dp sigma --q "$q" --steps "$steps" --delta "$delta" --epsilon "$eps" --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["sigma"])')
  [ "$mode" = local ] && s=$(awk -v s="$s" 'BEGIN { printf "%.10g", 2 * s }')
  echo "$s"
}

jget() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))' "$@"; }

results="$out/results.tsv"
printf 'row\tsigma\tepsilon\tauc_loss\tauc_ref\ttpr_loss\ttpr_ref\texposure_mean\texposure_max\texposure_ceiling\tseconds\n' > "$results"
for row in $rows; do
  dir="$out/run-$row"
  t0=$(date +%s)
  dp=()
  sigma=-
  if [ "$row" != none ]; then
    sigma=$(sigma_for "$row")
    dp=(--dp "$mode" --dp-clip "$clip" --dp-noise "$sigma" --dp-delta "$delta")
  fi
  echo "privacy_audit: run $row (${dp[*]:-no DP})" >&2
  if ! $L sim "${common[@]}" "${dp[@]}" --out "$dir" > "$dir.log" 2>&1; then
    echo "privacy_audit: loom sim ${dp[*]:-} FAILED (see $dir.log):" >&2
    tail -5 "$dir.log" >&2
    exit 1
  fi
  eps=inf
  if [ "$row" != none ]; then
    eps=$(awk '/"type":"round"/ { e = ""; if (match($0, /"epsilon":[-0-9.eE+]+/)) e = substr($0, RSTART + 10, RLENGTH - 10) } END { print e }' "$dir/metrics.jsonl")
    if [ -z "$eps" ]; then
      echo "privacy_audit: the DP run $row wrote no epsilon in its last round row ($dir/metrics.jsonl)" >&2
      exit 1
    fi
  fi
  $L audit mia --model "$M" --tokenizer "$K" --adapter "$dir/adapter" --members "$out/members.txt" \
    --nonmembers "$out/nonmembers.txt" --reference "$M" --json > "$dir/mia.json" 2> "$dir/mia.err" ||
    { echo "privacy_audit: loom audit mia failed on run $row:" >&2; cat "$dir/mia.err" >&2; exit 1; }
  $L audit exposure --model "$M" --tokenizer "$K" --adapter "$dir/adapter" --canaries "$out/canaries" \
    --candidates "$candidates" --json > "$dir/exposure.json" 2> "$dir/exposure.err" ||
    { echo "privacy_audit: loom audit exposure failed on run $row:" >&2; cat "$dir/exposure.err" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$sigma" "$eps" \
    "$(jget "$dir/mia.json" "loss['auc']")" "$(jget "$dir/mia.json" "reference['auc']")" \
    "$(jget "$dir/mia.json" "loss['tpr_at_fpr']")" "$(jget "$dir/mia.json" "reference['tpr_at_fpr']")" \
    "$(jget "$dir/exposure.json" mean_exposure)" "$(jget "$dir/exposure.json" max_exposure)" \
    "$(jget "$dir/exposure.json" max_possible)" "$(($(date +%s) - t0))" >> "$results"
done

echo
echo "stories260K + LoRA, FedAvg over $nclients clients, $rounds rounds x $local_steps local steps; DP mode $mode" \
     "(clip $clip, delta $delta); members: the canary client's 64 lines, non-members: 64 held-out lines"
echo
echo "| DP | noise multiplier | epsilon | AUC (loss) | AUC (reference) | TPR at 1% FPR (loss / reference) | canary exposure mean / max (bits, of $(jget "$out/run-$(echo $rows | awk '{print $1}')/exposure.json" "round(max_possible, 2)")) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -F'\t' -v mode="$mode" 'NR > 1 {
  dp = $1 == "none" ? "none" : mode " (target " $1 ")"
  eps = $1 == "none" ? "inf" : sprintf("%.2f", $3)
  sig = $2 == "-" ? "-" : sprintf("%.3g", $2)
  printf "| %s | %s | %s | %.3f | %.3f | %.3f / %.3f | %.2f / %.2f |\n", dp, sig, eps, $4, $5, $6, $7, $8, $9
}' "$results"
echo
echo "privacy_audit: $(($(date +%s) - t_start)) s in all; per run: $(awk -F'\t' 'NR > 1 { printf "%s %ss  ", $1, $11 }' "$results")"
echo "privacy_audit: results in $results"
