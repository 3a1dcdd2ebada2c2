#!/usr/bin/env bash
# Split learning across processes: loom server runs layers K.. of every client's steps over POST /v1/split,
# two loom clients run the embeddings and layers 0..K-1 on their own files; the run's global adapter equals
# loom sim --clients-dir --split-layer K bit for bit (each side clips its own gradient in both), the
# endpoint refuses what it must with the protocol's codes, and no token id but the targets leaves a client.
set -u
. "$(dirname "$0")/testlib.sh"
mkdir -p "$tmp/cd"
head -c 12000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
tail -c 10000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/bob.txt"
cat > "$tmp/run.json" << 'EOF2'
{"model": "tiny", "rounds": 2, "local-steps": 3, "batch": 2, "seq": 32, "seed": 5, "eval-every": 1,
 "strategy": "fedavg", "sample-len": 0, "peft": "lora", "lora-r": 4, "lr": 0.05, "split-layer": 2}
EOF2
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --out "$tmp/ref" > /dev/null 2> "$tmp/ref.err"
check "reference simulation (split)" test -s "$tmp/ref/global.safetensors"

S="$tmp/s"
for n in alice bob; do "$LOOM" server add-client --state "$S" $n > "$S.$n" 2> /dev/null; done
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    LOOM_NET_TRACE="$tmp/trace" "$LOOM" server --state "$S" --config "$tmp/run.json" --listen "127.0.0.1:$port" \
        >> "$S.log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do
        grep -q "listening on port" "$S.log" 2> /dev/null && break 2
        kill -0 $spid 2> /dev/null || break
        sleep 0.1
    done
done
check "server starts" grep -q "listening on port" "$S.log"
check "server says it runs the split" grep -q "split learning after layer 2" "$S.log"
code() { curl -s -o "$tmp/body" -w '%{http_code}' --cacert "$S/tls/cert.pem" -H "Authorization: Bearer $(cat "$S.alice")" "$@"; }
check "a step before any round: 410 stale" test "$(code --data-binary 'x' "https://127.0.0.1:$port/v1/split")" = 410
check "410 says stale" grep -q '"stale"' "$tmp/body"
head -c 3000000 /dev/zero > "$tmp/big"
check "an oversized step: 413" test "$(code --data-binary @"$tmp/big" "https://127.0.0.1:$port/v1/split")" = 413
check "GET without a round: 400" test "$(code "https://127.0.0.1:$port/v1/split")" = 400
cpids=""
for n in alice bob; do
    "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$S.$n" --ca-cert "$S/tls/cert.pem" \
        --data "$tmp/cd/$n.txt" --model tiny --work-dir "$S.w$n" --threads 1 > /dev/null 2>> "$S.$n.log" &
    cpids="$cpids $!"
done
t=0
while kill -0 $spid 2> /dev/null && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
kill -0 $spid 2> /dev/null && kill -9 $spid
wait $spid
check "server exits 0" test $? -eq 0
for p in $cpids; do
    t=0
    while kill -0 $p 2> /dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 $p 2> /dev/null && kill -9 $p
    wait $p
    check "client $p exits 0" test $? -eq 0
done
check "networked split run == loom sim --split-layer, bit for bit" \
    test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"
# 2 rounds x 3 steps x 2 clients: 12 steps, each body a 32-byte header, 2 x 32 x 128 activation floats and
# 2 x 32 int32 targets (nothing else of the data), and one server-side update per client and round (plus
# the refused one above)
check "every step went over /v1/split as activations and targets" \
    test "$(grep -ac "^POST /v1/split $((32 + 2 * 32 * 128 * 4 + 2 * 32 * 4))\$" "$tmp/trace")" -eq 12
check "one server-side update per client and round" test "$(grep -ac '^GET /v1/split 0$' "$tmp/trace")" -eq 5
finish
