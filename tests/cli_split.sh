#!/usr/bin/env bash
# loom sim --split-layer (split learning, SplitLoRA): a split run gives the unsplit run's global adapter
# (the split step computes the whole model's gradient; both sides are averaged FedAvg-style; --clip 0, as
# a split step clips each side by its own norm), it reports
# the bytes a step moves and the client's memory, and impossible cuts are refused naming the flag.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
run="--model tiny --rounds 2 --sample 3 --local-steps 2 --batch 2 --seq 32 --eval-every 2 --eval-clients 3
     --sample-len 0 --seed 3 --peft lora --lora-r 4 --clip 0"
# shellcheck disable=SC2086
"$LOOM" sim $run --workers 2 --out "$tmp/whole" > "$tmp/whole.out" 2>&1
check "unsplit run" test -s "$tmp/whole/global.safetensors"
for k in 2; do # every cut is checked in tests/test_split.c
    # shellcheck disable=SC2086
    "$LOOM" sim $run --workers 1 --split-layer $k --out "$tmp/s$k" > "$tmp/s$k.out" 2> "$tmp/s$k.err"
    check "split after layer $k: same global adapter as unsplit" cmp -s "$tmp/whole/global.safetensors" "$tmp/s$k/global.safetensors"
done
# tiny: C = 128, batch 2 x 32: 8192 activation floats, 32768 bytes each way plus 256 bytes of targets
check "bytes per step reported" grep -Eq "split bytes per step +33024 bytes up .*32768 down" "$tmp/s2.out"
check "client memory reported" grep -Eq "client memory .* running the whole model: " "$tmp/s2.out"
# LoRA on c_attn: A [r, C] + B [3C, r] = 4 r C = 2048 values a layer, layers 0, 1 on the client, 2, 3 on the server
check "sides reported" grep -q "split learning after layer 2: 4096 trainable values on each client, 4096 on the server" "$tmp/s2.err"
# shellcheck disable=SC2086
refuse "cut beyond the model" 12 "--split-layer 5" "outside 0\.\.4" -- "$LOOM" sim $run --split-layer 5
# shellcheck disable=SC2086
refuse "negative cut" 12 "--split-layer" "-2" -- "$LOOM" sim $run --split-layer -2
refuse "prefix tuning spans the cut" 12 "--split-layer" "prefix set cannot be split" -- \
    "$LOOM" sim --model tiny --rounds 1 --peft prefix --split-layer 1
refuse "tied embedding trained on both sides" 12 "--split-layer" "tied embedding" -- \
    "$LOOM" sim --model tiny --rounds 1 --split-layer 1
# shellcheck disable=SC2086
refuse "SCAFFOLD needs both sides in one place" 12 "--split-layer" "SCAFFOLD" -- "$LOOM" sim $run --strategy scaffold --split-layer 1
# full fine-tuning of an untied Llama splits: the same weights as unsplit
cat > "$tmp/llama.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
 "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 259,
 "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false}
JSON
lrun="--model $tmp/llama.json --rounds 1 --sample 2 --local-steps 2 --batch 2 --seq 32 --eval-every 0 --sample-len 0 --seed 4 --clip 0"
# shellcheck disable=SC2086
"$LOOM" sim $lrun --out "$tmp/lw" > /dev/null 2>&1
# shellcheck disable=SC2086
"$LOOM" sim $lrun --split-layer 1 --out "$tmp/ls" > /dev/null 2>&1
check "full fine-tuning split: same weights as unsplit" cmp -s "$tmp/lw/global.safetensors" "$tmp/ls/global.safetensors"
check "full fine-tuning trained something" test -s "$tmp/ls/global.safetensors"
finish
