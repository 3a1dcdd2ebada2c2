# loom server and loom client on loopback, with TLS and tokens: a networked run equals loom sim
# --clients-dir bit for bit; kill -9 of the server at several points changes nothing; credentials,
# bad bodies and replays are refused with the protocol's status and error code; no training text
# reaches the server.
. "$(dirname "$0")/testlib.sh"

mkdir -p "$tmp/cd"
head -c 16000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
tail -c 14000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/bob.txt"
secret=$(sed -n 5p "$tmp/cd/alice.txt")
cat > "$tmp/run.json" << 'EOF'
{"model": "tiny", "rounds": 2, "local-steps": 2, "batch": 4, "seq": 32, "seed": 5, "eval-every": 1,
 "strategy": "fedavg", "sample-len": 0}
EOF

# the reference: the simulator over the same files
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --out "$tmp/ref" > /dev/null 2> "$tmp/ref.err"
check "reference simulation" test -s "$tmp/ref/global.safetensors"

register() { # STATE: alice, bob and an administrator
    "$LOOM" server add-client --state "$1" alice > "$1.alice" 2> /dev/null &&
        "$LOOM" server add-client --state "$1" bob > "$1.bob" 2> /dev/null &&
        "$LOOM" server add-client --state "$1" --admin ops > "$1.ops" 2> /dev/null
}

# start_server STATE [flags]: starts it on a free port (sets $port, $spid; log in STATE.log)
start_server() {
    local st=$1
    shift
    for _ in 1 2 3 4 5; do
        port=${port_fixed:-$((20000 + RANDOM % 30000))}
        "$LOOM" server --state "$st" --config "$tmp/run.json" --listen "127.0.0.1:$port" "$@" >> "$st.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do
            grep -q "listening on port" "$st.log" 2> /dev/null && return 0
            kill -0 $spid 2> /dev/null || break
            sleep 0.1
        done
        [ -n "${port_fixed:-}" ] && return 1
    done
    return 1
}

start_clients() { # STATE: one client process per file, their pids in $cpids
    cpids=""
    for n in alice bob; do
        "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$1.$n" --ca-cert "$1/tls/cert.pem" \
            --data "$tmp/cd/$n.txt" --work-dir "$1.w$n" --threads 1 > /dev/null 2>> "$1.$n.log" &
        cpids="$cpids $!"
    done
}

wait_all() { # waits for the server and the clients (at most $1 seconds)
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

# ---- a networked run: server + 2 clients, TLS with the generated development certificate, tokens
S="$tmp/s1"
check "register clients" register "$S"
check "a token is 64 hex digits alone on stdout" grep -Eqx '[0-9a-f]{64}' "$S.alice"
check "state database is private" test "$(stat -c %a "$S/state.db")" = 600
LOOM_NET_TRACE="$tmp/trace" start_server "$S"
check "server starts" test $? -eq 0
check "server warns about its development certificate" grep -qi "self-signed" "$S.log"
check "certificate written" test -s "$S/tls/cert.pem"
check "TLS key private" test "$(stat -c %a "$S/tls/key.pem")" = 600
# credentials (curl speaks to the same server; the protocol's error codes in JSON bodies)
code() { curl -s -o "$tmp/body" -w '%{http_code}' --cacert "$S/tls/cert.pem" "$@"; }
check "no token: 401" test "$(code "https://127.0.0.1:$port/v1/task")" = 401
check "401 body names the error" grep -q '"error"' "$tmp/body"
check "unknown token: 401" test "$(code -H "Authorization: Bearer $(printf '%064d' 0)" "https://127.0.0.1:$port/v1/task")" = 401
check "a client may not read the status: 403" \
    test "$(code -H "Authorization: Bearer $(cat "$S.alice")" "https://127.0.0.1:$port/v1/status")" = 403
check "the administrator may: 200" \
    test "$(code -H "Authorization: Bearer $(cat "$S.ops")" "https://127.0.0.1:$port/v1/status")" = 200
check "status is JSON with the run id" grep -q '"run_id"' "$tmp/body"
check "hello as another client: 403" test "$(code -H "Authorization: Bearer $(cat "$S.alice")" \
    -H 'Content-Type: application/json' -d '{"name":"bob"}' "https://127.0.0.1:$port/v1/hello")" = 403
check "403 says wrong_client" grep -q 'wrong_client' "$tmp/body"
check "garbage upload: 400" test "$(code -H "Authorization: Bearer $(cat "$S.alice")" -H 'Idempotency-Key: k1' \
    --data-binary 'not a safetensors file' "https://127.0.0.1:$port/v1/update")" = 400
check "400 says bad_request" grep -q 'bad_request' "$tmp/body"
head -c 10000000 /dev/zero > "$tmp/big"
check "oversized upload: 413" test "$(code -H "Authorization: Bearer $(cat "$S.alice")" -H 'Idempotency-Key: k2' \
    --data-binary @"$tmp/big" "https://127.0.0.1:$port/v1/update")" = 413
check "plain HTTP is refused" bash -c "! curl -s --max-time 5 http://127.0.0.1:$port/v1/task > /dev/null"
start_clients "$S"
wait_all 300
check "networked run completes (server and both clients exit 0)" test $? -eq 0
check "server wrote the global model" test -s "$S/global.safetensors"
check "networked run == loom sim --clients-dir, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"
check "server metrics: 2 round rows" test "$(grep -c '"type":"round"' "$S/metrics.jsonl")" -eq 2
check "same round rows as the simulator's (accepted counts)" \
    test "$(grep -o '"accepted":[0-9]*' "$S/metrics.jsonl" | tr '\n' ' ')" = "$(grep -o '"accepted":[0-9]*' "$tmp/ref/metrics.jsonl" | tr '\n' ' ')"
check "every request body was traced (hello, uploads)" bash -c "grep -aq '\"name\":\"alice\"' '$tmp/trace' && grep -aq 'POST /v1/update' '$tmp/trace'"
check "no training text in any request body" bash -c "! grep -qF -- '$secret' '$tmp/trace'"
check "no training text in the server's state" bash -c "! grep -rqF -- '$secret' '$S'"
check "update files private" bash -c "test -z \"\$(find '$S/updates' -type f ! -perm 600)\""

# ---- FLTrust: the server trains on its own root data each round; a networked run == loom sim, bit for bit
ft=(--aggregator fltrust --root-data "$tmp/cd/alice.txt" --root-examples 40)
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" "${ft[@]}" --out "$tmp/ftref" > /dev/null 2>&1
check "fltrust simulation with --root-data" test -s "$tmp/ftref/global.safetensors"
check "fltrust differs from fedavg" test "$(st_data "$tmp/ftref/global.safetensors")" != "$(st_data "$tmp/ref/global.safetensors")"
S="$tmp/sft"
register "$S"
start_server "$S" "${ft[@]}"
start_clients "$S"
wait_all 300
check "networked fltrust run completes" test $? -eq 0
check "networked fltrust == loom sim --clients-dir --root-data, bit for bit" test -s "$S/global.safetensors" -a "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ftref/global.safetensors")"
refuse "fltrust server without root data" 12 'fltrust' '--root-data' -- "$LOOM" server --state "$tmp/sft2" --config "$tmp/run.json" --aggregator fltrust

