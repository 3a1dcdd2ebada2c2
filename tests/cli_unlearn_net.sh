#!/usr/bin/env bash
# loom unlearn --state: a server keeps the round membership (state.db, table members) and start
# checkpoints (--keep-checkpoints); unlearning carol gives a state that loom server continues with the
# remaining clients from the kept checkpoint before carol first joined, and the result equals loom sim
# over the same files with carol removed from the population, bit for bit.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
IN=$SHARED/data/tinyshakespeare/input.txt
mkdir -p "$tmp/cd"
head -c 12000 "$IN" > "$tmp/cd/alice.txt"
head -c 24000 "$IN" | tail -c 12000 > "$tmp/cd/bob.txt"
head -c 36000 "$IN" | tail -c 12000 > "$tmp/cd/carol.txt"
# 2 of 3 clients a round; with seed 7 carol first joins in round 2 (rounds 1, 2, 3 sample ab, ac, ac)
cat > "$tmp/run.json" << 'EOF'
{"model": "tiny", "rounds": 3, "sample": 2, "local-steps": 2, "batch": 2, "seq": 32, "seed": 7, "eval-every": 3,
 "strategy": "fedavg", "sample-len": 0}
EOF

start_server() { # STATE [flags]: on a free port (sets $port, $spid; log in STATE.log)
    local st=$1
    shift
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$LOOM" server --state "$st" --config "$tmp/run.json" --listen "127.0.0.1:$port" --poll-ms 100 "$@" >> "$st.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do
            grep -q "listening on port" "$st.log" 2> /dev/null && return 0
            kill -0 $spid 2> /dev/null || break
            sleep 0.1
        done
    done
    return 1
}
start_clients() { # STATE ORIGINAL NAMES...: one client process each (the original state's tokens and
    local st=$1 tok=$2 # work directories: a client keeps its own state there), their pids in $cpids
    shift 2
    cpids=""
    for n in "$@"; do
        "$LOOM" client --server "https://127.0.0.1:$port" --name "$n" --token-file "$tok.$n" --ca-cert "$st/tls/cert.pem" \
            --data "$tmp/cd/$n.txt" --work-dir "$tok.w$n" --threads 1 > /dev/null 2>> "$st.$n.log" &
        cpids="$cpids $!"
    done
}
wait_all() { # the server and the clients, at most $1 seconds
    local t=0
    while kill -0 $spid 2> /dev/null && [ $t -lt $(($1 * 10)) ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 $spid 2> /dev/null && { kill -9 $spid; return 1; }
    wait $spid
    local st=$?
    for p in $cpids; do
        t=0
        while kill -0 $p 2> /dev/null && [ $t -lt 300 ]; do sleep 0.1; t=$((t + 1)); done
        kill -0 $p 2> /dev/null && { kill -9 $p; st=1; }
        wait $p || st=1
    done
    return $st
}

S="$tmp/s1"
for n in alice bob carol; do "$LOOM" server add-client --state "$S" $n > "$S.$n" 2> /dev/null; done
start_server "$S" --keep-checkpoints 1
check "server starts" test $? -eq 0
start_clients "$S" "$S" alice bob carol
wait_all 300
check "networked run with three clients completes" test $? -eq 0
check "start checkpoints kept" test -s "$S/unlearn/start_000002.safetensors" -a -s "$S/unlearn/start_000003.safetensors"
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --out "$tmp/sim3" > /dev/null 2>&1
check "the networked run == loom sim (the setting holds)" test "$(st_data "$S/global.safetensors")" = "$(st_data "$tmp/sim3/global.safetensors")"

"$LOOM" unlearn --client carol --state "$S" --out "$tmp/s2" > "$tmp/u.out" 2> "$tmp/u.err"
check "loom unlearn --state exits 0" test $? -eq 0
check "carol first joined in round 2" grep -Eq 'first contributed in round +2' "$tmp/u.out"
check "restart at round 2, from its checkpoint" grep -Eq 'restart at round +2 .*kept checkpoint' "$tmp/u.out"
check "the new state holds round 2's start as its checkpoint" cmp -s "$tmp/s2/checkpoint.safetensors" "$S/unlearn/start_000002.safetensors"
check "the original state is untouched" test ! -e "$S/removed"
# the restarted server with alice and bob only (carol's token is revoked) retrains rounds 2 and 3; they
# start round 2 from the state they had kept for it (their data positions)
start_server "$tmp/s2"
check "the restarted server starts" test $? -eq 0
start_clients "$tmp/s2" "$S" alice bob
wait_all 300
check "the retrain completes without carol" test $? -eq 0
check "it resumed at round 2" grep -q 'resuming at round 2' "$tmp/s2.log"
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --exclude-client carol --out "$tmp/simx" > /dev/null 2>&1
check "server unlearning == loom sim without carol, bit for bit" \
    test -s "$tmp/s2/global.safetensors" -a "$(st_data "$tmp/s2/global.safetensors")" = "$(st_data "$tmp/simx/global.safetensors")"
check "and differs from the original" test "$(st_data "$tmp/s2/global.safetensors")" != "$(st_data "$S/global.safetensors")"
refuse "unknown client" 1 "--client 'dave'" 'not a client' -- "$LOOM" unlearn --client dave --state "$S" --out "$tmp/s3"
refuse "approx on a server state" 1 '--state' 'exact' -- "$LOOM" unlearn --client carol --state "$S" --mode approx --out "$tmp/s4"
refuse "out already a state" 1 '--out' 'already holds' -- "$LOOM" unlearn --client carol --state "$S" --out "$tmp/s2"
finish
