#!/usr/bin/env bash
# LoRA adapters trained by loom, exported with loom export --gguf-lora and applied by llama.cpp itself
# (node-llama-cpp 3.21.1 from npm, CPU build) to the base model's GGUF (loom export --gguf) at load
# time: llama.cpp's greedy token ids equal loom generate --temperature 0 --ids with the adapter, and
# differ from the base's (so the adapter is really applied). GPT-2: a tiny model trained by loom with
# LoRA on c_attn (llama.cpp's fused attn_qkv), c_proj and c_fc. Llama: stories260K (8 heads, 4 kv
# heads) with LoRA on q_proj and k_proj, whose B rows llama.cpp needs in Meta's rotary order: leaving
# either unpermuted was seen to change llama.cpp's tokens. If npm cannot install node-llama-cpp the
# test fails and says so.
set -u
. "$(dirname "$0")/testlib.sh"
N=40 # tokens compared after BOS
S="$SHARED/data/stories260K"

# loom's greedy continuation from BOS: N token ids
loom_ids() { "$LOOM" generate "$@" --temperature 0 --steps $N --ids --threads 1 2>/dev/null; }

# ---- GPT-2: a tiny byte-level GPT-2 trained by loom, and a LoRA on c_attn, c_proj, c_fc trained on it
for i in $(seq 1 100); do echo "The quick brown fox jumps over the lazy dog. A stitch in time saves nine."; done > "$tmp/fox.txt"
common="--data $tmp/fox.txt --batch 2 --seq 32 --eval-every 0 --sample-len 0 --threads 1"
"$LOOM" train --model tiny $common --steps 10 --lr 3e-3 --out "$tmp/gbase" > /dev/null 2>&1
"$LOOM" train --model "$tmp/gbase" $common --steps 12 --peft lora --lora-r 4 --target-modules c_attn,c_proj,c_fc --lr 2e-2 \
    --out "$tmp/glora" > /dev/null 2>&1
check "gpt2: base and LoRA trained" test -s "$tmp/gbase/model.safetensors" -a -s "$tmp/glora/adapter_model.safetensors"
"$LOOM" export --model "$tmp/gbase" --gguf "$tmp/gbase.gguf" > /dev/null 2>&1
check "gpt2: base exported as GGUF" test -s "$tmp/gbase.gguf"
# without --model: the base named in adapter_config.json
"$LOOM" export --adapter "$tmp/glora" --gguf-lora "$tmp/glora.gguf" > "$tmp/out" 2>&1
check "gpt2: --gguf-lora exits 0 ($(cat "$tmp/out"))" test $? -eq 0 -a -s "$tmp/glora.gguf"

# ---- Llama: stories260K + LoRA on q_proj, k_proj
tok="$S/tok512.bin"
for i in $(seq 1 40); do echo "The big dog ran to the park. The dog saw a bird and barked at it. The bird flew away."; done > "$tmp/dog.txt"
"$LOOM" train --model "$S/stories260K.bin" --tokenizer "$tok" --data "$tmp/dog.txt" --peft lora --target-modules q_proj,k_proj \
    --lora-r 4 --steps 12 --lr 5e-2 --batch 2 --seq 32 --eval-every 0 --sample-len 0 --threads 1 --out "$tmp/llora" > /dev/null 2>&1
check "llama: LoRA trained" test -s "$tmp/llora/adapter_model.safetensors"
"$LOOM" export --adapter "$tmp/llora" --gguf-lora "$tmp/llora.gguf" --model "$S/stories260K.bin" > "$tmp/out" 2>&1
check "llama: --gguf-lora exits 0" test $? -eq 0
check "llama: export names the file" grep -q "llora.gguf" "$tmp/out"
"$LOOM" export --model "$S/stories260K.bin" --tokenizer "$tok" --gguf "$tmp/lbase.gguf" > /dev/null 2>&1
check "llama: base exported as GGUF" test -s "$tmp/lbase.gguf"

# ---- loom's greedy ids, with and without the adapters
want=("$(loom_ids --model "$tmp/gbase" --adapter "$tmp/glora")" "$(loom_ids --model "$tmp/gbase")"
      "$(loom_ids --model "$S/stories260K.bin" --tokenizer "$tok" --adapter "$tmp/llora")"
      "$(loom_ids --model "$S/stories260K.bin" --tokenizer "$tok")")
what=("gpt2 with the adapter" "gpt2 base" "llama with the adapter" "llama base")
for i in 0 1 2 3; do
    check "${what[$i]}: loom gives $N ids" test "$(echo ${want[$i]} | wc -w)" -eq $N
done
check "gpt2: the adapter changes the continuation" test "${want[0]}" != "${want[1]}"
check "llama: the adapter changes the continuation" test "${want[2]}" != "${want[3]}"

# ---- refusals name the flag and the reason
"$LOOM" train --model "$S/stories260K.bin" --tokenizer "$tok" --data "$tmp/dog.txt" --peft prefix --prefix-len 2 --steps 1 \
    --batch 2 --seq 32 --eval-every 0 --sample-len 0 --threads 1 --out "$tmp/pre" > /dev/null 2>&1
refuse "prefix adapter refused" 1 "--gguf-lora" "LoRA adapters only" -- "$LOOM" export --adapter "$tmp/pre" --gguf-lora "$tmp/x.gguf" --model "$S/stories260K.bin"
refuse "--gguf-lora without --adapter" 2 "--gguf-lora" "--adapter" -- "$LOOM" export --gguf-lora "$tmp/x.gguf" --model "$S/stories260K.bin"
refuse "adapter of another model" 1 "--adapter" "does not fit" -- "$LOOM" export --adapter "$tmp/llora" --gguf-lora "$tmp/x.gguf" --model "$SHARED/reference/gpt2-tiny"
refuse "--gguf-lora with --merge" 2 "--gguf-lora" "--merge" -- "$LOOM" export --adapter "$tmp/llora" --gguf-lora "$tmp/x.gguf" --merge --model "$S/stories260K.bin"
check "nothing written when refused" test ! -e "$tmp/x.gguf"

# ---- llama.cpp against loom (the sanitizer build checks loom's side above; llama.cpp runs in the release build)
if [ "${LOOM_SANITIZED:-0}" = 1 ]; then
    echo "cli_gguf_lora: sanitizer build: the llama.cpp checks run in the release build's cli_gguf_lora" >&2
    finish
fi
llamacpp_setup || finish
mapfile -t got < <(cd "$tmp/lc" && "$LC_NODE" llamacpp_gen.mjs "$tmp/gbase.gguf" $N --lora "$tmp/glora.gguf" 1 :: "$tmp/gbase.gguf" $N :: \
                       "$tmp/lbase.gguf" $N --lora "$tmp/llora.gguf" 1 :: "$tmp/lbase.gguf" $N 2> "$tmp/node.err")
check "llama.cpp ran the four cases ($(tail -3 "$tmp/node.err"))" test ${#got[@]} -eq 4
for i in 0 1 2 3; do
    check "${what[$i]}: llama.cpp = loom
  llama.cpp: ${got[$i]:-}
  loom:      ${want[$i]}" test -n "${got[$i]:-}" -a "${got[$i]:-}" = "${want[$i]}"
done
finish
