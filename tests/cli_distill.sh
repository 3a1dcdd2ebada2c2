#!/usr/bin/env bash
# Distillation from the command line on micro models: loom train and loom sim with --teacher (alpha 0
# equals no teacher bit for bit, alpha > 0 changes the result), loom sim --server-distill (FedDF: 0 steps
# equals plain FedAvg bit for bit, any --workers gives the same bits), loom sim --synthetic (0 samples
# equals the plain run, the samples change the model the same way for any --workers), continual rounds
# (a run resumed with --continual and nothing new equals the uninterrupted run, new clients join, the
# retention row equals loom eval of the same model on that file), and the refusals name the flags and
# files.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
cfg() { # n_embd layers vocab -> config.json on stdout
    cat <<JSON
{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": $2, "n_head": 2, "n_embd": $1, "n_inner": $((2 * $1)),
 "vocab_size": $3, "n_positions": 32, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
 "tie_word_embeddings": true}
JSON
}
cfg 32 1 259 > "$tmp/student.json"
cfg 48 2 259 > "$tmp/teacher.json"
cfg 16 1 50257 > "$tmp/other.json"
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/text.txt"
TR=(--data "$tmp/text.txt" --batch 2 --seq 16 --sample-len 0 --eval-every 0 --val-frac 0.1 --seed 3)

"$LOOM" train --model "$tmp/teacher.json" "${TR[@]}" --steps 20 --out "$tmp/teacher" > /dev/null 2> "$tmp/t.err"
check "the teacher trains" test -s "$tmp/teacher/model.safetensors"
"$LOOM" train --model "$tmp/other.json" "${TR[@]}" --steps 1 --out "$tmp/other" --tokenizer "$SHARED/data/gpt2-tokenizer" \
    > /dev/null 2>&1
check "a model with the GPT-2 vocabulary" test -s "$tmp/other/model.safetensors"
"$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 4 --out "$tmp/plain" > /dev/null 2>&1
"$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 4 --out "$tmp/a0" --teacher "$tmp/teacher" --kd-alpha 0 \
    > /dev/null 2> "$tmp/a0.err"
check "train: --kd-alpha 0 runs" test -s "$tmp/a0/model.safetensors"
check "train: the teacher is named" grep -q "distillation from $tmp/teacher" "$tmp/a0.err"
check "train: --kd-alpha 0 equals no teacher" test "$(st_data "$tmp/a0/model.safetensors")" = "$(st_data "$tmp/plain/model.safetensors")"
"$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 4 --out "$tmp/a5" --teacher "$tmp/teacher" --kd-alpha 0.5 \
    --kd-temp 2 > /dev/null 2>&1
check "train: --kd-alpha 0.5 runs" test -s "$tmp/a5/model.safetensors"
check "train: --kd-alpha 0.5 differs from no teacher" test "$(st_data "$tmp/a5/model.safetensors")" != "$(st_data "$tmp/plain/model.safetensors")"
refuse "train: vocabulary mismatch" 1 "teacher $tmp/other" "model $tmp/student.json" "vocabulary" -- \
    "$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 1 --teacher "$tmp/other"
refuse "train: --kd-alpha out of range" 2 "kd-alpha" -- \
    "$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 1 --teacher "$tmp/teacher" --kd-alpha 1.5
refuse "train: a missing teacher" 1 "teacher $tmp/nothere" -- \
    "$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 1 --teacher "$tmp/nothere"
refuse "train: --teacher with --dp sgd" 1 "teacher" "dp sgd" -- \
    "$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 1 --teacher "$tmp/teacher" --dp sgd --dp-clip 1 --dp-noise 1

S=(--model "$tmp/student.json" --data "$tmp/text.txt" --clients 3 --rounds 2 --local-steps 2 --batch 2 --seq 16
   --sample-len 0 --quiet-clients --eval-every 0 --test-frac 0.1 --seed 4)