# ---- kill -9 of the server at several points; the same command continues; the result is unchanged
S="$tmp/s2"
register "$S"
port_fixed=$((20000 + RANDOM % 30000))
start_server "$S" || { port_fixed=$((20000 + RANDOM % 30000)); start_server "$S"; }
start_clients "$S"
kills=0
for after in 1 2 3; do # kill after the 1st, 2nd and 3rd acknowledged update
    for _ in $(seq 600); do
        [ "$(grep -c ': update: client' "$S.log" 2> /dev/null)" -ge $after ] && break
        kill -0 $spid 2> /dev/null || break
        sleep 0.1
    done
    if kill -0 $spid 2> /dev/null; then
        kill -9 $spid
        wait $spid 2> /dev/null
        kills=$((kills + 1))
        start_server "$S"
    fi
done
check "killed the server 3 times ($kills)" test $kills -eq 3
wait_all 300
check "run survives kill -9 (exit 0)" test $? -eq 0
check "after 3 kills == loom sim, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"
check "restart with another configuration is refused" bash -c "sed 's/\"rounds\": 2/\"rounds\": 4/' '$tmp/run.json' > '$tmp/run4.json' &&
    ! '$LOOM' server --state '$S' --config '$tmp/run4.json' --listen 127.0.0.1:0 2> '$tmp/r4.err' && grep -qi 'rounds' '$tmp/r4.err'"

# ---- kill -9 of a client right after it trained (before or while it uploads), twice; started again
# with the same command it sends the same update: the result is still the simulator's, bit for bit
S="$tmp/s6"
register "$S"
unset port_fixed
start_server "$S"
start_clients "$S"
read -r alice_pid bob_pid <<< "$cpids"
ckills=0
for after in 1 2; do
    for _ in $(seq 600); do
        [ "$(grep -c 'trained' "$S.alice.log" 2> /dev/null)" -ge $after ] && break
        sleep 0.05
    done
    if kill -0 "$alice_pid" 2> /dev/null; then
        kill -9 "$alice_pid"
        wait "$alice_pid" 2> /dev/null
        ckills=$((ckills + 1))
        "$LOOM" client --server "https://127.0.0.1:$port" --name alice --token-file "$S.alice" --ca-cert "$S/tls/cert.pem" \
            --data "$tmp/cd/alice.txt" --work-dir "$S.walice" --threads 1 > /dev/null 2>> "$S.alice.log" &
        alice_pid=$!
    fi
