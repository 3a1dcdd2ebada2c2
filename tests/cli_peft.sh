#!/usr/bin/env bash
# Parameter-efficient fine-tuning from the command line: every method lowers the validation loss of a
# frozen base on a small text; adapters are written in the PEFT layout, re-exported and merged, and
# load back with identical outputs; instruction data trains; bad adapters and options are refused.
set -u
. "$(dirname "$0")/testlib.sh"
for i in $(seq 1 150); do echo "The quick brown fox jumps over the lazy dog. A stitch in time saves nine."; done > "$tmp/rep.txt"
common="--data $tmp/rep.txt --batch 4 --seq 64 --eval-every 0 --eval-windows 8 --sample-len 0 --threads 1"

# a base model directory (a briefly trained tiny byte-level GPT-2)
"$LOOM" train --model tiny $common --steps 3 --lr 1e-3 --out "$tmp/base" > /dev/null 2>&1
check "base written" test -s "$tmp/base/model.safetensors"
base_sum=$(md5sum < "$tmp/base/model.safetensors")

# 1. every method trains from the CLI with a falling validation loss and writes its set
for meth in lora prefix prompt adapter bitfit; do
    # soft prompts and prefixes move a weak base less: they need a larger step and count a smaller fall
    extra="--lr 2e-2"; drop=0.2
    [ $meth = lora ] && extra="--lr 5e-3 --lora-r 8 --lora-alpha 16 --target-modules c_attn,c_proj --lora-dropout 0.05"
    [ $meth = prefix ] && extra="--lr 0.2 --prefix-len 8" && drop=0.02
    [ $meth = prompt ] && extra="--lr 5e-2 --prompt-len 8" && drop=0.02
    [ $meth = adapter ] && extra="--lr 2e-2 --adapter-dim 16"
    [ $meth = bitfit ] && extra="--lr 2e-2 --bitfit-norms"
    "$LOOM" train --model "$tmp/base" $common --steps 60 --peft $meth $extra --out "$tmp/$meth" > /dev/null 2> "$tmp/$meth.err"
    check "$meth: train exits 0" test $? -eq 0
    v0=$(grep 'val loss' "$tmp/$meth.err" | head -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
    v1=$(grep 'val loss' "$tmp/$meth.err" | tail -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
    check "$meth: validation loss falls ($v0 -> $v1)" awk -v a="$v0" -v b="$v1" -v d=$drop 'BEGIN { exit !(b < a - d) }'
    check "$meth: PEFT-layout files" test -s "$tmp/$meth/adapter_model.safetensors" -a -s "$tmp/$meth/adapter_config.json"
    check "$meth: trainable size reported" grep -q "trainable parameters" "$tmp/$meth.err"
done
check "the base is unchanged" test "$(md5sum < "$tmp/base/model.safetensors")" = "$base_sum"
check "LoRA config in PEFT's fields" grep -q '"peft_type": "LORA"' "$tmp/lora/adapter_config.json"
check "LoRA config r" grep -q '"r": 8' "$tmp/lora/adapter_config.json"
check "LoRA config fan_in_fan_out" grep -q '"fan_in_fan_out": true' "$tmp/lora/adapter_config.json"
check "LoRA config targets" grep -q '"c_proj"' "$tmp/lora/adapter_config.json"
check "prefix config" grep -q '"PREFIX_TUNING"' "$tmp/prefix/adapter_config.json"
check "prompt config" grep -q '"PROMPT_TUNING"' "$tmp/prompt/adapter_config.json"

# 2. export -> import: identical outputs
evalargs="--data $tmp/rep.txt --seq 64 --max-windows 8 --threads 1"
loss_of() { sed -n 's/^loss \([0-9.][0-9.]*\).*/\1/p' | head -1; } # the number of eval's "loss X  perplexity Y" line
base_loss=$("$LOOM" eval --model "$tmp/base" $evalargs 2>/dev/null | loss_of)
check "base eval loss parsed ($base_loss)" test -n "$base_loss"
for meth in lora prefix prompt adapter bitfit; do
    "$LOOM" export --model "$tmp/base" --adapter "$tmp/$meth" --out "$tmp/$meth-re" > /dev/null 2>&1
    check "$meth: re-export exits 0" test $? -eq 0
    a=$("$LOOM" eval --model "$tmp/base" --adapter "$tmp/$meth" $evalargs 2>&1 | sed 's/ tokens\/s.*//; s/,.*//')
    b=$("$LOOM" eval --model "$tmp/base" --adapter "$tmp/$meth-re" $evalargs 2>&1 | sed 's/ tokens\/s.*//; s/,.*//')
    check "$meth: eval through the re-exported adapter is identical ($a / $b)" test -n "$a" -a "$a" = "$b"
    l=$("$LOOM" eval --model "$tmp/base" --adapter "$tmp/$meth" $evalargs 2>/dev/null | loss_of)
    check "$meth: adapter lowers the eval loss ($base_loss -> $l)" num_lt "$l" "$base_loss"
    g1=$("$LOOM" generate --model "$tmp/base" --adapter "$tmp/$meth" --temperature 0 --steps 40 --prompt "The quick" 2>/dev/null)
    g2=$("$LOOM" generate --model "$tmp/base" --adapter "$tmp/$meth-re" --temperature 0 --steps 40 --prompt "The quick" 2>/dev/null)
    check "$meth: greedy generation identical after re-export" test -n "$g1" -a "$g1" = "$g2"
done
check "re-export keeps the tensors" cmp -s <(sed 's/"base_model_name_or_path".*//' "$tmp/lora/adapter_config.json") <(sed 's/"base_model_name_or_path".*//' "$tmp/lora-re/adapter_config.json")
# merged model: a full model directory giving the adapter's outputs
for meth in lora bitfit; do
    "$LOOM" export --model "$tmp/base" --adapter "$tmp/$meth" --out "$tmp/$meth-merged" --merge > /dev/null 2>&1
    check "$meth: merged model written" test -s "$tmp/$meth-merged/model.safetensors" -a -s "$tmp/$meth-merged/config.json"
    a=$("$LOOM" eval --model "$tmp/base" --adapter "$tmp/$meth" $evalargs 2>&1 | sed 's/ tokens\/s.*//; s/,.*//')
    b=$("$LOOM" eval --model "$tmp/$meth-merged" $evalargs 2>&1 | sed 's/ tokens\/s.*//; s/,.*//')
    check "$meth: merged model evaluates like base + adapter ($a / $b)" test -n "$a" -a "$a" = "$b"
    g1=$("$LOOM" generate --model "$tmp/base" --adapter "$tmp/$meth" --temperature 0 --steps 40 --prompt "A stitch" 2>/dev/null)
    g2=$("$LOOM" generate --model "$tmp/$meth-merged" --temperature 0 --steps 40 --prompt "A stitch" 2>/dev/null)
    check "$meth: merged model generates like base + adapter" test "$g1" = "$g2"
done
refuse "prefix cannot be merged" 12 'prefix' 'merge' -- "$LOOM" export --model "$tmp/base" --adapter "$tmp/prefix" \
    --out "$tmp/prefix-merged" --merge

# 3. continuing an adapter, and a low-precision base
"$LOOM" train --model "$tmp/base" $common --steps 5 --lr 1e-2 --adapter "$tmp/lora" --out "$tmp/lora2" > /dev/null 2> "$tmp/cont.err"
check "training continues from --adapter" test -s "$tmp/lora2/adapter_model.safetensors"
for dt in bf16 int8; do
    "$LOOM" train --model "$tmp/base" $common --steps 60 --lr 5e-3 --peft lora --base-dtype $dt > /dev/null 2> "$tmp/$dt.err"
    check "lora on a $dt base exits 0" test $? -eq 0
    check "base reported as $dt" grep -q "base $dt" "$tmp/$dt.err"
    v0=$(grep 'val loss' "$tmp/$dt.err" | head -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
    v1=$(grep 'val loss' "$tmp/$dt.err" | tail -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
    check "lora on $dt: validation loss falls ($v0 -> $v1)" awk -v a="$v0" -v b="$v1" 'BEGIN { exit !(b < a - 0.2) }'
done

# 4. instruction data: loss only on responses
for i in $(seq 1 40); do
    printf '{"instruction": "Say the phrase number %d.", "input": "", "output": "The quick brown fox %d."}\n' $i $i
done > "$tmp/alpaca.jsonl"
"$LOOM" train --model "$tmp/base" --data "$tmp/alpaca.jsonl" --format alpaca --peft lora --batch 4 --seq 128 --steps 30 \
    --lr 5e-3 --eval-every 0 --sample-len 0 --threads 1 > /dev/null 2> "$tmp/alp.err"
check "alpaca training exits 0" test $? -eq 0
check "examples held out" grep -q "examples held out" "$tmp/alp.err"
v0=$(grep 'val loss' "$tmp/alp.err" | head -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
v1=$(grep 'val loss' "$tmp/alp.err" | tail -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
check "alpaca: response loss falls ($v0 -> $v1)" awk -v a="$v0" -v b="$v1" 'BEGIN { exit !(b < a - 0.2) }'

# 5. bad input: exit status 1 (or 2 for a usage error) and a message that names the flag or file
refuse "unknown target module" 12 'q_proj' 'c_attn.*c_proj.*c_fc' -- "$LOOM" train --model "$tmp/base" $common --steps 1 \
    --peft lora --target-modules q_proj
refuse "rank 0" 12 'lora-r|rank' '\b0\b' -- "$LOOM" train --model "$tmp/base" $common --steps 1 --peft lora --lora-r 0
refuse "negative alpha" 12 'alpha' -- "$LOOM" train --model "$tmp/base" $common --steps 1 --peft lora --lora-alpha -2
refuse "GPT-2 adapter on a Llama model" 1 'matches no module' -- "$LOOM" eval --model "$SHARED/reference/llama-tiny" \
    --adapter "$tmp/lora" --data "$tmp/rep.txt" --tokenizer "$SHARED/data/stories260K/tok512.bin"
refuse "adapter of another width" 1 'shape' 'lora' -- "$LOOM" eval --model "$SHARED/reference/gpt2-tiny" --adapter "$tmp/lora" \
    --data "$tmp/rep.txt" --tokenizer "$SHARED/data/stories260K/tok512.bin"
refuse "unknown method" 12 '--peft' 'nonsense' -- "$LOOM" train --model "$tmp/base" $common --steps 1 --peft nonsense
refuse "low-precision base without a PEFT method" 12 '--base-dtype' '--peft' -- "$LOOM" train --model "$tmp/base" $common \
    --steps 1 --base-dtype int8
refuse "missing adapter directory" 1 'no-such-adapter' -- "$LOOM" eval --model "$tmp/base" --adapter "$tmp/no-such-adapter" \
    $evalargs
for c in export; do check "$c --help" "$LOOM" $c --help > /dev/null; done

finish
