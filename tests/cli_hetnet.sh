#!/usr/bin/env bash
# Heterogeneous and personalized clients over the network (loom server, loom client): HetLoRA ranks,
# FedRA layers and a private MLP adapter travel as masked updates (only the values each client's mask
# sends) and the run equals loom sim --clients-dir bit for bit; the uploads are smaller than a whole
# update; what only the simulator does is refused naming the flag.
. "$(dirname "$0")/testlib.sh"

mkdir -p "$tmp/cd"
head -c 12000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
tail -c 12000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/bob.txt"
cat > "$tmp/run.json" << 'EOF2'
{"model": "tiny", "rounds": 2, "local-steps": 2, "batch": 2, "seq": 32, "seed": 5, "eval-every": 1,
 "strategy": "fedavg", "sample-len": 0, "peft": "lora", "lora-r": 4, "target-modules": "c_attn,mlp.c_fc",
 "client-ranks": "2,4", "fedra-layers": "3", "private": "mlp.c_fc"}
EOF2

"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --out "$tmp/ref" > /dev/null 2> "$tmp/ref.err"
check "reference simulation" test -s "$tmp/ref/global.safetensors"

S="$tmp/s"
"$LOOM" server add-client --state "$S" alice > "$S.alice" 2> /dev/null
"$LOOM" server add-client --state "$S" bob > "$S.bob" 2> /dev/null
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    "$LOOM" server --state "$S" --config "$tmp/run.json" --listen "127.0.0.1:$port" >> "$S.log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do
        grep -q "listening on port" "$S.log" 2> /dev/null && break 2
        kill -0 $spid 2> /dev/null || break
        sleep 0.1
    done
done
check "server starts" grep -q "listening on port" "$S.log"
cpids=""
for n in alice bob; do
    "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$S.$n" --ca-cert "$S/tls/cert.pem" \
        --model tiny --data "$tmp/cd/$n.txt" --work-dir "$S.w$n" --threads 1 > /dev/null 2>> "$S.$n.log" &
    cpids="$cpids $!"
done
t=0
while kill -0 $spid 2> /dev/null && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
kill -0 $spid 2> /dev/null && kill -9 $spid
wait $spid
check "server finishes" test $? -eq 0
for p in $cpids; do wait $p; done
check "networked masked run == loom sim --clients-dir, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"
accepted=$(grep -c '"type":"client".*"status":"accepted"' "$S/metrics.jsonl")
check "every upload accepted ($accepted)" test "$accepted" -eq 4
# the whole vector is 18432 floats; alice holds rank 2 of 4 and bob rank 4, each adapts 3 of the 4
# layers, and neither sends the 10240 private MLP values: alice sends 3072 values, bob 6144
up() { grep '"type":"client"' "$1" | grep "\"name\":\"$2\"" | head -1 | sed 's/.*"bytes_up":\([0-9]*\).*/\1/'; }
a=$(up "$S/metrics.jsonl" alice) b=$(up "$S/metrics.jsonl" bob)
check "alice uploads 3072 values ($a bytes)" test "$a" -ge 12288 -a "$a" -le 12800
check "bob uploads 6144 values ($b bytes)" test "$b" -ge 24576 -a "$b" -le 25088
check "the simulator counts the same bytes" test "$(up "$tmp/ref/metrics.jsonl" alice),$(up "$tmp/ref/metrics.jsonl" bob)" = "$a,$b"
check "the client kept its private part" test -s "$S.walice/client-state.safetensors"

echo '{"model": "tiny", "rounds": 1, "peft": "lora", "lora-r": 4, "client-ranks": "profile"}' > "$tmp/bad.json"
refuse "profile ranks on a server" 12 '--client-ranks profile' 'loom sim' -- "$LOOM" server --state "$tmp/s2" --config "$tmp/bad.json" --listen 127.0.0.1:1
echo '{"model": "tiny", "rounds": 1, "peft": "lora", "lora-r": 4, "client-ranks": "2", "hetlora-agg": "stack"}' > "$tmp/bad2.json"
refuse "stacking on a server" 12 '--hetlora-agg stack' -- "$LOOM" server --state "$tmp/s3" --config "$tmp/bad2.json" --listen 127.0.0.1:1
echo '{"model": "tiny", "rounds": 1, "peft": "lora", "lora-r": 4, "private": "c_attn", "secagg": true}' > "$tmp/bad3.json"
refuse "private with secure aggregation on a server" 12 '--private' 'secagg' -- "$LOOM" server --state "$tmp/s4" --config "$tmp/bad3.json" --listen 127.0.0.1:1
finish
