#!/usr/bin/env bash
# GGUF out and in: loom export --gguf and --model FILE.gguf, checked by loom itself and by llama.cpp.
# llama.cpp comes from npm (node-llama-cpp 3.21.1, its CPU build only), installed into this test's
# fresh directory; when npm cannot install it the test says so and fails. LOOM_LLAMACPP_DIR may name
# a folder where it is installed already (as ../shared/bench/llamacpp/README.md shows). In the
# sanitizer build (LOOM_SANITIZED=1, set by CMake) only loom's side runs.
#
# llama.cpp must generate, greedily from BOS, the token ids loom generates: N=48 tokens for stories260K
# (F32, and Q8_0, which llama.cpp multiplies with its own int8 dot products while loom dequantizes),
# 64 for a GPT-2-shaped model loom trained, 48 for stories260K with a LoRA adapter merged in; and its
# tokenizer must give loom's ids for the same text (SentencePiece-style and byte-level vocabularies).
set -u
. "$(dirname "$0")/testlib.sh"
S=$SHARED/data/stories260K
M=$S/stories260K.bin
K=$S/tok512.bin
TXT=$SHARED/data/tinyshakespeare/input.txt
ids() { "$LOOM" generate --temperature 0 --ids "$@" 2> /dev/null; }

for i in $(seq 60); do printf 'the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. '; done > "$tmp/fox.txt"

# ---- loom alone ----
$LOOM export --model "$M" --tokenizer "$K" --gguf "$tmp/s.gguf" > "$tmp/out" 2>&1
check "export stories260K" grep -q "llama model (5 layers, 260032 parameters, f32) with its llama2c tokenizer" "$tmp/out"
want=$(ids --model "$M" --tokenizer "$K" --steps 48)
check "stories260K generates" test "$(echo "$want" | wc -w)" -eq 48
check "GGUF (its own tokenizer) generates the same tokens" test "$(ids --model "$tmp/s.gguf" --steps 48)" = "$want"
for t in f16 bf16 q8_0; do
    $LOOM export --model "$M" --tokenizer "$K" --gguf "$tmp/s_$t.gguf" --gguf-type $t > /dev/null 2>&1
    check "export $t" test -s "$tmp/s_$t.gguf"
done
check "q8_0 is smaller than f16, f16 than f32" test "$(stat -c %s "$tmp/s_q8_0.gguf")" -lt "$(stat -c %s "$tmp/s_f16.gguf")" -a \
    "$(stat -c %s "$tmp/s_f16.gguf")" -lt "$(stat -c %s "$tmp/s.gguf")"
# GGUF to GGUF: the F32 tensors' bytes are unchanged (the data section is the file's tail)
$LOOM export --model "$tmp/s.gguf" --gguf "$tmp/s2.gguf" > /dev/null 2>&1
check "GGUF re-exported: same tensor bytes" cmp -s <(tail -c 1040000 "$tmp/s.gguf") <(tail -c 1040000 "$tmp/s2.gguf")
T="Once upon a time, Lily saw a big dog. \"Hello!\" she said. 123 ünï 日本 $(head -c 1200 "$TXT")"
T2=$'Once upon a time, Lily saw a big dog. "Hello!" she said. 123 \u00fcn\u00ef \u65e5\u672c  spaces   and\ttabs\nend'
check "GGUF tokenizer encodes as tokenizer.bin" test "$(printf '%s' "$T" | $LOOM tokenize --tokenizer "$tmp/s.gguf")" = \
    "$(printf '%s' "$T" | $LOOM tokenize --tokenizer "$K")"
# a GGUF model fine-tunes (LoRA on it, its tokenizer from the file)
$LOOM train --model "$tmp/s_q8_0.gguf" --peft lora --lora-r 2 --data "$tmp/fox.txt" --batch 2 --seq 32 --steps 2 --eval-every 0 \
    --eval-windows 2 --sample-len 0 --threads 1 --out "$tmp/ft" > /dev/null 2> "$tmp/ft.err"
