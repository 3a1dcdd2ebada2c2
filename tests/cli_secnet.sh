# Secure aggregation over the network (docs/protocol.md, "Secure aggregation"): loom server and four
# loom clients over TLS run the four phases of /v1/secagg and give the same global model as loom sim
# --secagg; a client that vanishes after sending its masked input still counts, one that vanishes
# before masking is left out of the exact sum; fewer than t clients abort the round with the
# documented message; the endpoint's refusals carry the documented codes.
. "$(dirname "$0")/testlib.sh"

mkdir -p "$tmp/cd" "$tmp/cd3"
text="$LOOM_SHARED/data/tinyshakespeare/input.txt"
head -c 12000 "$text" > "$tmp/cd/alice.txt"
head -c 24000 "$text" | tail -c 12000 > "$tmp/cd/bob.txt"
head -c 36000 "$text" | tail -c 12000 > "$tmp/cd/carol.txt"
tail -c 12000 "$text" > "$tmp/cd/dave.txt"
cp "$tmp/cd/alice.txt" "$tmp/cd/bob.txt" "$tmp/cd/carol.txt" "$tmp/cd3/"
names="alice bob carol dave"
cat > "$tmp/run.json" << 'EOF'
{"model": "tiny", "rounds": 2, "local-steps": 1, "batch": 2, "seq": 16, "seed": 7, "eval-every": 2,
 "strategy": "fedavg", "sample-len": 0, "secagg": true, "secagg-threshold": 3}
EOF
sed 's/"rounds": 2/"rounds": 1/' "$tmp/run.json" > "$tmp/run1.json"

# the references: the simulator over the same files, with secure aggregation
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --out "$tmp/ref" > /dev/null 2> "$tmp/ref.err"
check "reference: loom sim --secagg, 4 clients, 2 rounds" test -s "$tmp/ref/global.safetensors"
# dave is the last name: without his file the others keep their client ids (and so their batches)
"$LOOM" sim --config "$tmp/run1.json" --clients-dir "$tmp/cd3" --out "$tmp/ref3" > /dev/null 2> "$tmp/ref3.err"
check "reference: loom sim --secagg, 3 clients, 1 round" test -s "$tmp/ref3/global.safetensors"

register() { # STATE: the four clients
    for n in $names; do "$LOOM" server add-client --state "$1" $n > "$1.$n" 2> /dev/null || return 1; done
}

# start_server STATE CONFIG [flags]: on a free port (sets $port, $spid; log in STATE.log)
start_server() {
    local st=$1 cfg=$2
    shift 2
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$LOOM" server --state "$st" --config "$cfg" --listen "127.0.0.1:$port" --poll-ms 100 "$@" >> "$st.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do
            grep -q "listening on port" "$st.log" 2> /dev/null && return 0
            kill -0 $spid 2> /dev/null || break
            sleep 0.1
        done
    done
    return 1
}

client() { # STATE NAME [env...]: one client in the background (its pid in $cpid)
    local st=$1 n=$2
    shift 2
    env "$@" "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$st.$n" --ca-cert "$st/tls/cert.pem" \
        --data "$tmp/cd/$n.txt" --work-dir "$st.w$n" --threads 1 --give-up 60 > /dev/null 2>> "$st.$n.log" &
    cpid=$!
}

