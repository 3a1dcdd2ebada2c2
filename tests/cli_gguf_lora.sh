#!/usr/bin/env bash
# LoRA adapters trained by loom, exported with loom export --gguf-lora and applied by llama.cpp itself
# (node-llama-cpp 3.21.1 from npm, CPU build) to the base model's GGUF at load time: llama.cpp's greedy
# token ids equal loom generate --temperature 0 with the adapter, and differ from the base's (so the
# adapter is really applied). Llama case: stories260K (8 heads, 4 kv heads) with LoRA on q_proj and
# k_proj, whose B rows llama.cpp needs in Meta's rotary order: leaving either unpermuted was seen to
# change llama.cpp's tokens. If npm cannot install node-llama-cpp the test fails and says so.
set -u
. "$(dirname "$0")/testlib.sh"
N=40 # tokens compared after BOS
S="$SHARED/data/stories260K"

npm_dir="$tmp/npm"
mkdir -p "$npm_dir"
cp "$SHARED/bench/llamacpp/package.json" "$npm_dir/"
if ! (cd "$npm_dir" && npm i -E --omit=optional --no-audit --no-fund --prefer-offline \
        node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 > "$tmp/npm.log" 2>&1); then
    echo "FAIL: npm could not install node-llama-cpp 3.21.1 (registry unreachable?); llama.cpp checks not run:" >&2
    tail -5 "$tmp/npm.log" >&2
    fail=$((fail + 1))
    finish
fi
# greedy ids from BOS: node gen.mjs MODEL.gguf N [LORA.gguf]
cat > "$npm_dir/gen.mjs" << 'EOF'
import {getLlama} from "node-llama-cpp";
const [modelPath, nStr, loraPath] = process.argv.slice(2);
const n = parseInt(nStr);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
// F32 keys and values and no flash attention: llama.cpp's defaults (an F16 cache) move logits by ~1e-3,
// enough to flip a near tie that loom's float cache decides the other way
const opts = {contextSize: 256, threads: 1, batchSize: 256, flashAttention: false,
              experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"};
if (loraPath) opts.lora = {adapters: [{filePath: loraPath, scale: 1}]};
const context = await model.createContext(opts);
const out = [];
for await (const tok of context.getSequence().evaluate([model.tokens.bos], {temperature: 0})) {
  if (tok === model.tokens.eos || tok === model.tokens.bos) break;
  out.push(tok);
  if (out.length >= n) break;
}
console.log(out.join(" "));
await context.dispose();
await model.dispose();
EOF
llamacpp() { (cd "$npm_dir" && node gen.mjs "$@") 2> "$tmp/node.err"; }
# loom's greedy continuation from BOS as ids: N tokens (the final newline generate prints is not one)
loom_ids() { "$LOOM" generate "$@" --temperature 0 --steps $((N + 1)) --threads 1 2>/dev/null | "$LOOM" tokenize --tokenizer "$tok" | cut -d' ' -f1-$N; }

# ---- Llama: stories260K + LoRA on q_proj, k_proj
tok="$S/tok512.bin"
for i in $(seq 1 40); do echo "The big dog ran to the park. The dog saw a bird and barked at it. The bird flew away."; done > "$tmp/dog.txt"
"$LOOM" train --model "$S/stories260K.bin" --tokenizer "$tok" --data "$tmp/dog.txt" --peft lora --target-modules q_proj,k_proj \
    --lora-r 4 --steps 30 --lr 3e-2 --batch 4 --seq 64 --eval-every 0 --sample-len 0 --threads 1 --out "$tmp/llora" > /dev/null 2>&1
check "llama: LoRA trained" test -s "$tmp/llora/adapter_model.safetensors"
"$LOOM" export --adapter "$tmp/llora" --gguf-lora "$tmp/llora.gguf" --model "$S/stories260K.bin" > "$tmp/out" 2>&1
check "llama: --gguf-lora exits 0" test $? -eq 0
check "llama: export names the file" grep -q "llora.gguf" "$tmp/out"
# the base as GGUF: loom's exporter where this build has it, and the shared llama2.c converter
bases=()
if "$LOOM" export --help 2>&1 | grep -q -- "--gguf "; then
    "$LOOM" export --model "$S/stories260K.bin" --tokenizer "$tok" --gguf "$tmp/lbase.gguf" > /dev/null 2>&1
    check "llama: base exported by loom" test -s "$tmp/lbase.gguf"
    bases+=("$tmp/lbase.gguf")
fi
/usr/bin/python3 "$SHARED/bench/llamacpp/llama2c_to_gguf.py" "$S/stories260K.bin" "$tok" "$tmp/lbase2.gguf" > /dev/null
bases+=("$tmp/lbase2.gguf")
want=$(loom_ids --model "$S/stories260K.bin" --tokenizer "$tok" --adapter "$tmp/llora")
plain=$(loom_ids --model "$S/stories260K.bin" --tokenizer "$tok")
check "llama: loom's ids ($(echo $want | wc -w))" test "$(echo $want | wc -w)" -eq $N
check "llama: the adapter changes loom's continuation" test "$want" != "$plain"
for b in "${bases[@]}"; do
    got=$(llamacpp "$b" $N "$tmp/llora.gguf")
    check "llama ($(basename "$b")): llama.cpp with the adapter = loom with the adapter
  llama.cpp: $got
  loom:      $want" test -n "$got" -a "$got" = "$want"
    base=$(llamacpp "$b" $N)
    check "llama ($(basename "$b")): llama.cpp without it = loom without it" test -n "$base" -a "$base" = "$plain"
done

# ---- refusals name the flag and the reason
"$LOOM" train --model "$S/stories260K.bin" --tokenizer "$tok" --data "$tmp/dog.txt" --peft prefix --prefix-len 2 --steps 1 \
    --batch 2 --seq 32 --eval-every 0 --sample-len 0 --threads 1 --out "$tmp/pre" > /dev/null 2>&1
refuse "prefix adapter refused" 1 "--gguf-lora" "LoRA adapters only" -- "$LOOM" export --adapter "$tmp/pre" --gguf-lora "$tmp/x.gguf" --model "$S/stories260K.bin"
refuse "--gguf-lora without --adapter" 2 "--gguf-lora" "--adapter" -- "$LOOM" export --gguf-lora "$tmp/x.gguf" --model "$S/stories260K.bin"
refuse "adapter of another model" 1 "--adapter" "does not fit" -- "$LOOM" export --adapter "$tmp/llora" --gguf-lora "$tmp/x.gguf" --model "$SHARED/reference/gpt2-tiny"
check "nothing written when refused" test ! -e "$tmp/x.gguf"
finish