check "train on a GGUF model" test -s "$tmp/ft/adapter_model.safetensors"
check "its tokenizer came from the file" grep -q "gguf-llama tokenizer" "$tmp/ft.err"
# evaluation and a federation on GGUF models
check "eval: the GGUF's loss is the .bin's" test "$($LOOM eval --model "$tmp/s.gguf" --data "$tmp/fox.txt" --seq 64 --threads 1 | awk '{ print $2 }')" = \
    "$($LOOM eval --model "$M" --tokenizer "$K" --data "$tmp/fox.txt" --seq 64 --threads 1 | awk '{ print $2 }')"
mkdir -p "$tmp/clients"
head -c 3000 "$tmp/fox.txt" > "$tmp/clients/a.txt"
tail -c 3000 "$tmp/fox.txt" > "$tmp/clients/b.txt"
$LOOM sim --model "$tmp/s_q8_0.gguf" --clients-dir "$tmp/clients" --rounds 1 --sample 2 --local-steps 1 --batch 2 --seq 16 --eval-every 0 \
    --sample-len 0 --peft lora --workers 1 --out "$tmp/sim" > /dev/null 2>&1
check "sim federates LoRA on a GGUF model" test -s "$tmp/sim/adapter/adapter_model.safetensors"

# a GPT-2-shaped model trained by loom (byte tokenizer, untied head)
printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128, "vocab_size": 259, "tie_word_embeddings": false}' > "$tmp/g.json"

$LOOM train --model "$tmp/g.json" --data "$tmp/fox.txt" --batch 4 --seq 32 --steps 80 --lr 1e-2 --eval-every 0 --eval-windows 2 \
    --sample-len 0 --threads 1 --out "$tmp/g" > /dev/null 2>&1
$LOOM export --model "$tmp/g" --gguf "$tmp/g.gguf" > "$tmp/out" 2>&1
check "export the GPT-2" grep -q "gpt2 model (2 layers" "$tmp/out"
gwant=$(ids --model "$tmp/g" --steps 64)
check "the GPT-2 generates 64 tokens" test "$(echo "$gwant" | wc -w)" -eq 64
check "the GPT-2 generates varied tokens" test "$(echo "$gwant" | tr ' ' '\n' | sort -u | wc -l)" -ge 8
check "GPT-2 GGUF generates the same tokens" test "$(ids --model "$tmp/g.gguf" --steps 64)" = "$gwant"

# GPT-2's own vocabulary (50257 tokens, merges) and a Hugging Face SentencePiece one (Mistral's
# tokenizer.json): one-step models carry them into GGUF files
G=$SHARED/data/gpt2-tokenizer/encoder.json
MT=$SHARED/data/mistral-tokenizer/tokenizer.json
printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 50257}' > "$tmp/g50.json"
printf '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 64, "vocab_size": 32000}' > "$tmp/l32.json"
for v in "g50 $G" "l32 $MT"; do
    set -- $v
    $LOOM train --model "$tmp/$1.json" --tokenizer "$2" --data "$tmp/fox.txt" --batch 1 --seq 16 --steps 1 --eval-every 0 --eval-windows 1 \
        --sample-len 0 --threads 1 --out "$tmp/$1" > /dev/null 2>&1
    $LOOM export --model "$tmp/$1" --tokenizer "$2" --gguf "$tmp/$1.gguf" > /dev/null 2>&1
    check "GGUF tokenizer ($1) encodes as its source" test "$(printf '%s' "$T2" | $LOOM tokenize --tokenizer "$tmp/$1.gguf")" = \
        "$(printf '%s' "$T2" | $LOOM tokenize --tokenizer "$2")"
done

# stories260K with a LoRA adapter merged in
$LOOM train --model "$M" --tokenizer "$K" --peft lora --lora-r 4 --lr 5e-3 --data "$tmp/fox.txt" --batch 2 --seq 32 --steps 6 --eval-every 0 \
    --eval-windows 2 --sample-len 0 --threads 1 --out "$tmp/la" > /dev/null 2>&1
$LOOM export --model "$M" --tokenizer "$K" --adapter "$tmp/la" --merge --gguf "$tmp/merged.gguf" > "$tmp/out" 2>&1
check "export with a merged adapter" grep -q "with the merged lora" "$tmp/out"
lwant=$(ids --model "$M" --tokenizer "$K" --adapter "$tmp/la" --steps 48)
check "the adapter changes the tokens" test "$lwant" != "$want"
check "merged GGUF generates the adapter's tokens" test "$(ids --model "$tmp/merged.gguf" --steps 48)" = "$lwant"