wait_all() { # waits for the server and the clients in $cpids (at most $1 seconds)
    local t=0
    while kill -0 $spid 2> /dev/null && [ $t -lt $(($1 * 10)) ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 $spid 2> /dev/null && { kill -9 $spid; return 1; }
    wait $spid
    local st=$?
    for p in $cpids; do # a client still polling 30 s after the server ended is a failure, not a hang
        t=0
        while kill -0 $p 2> /dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
        kill -0 $p 2> /dev/null && { kill -9 $p; st=1; }
        wait $p || st=1
    done
    return $st
}

wait_exit() { # PID SECONDS: the exit status of a background process, or 99 (killed) when it runs longer
    local t=0
    while kill -0 "$1" 2> /dev/null && [ $t -lt $(($2 * 10)) ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 "$1" 2> /dev/null && { kill -9 "$1"; wait "$1" 2> /dev/null; return 99; }
    wait "$1"
}

same() { test "$(st_data "$1")" = "$(st_data "$2")"; }

# ---- four clients, two rounds, TLS: the networked run equals loom sim --secagg bit for bit
S="$tmp/s1"
check "register clients" register "$S"
LOOM_NET_TRACE="$tmp/trace" start_server "$S" "$tmp/run.json"
check "server starts" test $? -eq 0
code() { curl -s -o "$tmp/body" -w '%{http_code}' --cacert "$S/tls/cert.pem" -H "Authorization: Bearer $(cat "$S.alice")" "$@"; }
u="https://127.0.0.1:$port/v1/secagg"
check "secagg without its arguments: 400" test "$(code --data-binary x "$u")" = 400
check "400 says bad_request and names the arguments" grep -q 'bad_request.*epoch' "$tmp/body"
check "secagg before the round opened: 410 stale" test "$(code --data-binary x "$u?round=1&phase=0&epoch=0123456789abcdef")" = 410
check "410 says stale" grep -q '"stale"' "$tmp/body"
check "secagg with DELETE: 405" test "$(code -X DELETE "$u?round=1&phase=0&epoch=0123456789abcdef")" = 405
check "plain upload in a secure run: 409" test "$(code -H 'Idempotency-Key: k1' --data-binary @"$tmp/ref/global.safetensors" \
    "https://127.0.0.1:$port/v1/update")" = 409
check "409 says not_secure" grep -q '"not_secure"' "$tmp/body"
cpids=""
for n in $names; do client "$S" $n; cpids="$cpids $cpid"; done
wait_all 300
check "secure networked run completes (server and 4 clients exit 0)" test $? -eq 0
check "networked secure run == loom sim --secagg, bit for bit" same "$S/global.safetensors" "$tmp/ref/global.safetensors"
check "2 round rows" test "$(grep -c '"type":"round"' "$S/metrics.jsonl")" -eq 2
check "same accepted counts as the simulator's" \
    test "$(grep -o '"accepted":[0-9]*' "$S/metrics.jsonl" | tr '\n' ' ')" = "$(grep -o '"accepted":[0-9]*' "$tmp/ref/metrics.jsonl" | tr '\n' ' ')"
check "bytes up per client and round: the simulator's count of the four phases" \
    test "$(grep -o '"bytes_up":[0-9.e+]*' "$S/metrics.jsonl" | tr '\n' ' ')" = "$(grep -o '"bytes_up":[0-9.e+]*' "$tmp/ref/metrics.jsonl" | tr '\n' ' ')"
check "every round unmasked the sum of 4 inputs" test "$(grep -c "the sum of 4 clients' inputs" "$S.log")" -eq 2
check "the clients ran the four phases (bytes logged)" test "$(cat "$S".*.log | grep -c 'secure aggregation done')" -eq 8
check "the clients posted 4 phases x 2 rounds to /v1/secagg" test "$(grep -ac '^POST /v1/secagg ' "$tmp/trace")" -ge 32
check "no update upload but the one refused above" test "$(grep -ac '^POST /v1/update ' "$tmp/trace")" -eq 1
check "the update never reached the server unmasked (no safetensors body)" bash -c "! grep -aq 'loom_update' '$tmp/trace'"
grep -h 'secure aggregation done' "$S.alice.log" | head -1 | sed 's/.*done: /secnet bytes per client (alice, round 1): /' >&2

# ---- round 1: carol vanishes right after sending her masked input and comes back for round 2; her
# input is unmasked with the others' shares: the result is still the simulator's, bit for bit
S="$tmp/s2"
register "$S"
start_server "$S" "$tmp/run.json" --eval-timeout 20 --secagg-phase-timeout 4
cpids=""
for n in alice bob dave; do client "$S" $n; cpids="$cpids $cpid"; done
client "$S" carol LOOM_TEST_SECAGG_EXIT_AFTER=1:2
wait_exit $cpid 300
check "carol exited after sending her masked input of round 1" test $? -eq 9
client "$S" carol
cpids="$cpids $cpid"
wait_all 300
check "run with a client lost after masking completes" test $? -eq 0
check "lost after masking: round 1 still holds her input (4 inputs)" grep -q "round 1: secagg: the sum of 4 clients' inputs\|1.*the sum of 4 clients' inputs" "$S.log"
check "lost after masking, back for round 2: == loom sim --secagg, bit for bit" same "$S/global.safetensors" "$tmp/ref/global.safetensors"

# ---- one round: dave vanishes after sharing his keys, before masking; his pairwise masks are
# removed with the others' shares: the sum is exactly that of the three others (loom sim over them)
S="$tmp/s3"
register "$S"
start_server "$S" "$tmp/run1.json" --secagg-phase-timeout 4
cpids=""
for n in alice bob carol; do client "$S" $n; cpids="$cpids $cpid"; done
client "$S" dave LOOM_TEST_SECAGG_EXIT_AFTER=1
wait_exit $cpid 300
check "dave exited after phase 1 (before masking)" test $? -eq 9
client "$S" dave # back: out of this round's sum, he evaluates and ends with the others
cpids="$cpids $cpid"
wait_all 300
check "run with a client lost before masking completes" test $? -eq 0
check "lost before masking: the sum of 3 inputs" grep -q "the sum of 3 clients' inputs" "$S.log"
check "lost before masking: == loom sim --secagg over the 3 others, bit for bit" same "$S/global.safetensors" "$tmp/ref3/global.safetensors"
check "the others were told dave is out of phase 2 (survivors without him)" bash -c "! grep -q 'out of the secure round' '$S.alice.log'"

# ---- fewer than t live clients: the round is aborted with the documented message, the model kept
S="$tmp/s4"
register "$S"
start_server "$S" "$tmp/run1.json" --min-clients 2 --secagg-fit-timeout 3
cpids=""
for n in alice bob; do client "$S" $n; cpids="$cpids $cpid"; done
for _ in $(seq 1200); do grep -q 'secure aggregation aborted' "$S.log" && break; sleep 0.1; done
for n in carol dave; do client "$S" $n; cpids="$cpids $cpid"; done # too late for the round: they evaluate and end
wait_all 300
check "a run whose round aborted still ends (exit 0)" test $? -eq 0
check "abort message: phase 0, only 2 of the 3 clients needed" \
    grep -q 'round 1: secure aggregation aborted in phase 0: only 2 of the 3 clients needed' "$S.log"
check "the clients were told: 410 secagg_aborted" grep -q 'secagg_aborted' "$S.alice.log"
check "aborted round: the global model is not aggregated" grep -q '"accepted":0' "$S/metrics.jsonl"

# ---- a secure run refuses what it cannot carry
sed 's/"strategy": "fedavg"/"strategy": "fedavg", "compress": "fp16"/' "$tmp/run1.json" > "$tmp/runc.json"
register "$tmp/s5"
refuse "secure aggregation with compression is refused" 12 'secure aggregation' 'compress' -- \
    "$LOOM" server --state "$tmp/s5" --config "$tmp/runc.json" --listen 127.0.0.1:0
sed 's/"strategy": "fedavg"/"strategy": "fedavg", "mode": "fedasync"/' "$tmp/run1.json" > "$tmp/runa.json"
refuse "secure aggregation with an asynchronous mode is refused" 12 'secure aggregation' 'synchronous' -- \
    "$LOOM" server --state "$tmp/s5" --config "$tmp/runa.json" --listen 127.0.0.1:0
refuse "a phase timeout of 0 is refused, naming the flag" 12 'secagg-phase-timeout' -- \
    "$LOOM" server --state "$tmp/s5" --config "$tmp/run1.json" --secagg-phase-timeout 0
finish
