#!/usr/bin/env bash
# loom sim --client-algo mezo|fedkseed end to end on a micro model: both train, FedKSeed's uploads are
# (seed, scalar) pairs of a few hundred bytes, results do not depend on --workers, the compositions
# (secure aggregation, central DP with its epsilon, the median) run, and the flags' refusals name them.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
cat > "$tmp/config.json" <<'JSON'
{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_inner": 64,
 "vocab_size": 259, "n_positions": 32, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
 "tie_word_embeddings": true}
JSON
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/text.txt"
A=(--model "$tmp/config.json" --data "$tmp/text.txt" --clients 3 --rounds 2 --local-steps 3 --batch 2 --seq 16
   --sample-len 0 --quiet-clients --eval-every 0 --test-frac 0.1 --seed 4)
K=(--client-algo fedkseed --seed-pool 256 --zo-lr 0.01)

"$LOOM" sim "${A[@]}" --client-algo mezo --zo-lr 0.01 --out "$tmp/m" > "$tmp/m.out" 2> "$tmp/m.err"
check "mezo runs" test $? -eq 0
check "mezo: 2 rounds of 3 accepted updates" test "$(grep -c '"accepted":3' "$tmp/m/metrics.jsonl")" -eq 2
check "mezo: named in the summary" grep -q 'client algorithm *mezo' "$tmp/m.out"

"$LOOM" sim "${A[@]}" "${K[@]}" --out "$tmp/k1" --workers 1 --checkpoint-every 1 > "$tmp/k1.out" 2> "$tmp/k1.err"
check "fedkseed runs" test $? -eq 0
check "fedkseed: accepted updates" test "$(grep -c '"accepted":3' "$tmp/k1/metrics.jsonl")" -eq 2
# an upload is the header and at most 3 pairs of 8 bytes: a few hundred bytes, never the dense 1024 + header
up=$(grep '"type":"client"' "$tmp/k1/metrics.jsonl" | head -1 | sed 's/.*"bytes_up":\([0-9]*\).*/\1/')
check "fedkseed: bytes up per client ($up) below 600" num_lt "$up" 600
check "fedkseed: the summary reports bytes per client" grep -q 'bytes up (measured)' "$tmp/k1.out"
"$LOOM" sim "${A[@]}" "${K[@]}" --out "$tmp/k2" --workers 2 > /dev/null 2>&1
check "fedkseed: workers 1 == workers 2" cmp -s "$tmp/k1/global.safetensors" "$tmp/k2/global.safetensors"
"$LOOM" sim "${A[@]}" "${K[@]}" --seed-probs importance > /dev/null 2> "$tmp/imp.err"
check "fedkseed with importance probabilities runs" test $? -eq 0

# any trainable set: LoRA
"$LOOM" sim "${A[@]}" --client-algo mezo --zo-lr 0.01 --peft lora --lora-r 2 > /dev/null 2> "$tmp/ml.err"
check "mezo over a LoRA set runs" test $? -eq 0
"$LOOM" sim "${A[@]}" "${K[@]}" --peft lora --lora-r 2 --out "$tmp/kl" > /dev/null 2> "$tmp/kl.err"
check "fedkseed over a LoRA set runs" test $? -eq 0
check "fedkseed over a LoRA set writes the adapter" test -s "$tmp/kl/adapter/adapter_model.safetensors"
check "the run names its zeroth-order settings" grep -q 'zeroth-order clients (fedkseed): eps 0.001, step size 0.01' "$tmp/kl.err"

# compositions
"$LOOM" sim "${A[@]}" "${K[@]}" --secagg --out "$tmp/sa" > /dev/null 2> "$tmp/sa.err"
check "fedkseed + secure aggregation runs" test $? -eq 0
"$LOOM" sim "${A[@]}" "${K[@]}" --dp central --dp-clip 0.01 --dp-noise 0.5 --out "$tmp/dp" > /dev/null 2> "$tmp/dp.err"
check "fedkseed + central DP runs" test $? -eq 0
check "fedkseed + central DP reports epsilon" grep -q '"epsilon":[0-9]' "$tmp/dp/metrics.jsonl"
"$LOOM" sim "${A[@]}" "${K[@]}" --aggregator median --out "$tmp/md" > /dev/null 2> "$tmp/md.err"
check "fedkseed + median runs" test $? -eq 0