"$LOOM" sim "${S[@]}" --out "$tmp/s0" > /dev/null 2>&1
"$LOOM" sim "${S[@]}" --out "$tmp/s1" --teacher "$tmp/teacher" --kd-alpha 0 > /dev/null 2> "$tmp/s1.err"
check "sim: --teacher --kd-alpha 0 runs" test -s "$tmp/s1/global.safetensors"
check "sim: --kd-alpha 0 equals no teacher" cmp -s "$tmp/s0/global.safetensors" "$tmp/s1/global.safetensors"
"$LOOM" sim "${S[@]}" --out "$tmp/s2" --teacher "$tmp/teacher" --kd-alpha 0.8 --workers 1 > /dev/null 2>&1
"$LOOM" sim "${S[@]}" --out "$tmp/s3" --teacher "$tmp/teacher" --kd-alpha 0.8 --workers 3 > /dev/null 2>&1
check "sim: --kd-alpha 0.8 changes the model" test "$(st_data "$tmp/s2/global.safetensors")" != "$(st_data "$tmp/s0/global.safetensors")"
check "sim: distillation is the same for any --workers" cmp -s "$tmp/s2/global.safetensors" "$tmp/s3/global.safetensors"
refuse "sim: vocabulary mismatch" 1 "teacher $tmp/other" "vocabulary" -- "$LOOM" sim "${S[@]}" --teacher "$tmp/other"
refuse "sim: --teacher with a zeroth-order client" 1 "teacher" "client-algo" -- \
    "$LOOM" sim "${S[@]}" --teacher "$tmp/teacher" --client-algo mezo
# FedDF: the server distils the clients' ensemble on public text after each round
tail -c 8000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/public.txt"
"$LOOM" sim "${S[@]}" --out "$tmp/d0" --server-distill "$tmp/public.txt" --distill-steps 0 > /dev/null 2> "$tmp/d0.err"
check "sim: --distill-steps 0 runs" test -s "$tmp/d0/global.safetensors"
check "sim: --distill-steps 0 equals plain FedAvg" cmp -s "$tmp/s0/global.safetensors" "$tmp/d0/global.safetensors"
"$LOOM" sim "${S[@]}" --out "$tmp/d1" --server-distill "$tmp/public.txt" --distill-steps 3 --workers 1 > /dev/null 2> "$tmp/d1.err"
"$LOOM" sim "${S[@]}" --out "$tmp/d2" --server-distill "$tmp/public.txt" --distill-steps 3 --workers 3 > /dev/null 2>&1
check "sim: FedDF is announced" grep -q "FedDF: 3 server distillation steps" "$tmp/d1.err"
check "sim: --distill-steps 3 changes the model" test "$(st_data "$tmp/d1/global.safetensors")" != "$(st_data "$tmp/s0/global.safetensors")"
check "sim: FedDF is the same for any --workers" cmp -s "$tmp/d1/global.safetensors" "$tmp/d2/global.safetensors"
refuse "sim: a missing public text" 1 "server-distill $tmp/nothere" -- \
    "$LOOM" sim "${S[@]}" --server-distill "$tmp/nothere"
head -c 10 "$tmp/public.txt" > "$tmp/short.txt"
refuse "sim: a public text shorter than a window" 1 "server-distill $tmp/short.txt" "fewer than one window" -- \
    "$LOOM" sim "${S[@]}" --server-distill "$tmp/short.txt"
refuse "sim: FedDF with secure aggregation" 1 "server-distill" "secagg" -- \
    "$LOOM" sim "${S[@]}" --server-distill "$tmp/public.txt" --secagg
refuse "sim: FedDF with asynchronous rounds" 1 "server-distill" "mode fedasync" -- \
    "$LOOM" sim "${S[@]}" --server-distill "$tmp/public.txt" --mode fedasync
refuse "sim: --distill-temp out of range" 2 "distill-temp" -- \
    "$LOOM" sim "${S[@]}" --server-distill "$tmp/public.txt" --distill-temp 0
# synthetic data written by a model, mixed into the clients with little data
"$LOOM" sim "${S[@]}" --out "$tmp/y0" --synthetic 0 > /dev/null 2>&1
check "sim: --synthetic 0 equals the plain run" cmp -s "$tmp/s0/global.safetensors" "$tmp/y0/global.safetensors"
"$LOOM" sim "${S[@]}" --out "$tmp/y1" --synthetic 4 --synthetic-below 100000 --synthetic-teacher "$tmp/teacher" \
    --workers 1 > /dev/null 2> "$tmp/y1.err"
