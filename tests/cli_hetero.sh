#!/usr/bin/env bash
# loom sim with heterogeneous clients (include/loom/hetero.h): mixed HetLoRA ranks, FFA-LoRA, FedRA,
# device profiles on the virtual clock (stragglers past --deadline), and the refusals of bad flags and
# profile files, each naming the flag or the file and line.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/small.txt"
run="--model tiny --data $tmp/small.txt --clients 8 --rounds 2 --sample 4 --local-steps 1 --batch 2 --seq 32 --sample-len 0 --eval-clients 2 --quiet-clients --peft lora --lora-r 4"

"$LOOM" sim $run --client-ranks 1,2,4 --out "$tmp/a" --workers 1 > "$tmp/a.out" 2> "$tmp/a.err"
check "mixed ranks: sim exits 0" test $? -eq 0
check "mixed ranks announced" grep -q 'HetLoRA: client ranks 1..4 of 4 (pad aggregation)' "$tmp/a.err"
check "mixed ranks: every update accepted" test "$(grep -c '"status":"accepted"' "$tmp/a/metrics.jsonl")" -eq 8
check "mixed ranks: adapter written at r_max" grep -q '"r": *4' "$tmp/a/adapter/adapter_config.json"
"$LOOM" sim $run --client-ranks 1,2,4 --out "$tmp/b" --workers 3 > /dev/null 2>&1
check "mixed ranks: workers 1 == workers 3" cmp -s "$tmp/a/global.safetensors" "$tmp/b/global.safetensors"
"$LOOM" sim $run --rounds 1 --client-ranks 1,2,4 --hetlora-agg rankwise --out "$tmp/c" > /dev/null 2>&1
check "rank-wise runs" test -s "$tmp/c/global.safetensors"
"$LOOM" sim $run --rounds 1 --client-ranks 1,2,4 --out "$tmp/c1" > /dev/null 2>&1
check "rank-wise differs from zero-padding" bash -c "! cmp -s '$tmp/c1/global.safetensors' '$tmp/c/global.safetensors'"
"$LOOM" sim $run --rounds 1 --lora-freeze-a --fedra-layers 1 --out "$tmp/d" > /dev/null 2> "$tmp/d.err"
check "FFA-LoRA with FedRA runs" test -s "$tmp/d/global.safetensors"
check "FedRA announced" grep -q 'FedRA: layer budgets from 1, of 4 layers' "$tmp/d.err"

# device profiles: phones (speed 0.25) take 4 simulated seconds a step and miss a 2 s deadline
awk 'BEGIN { print "client\tspeed\tmemory_mb\tbandwidth_mbps\trank"
             for (k = 0; k < 8; k++) print k "\t" (k % 2 ? 1 : 0.25) "\t" (k % 2 ? 4096 : 1024) "\t0\t-" }' > "$tmp/dev.tsv"
"$LOOM" sim $run --rounds 1 --sample 8 --profile "$tmp/dev.tsv" --client-ranks profile --step-seconds 1 --deadline 2 --out "$tmp/e" \
    > /dev/null 2> "$tmp/e.err"
check "profile run exits 0" test $? -eq 0
check "ranks from memory: 1..4" grep -q 'HetLoRA: client ranks 1..4 of 4' "$tmp/e.err"
late=$(grep -c '"status":"late"' "$tmp/e/metrics.jsonl")
odd_late=$(grep '"status":"late"' "$tmp/e/metrics.jsonl" | grep -c '"client":[0-9]*[13579],')
check "slow clients are late ($late)" test "$late" -gt 0
check "only the slow (even) clients are late" test "$odd_late" -eq 0

# FLoRA stacking: the stacked product goes into the base each round; OUT/merged holds the result
"$LOOM" sim $run --rounds 1 --profile tiers --client-ranks profile --hetlora-agg stack --out "$tmp/g" > "$tmp/g.out" 2> "$tmp/g.err"
check "FLoRA stacking exits 0" test $? -eq 0
check "FLoRA announced" grep -q 'FLoRA stacking' "$tmp/g.err"
check "tiers profile ranks" grep -q 'HetLoRA: client ranks' "$tmp/g.err"
check "FLoRA writes the merged model" test -s "$tmp/g/merged/model.safetensors"
refuse "FLoRA with bf16" 12 'stack' 'precision f32' -- "$LOOM" sim $run --hetlora-agg stack --precision bf16
refuse "FLoRA with checkpoints" 12 'FLoRA stacking needs' 'checkpoints' -- "$LOOM" sim $run --hetlora-agg stack --checkpoint-every 1 --out "$tmp/h"

refuse "pruning with stacking" 12 '--hetlora-prune' 'stack' -- "$LOOM" sim $run --hetlora-prune 0.1 --hetlora-agg stack
refuse "rank above --lora-r" 12 '--client-ranks' 'outside 1\.\.4' -- "$LOOM" sim $run --client-ranks 2,9
refuse "ranks without lora" 12 '--client-ranks' 'lora' -- "$LOOM" sim $run --peft bitfit --client-ranks 2
refuse "unknown aggregation" 12 '--hetlora-agg' 'rankwise' -- "$LOOM" sim $run --client-ranks 2 --hetlora-agg mean
refuse "profile ranks without a profile" 12 '--client-ranks profile' '--profile' -- "$LOOM" sim $run --client-ranks profile
printf 'client\tspeed\tmemory_mb\tbandwidth_mbps\n0\t1\t-5\t1\n' > "$tmp/bad.tsv"
refuse "bad profile line" 12 'bad\.tsv:2' 'memory_mb' -- "$LOOM" sim $run --profile "$tmp/bad.tsv"
refuse "missing profile file" 12 '--profile' 'nothere' -- "$LOOM" sim $run --profile "$tmp/nothere.tsv"
refuse "masks with a robust aggregator" 12 'masked' 'median' -- "$LOOM" sim $run --client-ranks 2 --aggregator median
finish