done
cpids="$alice_pid $bob_pid"
check "killed a client twice ($ckills)" test $ckills -eq 2
wait_all 300
check "run survives clients killed with kill -9 (exit 0)" test $? -eq 0
check "after clients killed with kill -9 == loom sim, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"
# a client that dies after training round 2 and before its upload trains round 2 again from the same state
S="$tmp/s7"
register "$S"
start_server "$S"
LOOM_TEST_CRASH_AFTER_FIT=2 "$LOOM" client --server "https://127.0.0.1:$port" --name alice --token-file "$S.alice" \
    --ca-cert "$S/tls/cert.pem" --data "$tmp/cd/alice.txt" --work-dir "$S.walice" --threads 1 > /dev/null 2>> "$S.alice.log" &
alice_pid=$!
"$LOOM" client --server "https://127.0.0.1:$port" --name bob --token-file "$S.bob" --ca-cert "$S/tls/cert.pem" \
    --data "$tmp/cd/bob.txt" --work-dir "$S.wbob" --threads 1 > /dev/null 2>> "$S.bob.log" &
bob_pid=$!
wait $alice_pid
check "the client died after training round 2" test $? -eq 9
"$LOOM" client --server "https://127.0.0.1:$port" --name alice --token-file "$S.alice" --ca-cert "$S/tls/cert.pem" \
    --data "$tmp/cd/alice.txt" --work-dir "$S.walice" --threads 1 > /dev/null 2>> "$S.alice.log" &
cpids="$! $bob_pid"
wait_all 300
check "run survives a client dying between training and upload (exit 0)" test $? -eq 0
check "a client retrained after dying: == loom sim, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/ref/global.safetensors")"

# ---- compressed updates (top-k with error feedback): the networked run still equals the simulator's
sed 's/"strategy": "fedavg"/"strategy": "fedavg", "compress": "topk:0.05"/' "$tmp/run.json" > "$tmp/runc.json"
"$LOOM" sim --config "$tmp/runc.json" --clients-dir "$tmp/cd" --out "$tmp/refc" > /dev/null 2>&1
S="$tmp/s4"
register "$S"
unset port_fixed
cp "$tmp/runc.json" "$tmp/run.json.c" && cp "$tmp/run.json" "$tmp/run.json.plain" && cp "$tmp/runc.json" "$tmp/run.json"
start_server "$S"
start_clients "$S"
wait_all 300
check "compressed networked run completes" test $? -eq 0
check "compressed: networked == loom sim --compress, bit for bit" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/refc/global.safetensors")"
check "compressed: fewer bytes up than f32" test "$(grep -o '"bytes_up":[0-9.e+]*' "$S/metrics.jsonl" | head -1 | cut -d: -f2 | cut -d. -f1)" -lt 6000000
cp "$tmp/run.json.plain" "$tmp/run.json"

# ---- asynchronous modes over the network: FedAsync and FedBuff run to their last version
for mode in fedasync fedbuff; do
    sed "s/\"strategy\": \"fedavg\"/\"strategy\": \"fedavg\", \"mode\": \"$mode\", \"buffer\": 2, \"concurrency\": 2, \"staleness\": \"poly:0.5\"/" \
        "$tmp/run.json.plain" > "$tmp/run.json"
    S="$tmp/s5$mode"
    register "$S"
    start_server "$S"
    start_clients "$S"
    wait_all 300
    check "$mode: networked run completes" test $? -eq 0
    check "$mode: one row per version" test "$(grep -c '"type":"round"' "$S/metrics.jsonl")" -eq 2
    check "$mode: rows carry the version and staleness" grep -q '"staleness_max"' "$S/metrics.jsonl"
    check "$mode: the last version is evaluated" grep -q '"eval_loss"' "$S/metrics.jsonl"
    check "$mode: global model written" test -s "$S/global.safetensors"
    check "$mode: hello says the mode" grep -q "$mode" "$S.log" 
done
refuse "an asynchronous run does not resume" 12 'asynchronous' 'new --state' -- \
    "$LOOM" server --state "$tmp/s5fedbuff" --config "$tmp/run.json" --listen 127.0.0.1:0
cp "$tmp/run.json.plain" "$tmp/run.json"

# ---- registry refusals
refuse "add-client: bad name" 12 'name' -- "$LOOM" server add-client --state "$tmp/s3" '../evil'
refuse "add-client: twice" 12 'alice' -- "$LOOM" server add-client --state "$tmp/s1" alice
refuse "revoke-client: unknown" 12 'nobody' -- "$LOOM" server revoke-client --state "$tmp/s1" nobody
"$LOOM" server revoke-client --state "$tmp/s1" bob 2> /dev/null
check "revoke-client" test $? -eq 0
refuse "server without --state" 12 'state' -- "$LOOM" server --config "$tmp/run.json"
refuse "client with http://" 12 'https' -- "$LOOM" client --server "http://127.0.0.1:1" --name a --token-file "$tmp/s1.alice" --data "$tmp/cd/alice.txt"
refuse "client: missing token file" 12 'token' -- "$LOOM" client --server "https://127.0.0.1:1" --name a --token-file "$tmp/none" --data "$tmp/cd/alice.txt"
check "server --help" "$LOOM" server --help > /dev/null
check "client --help" "$LOOM" client --help > /dev/null
finish