"$LOOM" sim "${S[@]}" --out "$tmp/y2" --synthetic 4 --synthetic-below 100000 --synthetic-teacher "$tmp/teacher" \
    --workers 3 > /dev/null 2>&1
check "sim: --synthetic is announced" grep -q "synthetic data: 4 samples of 17 tokens from $tmp/teacher" "$tmp/y1.err"
check "sim: --synthetic-below 100000 mixes into every client" grep -q "mixed into 3 clients" "$tmp/y1.err"
check "sim: the samples change the model" test "$(st_data "$tmp/y1/global.safetensors")" != "$(st_data "$tmp/s0/global.safetensors")"
check "sim: --synthetic is the same for any --workers" cmp -s "$tmp/y1/global.safetensors" "$tmp/y2/global.safetensors"
"$LOOM" sim "${S[@]}" --synthetic 2 --synthetic-below 1 > /dev/null 2> "$tmp/y3.err"
check "sim: --synthetic-below 1 mixes into no client" grep -q "mixed into 0 clients" "$tmp/y3.err"
refuse "sim: --synthetic-teacher with another vocabulary" 1 "synthetic-teacher $tmp/other" "vocabulary" -- \
    "$LOOM" sim "${S[@]}" --synthetic 2 --synthetic-teacher "$tmp/other"
refuse "sim: --synthetic-len beyond the positions" 1 "synthetic" "positions" -- \
    "$LOOM" sim "${S[@]}" --synthetic 2 --synthetic-len 40
# continual rounds: extend a finished run, with new clients; the retention test on earlier data
C=("${S[@]}" --checkpoint-every 1)
"$LOOM" sim "${C[@]}" --rounds 3 --out "$tmp/u3" > /dev/null 2>&1
"$LOOM" sim "${C[@]}" --rounds 2 --out "$tmp/c3" > /dev/null 2>&1
"$LOOM" sim "${C[@]}" --rounds 3 --out "$tmp/c3" --resume --continual > /dev/null 2> "$tmp/c3.err"
check "continual: extending with nothing new equals the uninterrupted run" cmp -s "$tmp/u3/global.safetensors" "$tmp/c3/global.safetensors"
"$LOOM" sim "${C[@]}" --rounds 4 --out "$tmp/c3" --resume --continual --clients 4 > /dev/null 2> "$tmp/c4.err"
check "continual: a run extended with a fourth client runs" test $? -eq 0
check "continual: the new client trains in round 4" grep -q '"round":4,"client":3,.*"status":"accepted"' "$tmp/c3/metrics.jsonl"
refuse "continual: new clients without --continual" 1 "clients is 4, this run has 5" -- \
    "$LOOM" sim "${C[@]}" --rounds 5 --out "$tmp/c3" --resume --clients 5
refuse "continual: --continual without --resume" 1 "continual" "resume" -- "$LOOM" sim "${S[@]}" --continual
head -c 3000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/earlier.txt"
"$LOOM" train --model "$tmp/student.json" "${TR[@]}" --steps 1 --out "$tmp/base" > /dev/null 2>&1
"$LOOM" sim "${S[@]}" --model "$tmp/base" --peft lora --lora-r 2 --out "$tmp/rt" --retention-test "$tmp/earlier.txt" \
    > /dev/null 2> "$tmp/rt.err"
check "retention: one row a round" test "$(grep -c '"type":"retention"' "$tmp/rt/metrics.jsonl")" -eq 2
last=$(grep '"type":"retention"' "$tmp/rt/metrics.jsonl" | tail -n 1 | sed 's/.*"loss":\([-0-9.e+]*\).*/\1/')
want=$("$LOOM" eval --model "$tmp/base" --adapter "$tmp/rt/adapter" --data "$tmp/earlier.txt" --batch 2 --seq 16 2> /dev/null |
       sed 's/^loss \([0-9.]*\).*/\1/')
check "retention: the last round's row ($last) equals loom eval ($want)" test "$(printf '%.4f' "$last")" = "$want"
refuse "retention: a missing file" 1 "retention-test $tmp/nothere" -- "$LOOM" sim "${S[@]}" --retention-test "$tmp/nothere"
finish