# refusals
refuse "unknown --gguf-type" 2 "--gguf-type q4_k" "f32, f16, bf16 or q8_0" -- $LOOM export --model "$M" --tokenizer "$K" --gguf "$tmp/x.gguf" --gguf-type q4_k
refuse "--adapter without --merge" 2 "needs --merge" -- $LOOM export --model "$M" --tokenizer "$K" --adapter "$tmp/la" --gguf "$tmp/x.gguf"
refuse "--gguf over its input" 2 "input file" -- $LOOM export --model "$tmp/s.gguf" --gguf "$tmp/s.gguf"
LC_ALL=C sed 's/gpt2/gptj/g' "$tmp/g.gguf" > "$tmp/gptj.gguf"
refuse "unsupported architecture" 1 "gptj.gguf" "architecture 'gptj' is not supported" -- $LOOM generate --model "$tmp/gptj.gguf" --steps 4
head -c 5000 "$tmp/s.gguf" > "$tmp/cut.gguf"
refuse "truncated GGUF" 1 "cut.gguf" "outside the data section|file ends" -- $LOOM generate --model "$tmp/cut.gguf" --steps 4

# ---- llama.cpp ----
# The sanitizer build runs loom's side above; what llama.cpp reads does not depend on it, so the npm
# install (the longest part of this test) and llama.cpp run in the release build.
if [ "${LOOM_SANITIZED:-0}" = 1 ]; then
    echo "cli_gguf: sanitizer build: the llama.cpp checks run in the release build's cli_gguf" >&2
    finish
fi
llamacpp_setup || finish
# every job in one process (starting llama.cpp costs seconds): one output line per job
(cd "$tmp/lc" && "$LC_NODE" llamacpp_gen.mjs "$tmp/s.gguf" 48 :: "$tmp/s_q8_0.gguf" 48 :: "$tmp/s_f16.gguf" 48 :: "$tmp/g.gguf" 64 :: \
    "$tmp/merged.gguf" 48 :: "$tmp/s.gguf" --tokenize "$T" :: "$tmp/g.gguf" --tokenize "$T" :: "$tmp/g50.gguf" --tokenize "$T2" :: \
    "$tmp/l32.gguf" --tokenize "$T2") > "$tmp/lc.out" 2> "$tmp/lc.err"
check "llama.cpp ran every job" test "$(wc -l < "$tmp/lc.out")" -eq 9
[ "$(wc -l < "$tmp/lc.out")" -eq 9 ] || sed 's/^/    /' "$tmp/lc.err" >&2
lc() { sed -n "${1}p" "$tmp/lc.out"; }
check "llama.cpp: stories260K F32 gives loom's 48 tokens" test "$(lc 1)" = "$want"
check "llama.cpp: stories260K Q8_0 gives loom's first 48 tokens" test "$(lc 2)" = "$(ids --model "$tmp/s_q8_0.gguf" --steps 48)"
check "llama.cpp: stories260K F16 gives loom's 48 tokens" test "$(lc 3)" = "$(ids --model "$tmp/s_f16.gguf" --steps 48)"
check "llama.cpp: GPT-2 trained by loom gives loom's 64 tokens" test "$(lc 4)" = "$gwant"
check "llama.cpp: merged LoRA gives loom's 48 tokens" test "$(lc 5)" = "$lwant"
check "llama.cpp tokenizes as loom (llama vocab)" test "$(lc 6)" = "$(printf '%s' "$T" | $LOOM tokenize --tokenizer "$K")"
check "llama.cpp tokenizes as loom (byte vocab)" test "$(lc 7)" = "$(printf '%s' "$T" | $LOOM tokenize --tokenizer "$tmp/g.gguf")"
check "llama.cpp tokenizes as loom (GPT-2 vocab)" test "$(lc 8)" = "$(printf '%s' "$T2" | $LOOM tokenize --tokenizer "$G")"
check "llama.cpp tokenizes as loom (Mistral vocab)" test "$(lc 9)" = "$(printf '%s' "$T2" | $LOOM tokenize --tokenizer "$MT")"
finish
