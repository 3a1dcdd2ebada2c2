#!/usr/bin/env bash
# The model commands end to end: generate reproduces llama2.c's greedy stories260K sample; train on
# Tiny Shakespeare lowers the validation loss; the saved model loads back for eval and generate; bad
# input fails with a message.
set -u
. "$(dirname "$0")/testlib.sh"

# 1. greedy generation from the pretrained stories260K equals llama2.c's documented output, byte for byte
"$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" \
    --temperature 0 > "$tmp/story.txt" 2> "$tmp/gen.err"
check "stories260K greedy sample matches llama2.c" cmp -s "$tmp/story.txt" "$SRC/tests/data/stories260K_greedy.txt"
check "generation reports tokens/s" grep -q 'tokens/s' "$tmp/gen.err"
head -c 100 "$SRC/tests/data/stories260K_greedy.txt" > "$tmp/prefix"
check "sample prefix" cmp -s "$tmp/prefix" <(head -c 100 "$tmp/story.txt")
# sampling with a seed is reproducible, and another seed differs
a=$("$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" --temperature 1 --top-p 0.9 --seed 7 --steps 64 2>/dev/null)
b=$("$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" --temperature 1 --top-p 0.9 --seed 7 --steps 64 2>/dev/null)
c=$("$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" --temperature 1 --top-k 20 --seed 8 --steps 64 2>/dev/null)
check "same seed, same sample" test "$a" = "$b"
check "other seed, other sample" test "$a" != "$c"
# prompt continuation
p=$("$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" --temperature 0 --prompt "Once upon a time, there was a little boy" --steps 40 2>/dev/null)
check "prompt is continued" test "${p#Once upon a time, there was a little boy}" != "$p"
# generating from the model held in bf16 / int8 (--weights): a story of the same length class, and the
# bench reports speed, bandwidth and memory; int8 holds about a quarter of f32's bytes
for w in bf16 int8; do
    "$LOOM" generate --model "$SHARED/data/stories260K/stories260K.bin" --tokenizer "$SHARED/data/stories260K/tok512.bin" \
        --temperature 0 --weights $w > "$tmp/story_$w.txt" 2> "$tmp/gen_$w.err"
    check "generate --weights $w" test -s "$tmp/story_$w.txt" -a "$(wc -c < "$tmp/story_$w.txt")" -gt 100
done
check "bf16 story starts as the f32 one" cmp -s <(head -c 40 "$tmp/story.txt") <(head -c 40 "$tmp/story_bf16.txt")
"$LOOM" bench generate --model "$SHARED/data/stories260K/stories260K.bin" --weights f32 --steps 16 --reps 1 > "$tmp/bg_f32.out"
"$LOOM" bench generate --model "$SHARED/data/stories260K/stories260K.bin" --weights int8 --steps 16 --reps 1 > "$tmp/bg_int8.out"
check "bench generate RESULT fields" grep -Eq '^RESULT gen_tokens_per_s=[0-9.]+ gb_per_s=[0-9.]+ peak_rss_mib=[0-9]+' "$tmp/bg_int8.out"
wf=$(sed -n 's/^RESULT.* weight_mib=\([0-9.]*\).*/\1/p' "$tmp/bg_f32.out")
wi=$(sed -n 's/^RESULT.* weight_mib=\([0-9.]*\).*/\1/p' "$tmp/bg_int8.out")
check "int8 streams about a quarter of f32's weight bytes ($wi vs $wf MiB)" awk -v a="$wi" -v b="$wf" 'BEGIN { exit !(a > 0 && a < 0.3 * b) }'

# 2. training from scratch on Tiny Shakespeare: the validation loss falls
"$LOOM" train --model tiny --data "$SHARED/data/tinyshakespeare/input.txt" --steps 60 --batch 8 --seq 64 \
    --lr 2e-3 --eval-every 0 --eval-windows 16 --sample-len 50 --out "$tmp/run" > "$tmp/train.out" 2> "$tmp/train.err"
check "train exits 0" test $? -eq 0
v0=$(grep 'val loss' "$tmp/train.err" | head -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
v1=$(grep 'val loss' "$tmp/train.err" | tail -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
check "validation loss falls ($v0 -> $v1)" awk -v a="$v0" -v b="$v1" 'BEGIN { exit !(b < a - 1.0) }'
check "model written" test -s "$tmp/run/model.safetensors" -a -s "$tmp/run/config.json"
check "sample printed" test -s "$tmp/train.out"
# 3. the saved model evaluates and generates
"$LOOM" eval --model "$tmp/run" --data "$SHARED/data/tinyshakespeare/input.txt" --seq 64 --max-windows 32 > "$tmp/eval.out" 2>&1
check "eval prints loss and perplexity" grep -q 'perplexity' "$tmp/eval.out"
check "generate from the trained model" "$LOOM" generate --model "$tmp/run" --steps 20 --seed 1 > /dev/null 2>&1

# 3b. a model directory with a tokenizer.json: train writes the model, eval and generate then find the
# tokenizer beside it (a 32000-token vocabulary cannot fall back to bytes)
cat > "$tmp/mistral-like.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32000,
 "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true}
JSON
"$LOOM" train --model "$tmp/mistral-like.json" --tokenizer "$SHARED/data/mistral-tokenizer/tokenizer.json" \
    --data "$SHARED/data/tinyshakespeare/input.txt" --steps 3 --batch 2 --seq 32 --eval-windows 2 --sample-len 0 \
    --out "$tmp/mdir" > /dev/null 2> "$tmp/mtrain.err"
check "train with a tokenizer.json" test $? -eq 0
check "train reports the tokenizer kind" grep -q 'bpe-sentencepiece' "$tmp/mtrain.err"
refuse "eval without a tokenizer.json beside the model" 12 'tokeni[sz]er' -- "$LOOM" eval --model "$tmp/mdir" \
    --data "$SHARED/data/tinyshakespeare/input.txt" --seq 32 --max-windows 4
cp "$SHARED/data/mistral-tokenizer/tokenizer.json" "$tmp/mdir/"
"$LOOM" eval --model "$tmp/mdir" --data "$SHARED/data/tinyshakespeare/input.txt" --seq 32 --max-windows 4 > "$tmp/meval" 2>&1
check "eval finds the model's tokenizer.json" grep -q perplexity "$tmp/meval"
check "generate finds it too" "$LOOM" generate --model "$tmp/mdir" --steps 8 --seed 2 > /dev/null 2>&1

# 4. bad input: clear messages, non-zero exits
refuse "missing data file" 1 'nonexistent\.txt' 'cannot open|no such|not found' -- "$LOOM" train --model tiny \
    --data /nonexistent.txt --steps 1
printf 'not a model' > "$tmp/bad.bin"
refuse "garbage model file" 1 'bad\.bin' 'too short|does not match|out of range|header' -- "$LOOM" generate --model "$tmp/bad.bin"
refuse "too long --seq" 12 '--seq' '100000' -- "$LOOM" train --model tiny --data "$SHARED/data/tinyshakespeare/input.txt" \
    --seq 100000 --steps 1
refuse "unknown command is a usage error" 2 'nosuchcommand' 'unknown' -- "$LOOM" nosuchcommand
for c in train eval generate verify bench; do check "$c --help" "$LOOM" $c --help > /dev/null; done

finish
