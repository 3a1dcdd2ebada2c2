#!/usr/bin/env bash
# --precision: loom verify --precision bf16 passes every reference case within its derived tolerances;
# loom train, loom sim and loom bench train run bf16 and say so; an unknown precision is refused naming
# the flag; on a CPU without AVX-512 BF16 (LOOM_CPU_NO_BF16=1 makes the check say no) verify refuses
# and training says once that it runs f32.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
R="$SHARED/reference"
TXT="$SHARED/data/tinyshakespeare/input.txt"

have_bf16=1
LOOM_CPU_NO_BF16= $LOOM bench train --model gpt2-tiny --batch 1 --seq 8 --steps 1 --warmup 0 --peak-reps 1 --precision bf16 \
    > "$tmp/b.out" 2> "$tmp/b.err" || have_bf16=0
grep -q "no AVX-512 BF16" "$tmp/b.err" && have_bf16=0

if [ $have_bf16 = 1 ]; then
    for c in gpt2-tiny gpt2-tiny-gelu_new llama-tiny; do
        check "verify bf16 $c" $LOOM verify --model "$R/$c" --reference "$R/$c/reference.safetensors" --precision bf16 > "$tmp/v.out" 2>&1
        check "verify bf16 $c says bf16" grep -q "bf16 matmuls" "$tmp/v.out"
    done
    check "verify bf16 lora" $LOOM verify --model "$R/gpt2-tiny" --adapter "$R/gpt2-tiny-lora" \
        --reference "$R/gpt2-tiny-lora/reference.safetensors" --precision bf16 > /dev/null 2>&1
    check "bench train bf16 reports both peaks" grep -Eq "precision=bf16 .*share_f32=[0-9.]+ .*share_bf16=[0-9.]+" "$tmp/b.out"
    $LOOM train --model tiny --data "$TXT" --batch 2 --seq 32 --steps 3 --eval-every 0 --eval-windows 1 --sample-len 0 \
        --threads 1 --precision bf16 > "$tmp/t.out" 2> "$tmp/t.err"
    check "train bf16 runs" test $? = 0
    check "train bf16 says so" grep -q "bf16 matmuls" "$tmp/t.err"
    head -c 20000 "$TXT" > "$tmp/small.txt"
    $LOOM sim --model tiny --data "$tmp/small.txt" --clients 2 --rounds 1 --local-steps 1 --batch 2 --seq 16 \
        --eval-clients 1 --sample-len 0 --precision bf16 --quiet-clients --out "$tmp/sim" > /dev/null 2> "$tmp/s.err"
    check "sim bf16 runs" test -s "$tmp/sim/metrics.jsonl"
fi

# refusals name the flag
refuse "train --precision fp8" 1 "--precision fp8" "f32 or bf16" -- $LOOM train --model tiny --data "$TXT" --steps 1 --precision fp8
refuse "verify --precision fp8" 2 "--precision fp8" "f32 or bf16" -- $LOOM verify --model "$R/gpt2-tiny" --reference "$R/gpt2-tiny/reference.safetensors" --precision fp8
refuse "sim --precision half" 1 "--precision half" "f32 or bf16" -- $LOOM sim --rounds 1 --precision half
refuse "bench --precision x" 2 "--precision x" -- $LOOM bench train --model gpt2-tiny --precision x

# no AVX-512 BF16: verify refuses, training says once that it runs f32
refuse "verify bf16 without the instructions" 1 "AVX-512 BF16" -- env LOOM_CPU_NO_BF16=1 $LOOM verify --model "$R/gpt2-tiny" \
    --reference "$R/gpt2-tiny/reference.safetensors" --precision bf16
LOOM_CPU_NO_BF16=1 $LOOM train --model tiny --data "$TXT" --batch 2 --seq 32 --steps 2 --eval-every 0 --eval-windows 1 \
    --sample-len 0 --threads 1 --precision bf16 > /dev/null 2> "$tmp/n.err"
check "train without bf16 runs" test $? = 0
check "train without bf16 says so once" test "$(grep -c 'no AVX-512 BF16' "$tmp/n.err")" = 1
check "train without bf16 runs f32" grep -q "f32 matmuls" "$tmp/n.err"
finish
