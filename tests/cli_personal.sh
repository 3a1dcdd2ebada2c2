#!/usr/bin/env bash
# loom sim with personalized clients (include/loom/personal.h): --private keeps the MLP adapter on each
# client (bytes up shrink to the shared values), --finetune-steps and the per-client evaluation rows,
# and the refusals of bad flags, each naming the flag.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/small.txt"
run="--model tiny --data $tmp/small.txt --clients 4 --rounds 2 --local-steps 2 --batch 2 --seq 32 --sample-len 0 --quiet-clients --peft lora --lora-r 4 --target-modules c_attn,mlp.c_fc"

"$LOOM" sim $run --out "$tmp/plain" > /dev/null 2>&1
check "plain run exits 0" test $? -eq 0
"$LOOM" sim $run --private mlp.c_fc --finetune-steps 3 --out "$tmp/p" > "$tmp/p.out" 2> "$tmp/p.err"
check "personalized run exits 0" test $? -eq 0
check "personalization announced" grep -q 'personalization: 8 tensors (10240 values) private, 8192 values shared' "$tmp/p.err"
check "one client_eval row per client" test "$(grep -c '"type":"client_eval".*"personal_acc"' "$tmp/p/metrics.jsonl")" -eq 4
check "one personal summary row" test "$(grep -c '"type":"personal","clients":4,"finetune_steps":3,"private_values":10240' "$tmp/p/metrics.jsonl")" -eq 1
check "summary printed" grep -q 'personalized model .*3 fine-tuning steps' "$tmp/p.out"
# bytes up: 18432 floats per update without --private (counted as 4 bytes each), the message of the
# 8192 shared values with it (4 bytes each plus the safetensors header of the update message)
up_plain=$(grep '"type":"client"' "$tmp/plain/metrics.jsonl" | head -1 | sed 's/.*"bytes_up":\([0-9]*\).*/\1/')
up_p=$(grep '"type":"client"' "$tmp/p/metrics.jsonl" | head -1 | sed 's/.*"bytes_up":\([0-9]*\).*/\1/')
check "plain bytes up: 4 x 18432 ($up_plain)" test "$up_plain" -eq 73728
check "bytes up: the 8192 shared values ($up_p)" test $((up_p - 32768)) -ge 0 -a $((up_p - 32768)) -le 512
"$LOOM" sim $run --rounds 1 --client-eval --out "$tmp/ce" > /dev/null 2>&1
check "--client-eval alone: global rows only" test "$(grep -c '"type":"client_eval"' "$tmp/ce/metrics.jsonl")" -eq 4
check "--client-eval alone: no personal fields" bash -c "! grep -q '\"personal_acc\":[0-9]' '$tmp/ce/metrics.jsonl'"

# resume: the clients' private values are in the checkpoint, so 1 round + --resume to 2 == 2 rounds
"$LOOM" sim $run --private mlp.c_fc --finetune-steps 2 --checkpoint-every 1 --out "$tmp/r2" > /dev/null 2>&1
"$LOOM" sim $run --rounds 1 --private mlp.c_fc --finetune-steps 2 --checkpoint-every 1 --out "$tmp/r1" > /dev/null 2>&1
"$LOOM" sim $run --private mlp.c_fc --finetune-steps 2 --checkpoint-every 1 --out "$tmp/r1" --resume > /dev/null 2>&1
check "resume: same global" test "$(st_data "$tmp/r1/global.safetensors")" = "$(st_data "$tmp/r2/global.safetensors")"
check "resume: the same personalized evaluation" test "$(grep '"type":"personal"' "$tmp/r1/metrics.jsonl" | tail -1)" = "$(grep '"type":"personal"' "$tmp/r2/metrics.jsonl")"

refuse "pattern matching nothing" 12 '--private' "'lm_head' matches no tensor" -- "$LOOM" sim $run --private lm_head
refuse "empty pattern" 12 '--private' 'empty pattern' -- "$LOOM" sim $run --private 'c_fc,'
refuse "finetune out of range" 2 '--finetune-steps' -- "$LOOM" sim $run --finetune-steps -1
refuse "private with zeroth-order clients" 12 '--private' 'client-algo sgd' -- "$LOOM" sim $run --private c_fc --client-algo mezo
refuse "private with async" 12 'mode sync' -- "$LOOM" sim $run --private c_fc --mode fedbuff
finish