# over the network: loom server + two loom client processes equal loom sim --clients-dir bit for bit
mkdir -p "$tmp/cd"
head -c 9000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
tail -c 9000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/bob.txt"
# net ALGO EXTRA_JSON: a networked run of ALGO against loom sim --clients-dir on the same files
net() {
    local algo=$1 R="$tmp/ref_$1" S="$tmp/s_$1"
    cat > "$tmp/run_$algo.json" << EOF
{"model": "$tmp/config.json", "rounds": 2, "local-steps": 3, "batch": 2, "seq": 16, "seed": 5, "eval-every": 1,
 "sample-len": 0, "client-algo": "$algo", "zo-lr": 0.01$2}
EOF
    "$LOOM" sim --config "$tmp/run_$algo.json" --clients-dir "$tmp/cd" --out "$R" > /dev/null 2> "$R.err"
    check "$algo reference simulation" test -s "$R/global.safetensors"
    for n in alice bob; do "$LOOM" server add-client --state "$S" $n > "$S.$n" 2> /dev/null; done
    local port spid up cpids t p
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$LOOM" server --state "$S" --config "$tmp/run_$algo.json" --listen "127.0.0.1:$port" --poll-ms 50 --done-grace 1 \
            >> "$S.log" 2>&1 &
        spid=$!
        up=0
        for _ in $(seq 100); do
            if grep -q "listening on port" "$S.log" 2> /dev/null; then up=1; break; fi
            kill -0 $spid 2> /dev/null || break
            sleep 0.1
        done
        [ $up = 1 ] && break
    done
    cpids=""
    for n in alice bob; do
        "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$S.$n" --ca-cert "$S/tls/cert.pem" \
            --model "$tmp/config.json" --data "$tmp/cd/$n.txt" --work-dir "$S.w$n" --threads 1 > /dev/null 2>> "$S.$n.log" &
        cpids="$cpids $!"
    done
    t=0
    while kill -0 $spid 2> /dev/null && [ $t -lt 600 ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 $spid 2> /dev/null && kill -9 $spid
    wait $spid
    check "$algo server finishes" test $? -eq 0
    for p in $cpids; do
        t=0
        while kill -0 $p 2> /dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
        kill -0 $p 2> /dev/null && kill -9 $p
        wait $p
    done
    check "networked $algo == loom sim --clients-dir" test "$(st_data "$S/global.safetensors")" = "$(st_data "$R/global.safetensors")"
}
net fedkseed ', "seed-pool": 256'
net mezo ''
S="$tmp/s_fedkseed"
up=$(grep '"type":"client"' "$S/metrics.jsonl" | head -1 | sed 's/.*"bytes_up":\([0-9]*\).*/\1/')
check "networked fedkseed uploads ($up bytes) are pairs" num_lt "$up" 600

# refusals name their flag
refuse "seed pool without fedkseed" 1 '--seed-pool' 'fedkseed' -- "$LOOM" sim "${A[@]}" --seed-pool 16
refuse "zo-lr without a zeroth-order client" 1 '--zo-lr' 'mezo or fedkseed' -- "$LOOM" sim "${A[@]}" --zo-lr 0.1
refuse "unknown client algorithm" 1 '--client-algo' 'sgd, mezo or fedkseed' -- "$LOOM" sim "${A[@]}" --client-algo spsa
refuse "mezo with heterogeneous masks" 1 '--lora-freeze-a' '--client-algo sgd' -- "$LOOM" sim "${A[@]}" --client-algo mezo --peft lora --lora-freeze-a
refuse "zo-eps 0" 1 '--zo-eps' '> 0' -- "$LOOM" sim "${A[@]}" --client-algo mezo --zo-eps 0
refuse "bad zo-restore" 1 '--zo-restore' 'copy or inplace' -- "$LOOM" sim "${A[@]}" --client-algo mezo --zo-restore undo
refuse "bad seed-probs" 1 '--seed-probs' 'uniform or importance' -- "$LOOM" sim "${A[@]}" "${K[@]}" --seed-probs often
refuse "fedkseed with fedadam" 1 'fedkseed' '--strategy fedavg' -- "$LOOM" sim "${A[@]}" "${K[@]}" --strategy fedadam
refuse "fedkseed with --compress" 1 'fedkseed' '--compress' -- "$LOOM" sim "${A[@]}" "${K[@]}" --compress int8
refuse "mezo with DP-SGD" 1 'mezo' '--dp sgd' -- "$LOOM" sim "${A[@]}" --client-algo mezo --dp sgd --dp-clip 1 --dp-noise 1
refuse "fedkseed resume" 1 "fedkseed" "--resume" -- "$LOOM" sim "${A[@]}" "${K[@]}" --out "$tmp/k1" --resume --rounds 3
finish
