#!/usr/bin/env bash
# loom client --peers: three peers on loopback gossip over HTTPS on a ring and end with the same models
# as loom sim --decentralized with the same seeds and data (compared by the SHA-256 of their tensors);
# a peer's endpoint refuses unknown tokens and answers not-ready, gone and malformed queries; the peers
# file's errors name the file and line.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
mkdir -p "$tmp/cd"
head -c 12000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/p0.txt"
tail -c +12001 "$SHARED/data/tinyshakespeare/input.txt" | head -c 12000 > "$tmp/cd/p1.txt"
tail -c +24001 "$SHARED/data/tinyshakespeare/input.txt" | head -c 12000 > "$tmp/cd/p2.txt"
cat > "$tmp/run.json" <<'JSON'
{"model": "tiny", "rounds": 2, "local-steps": 2, "batch": 2, "seq": 32, "seed": 5, "topology": "ring",
 "gossip-steps": 2, "eval-every": 0, "sample-len": 0}
JSON
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --decentralized --quiet-clients --out "$tmp/sim" \
    > /dev/null 2> "$tmp/sim.err"
check "the decentralized simulation runs" test -s "$tmp/sim/peers/2.safetensors"
for i in 0 1 2; do od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$tmp/tok$i"; done
make_peers() { # three ports from a random base
    base=$((20000 + RANDOM % 30000))
    : > "$tmp/peers.txt"
    for i in 0 1 2; do
        sha=$(tr -d '\n' < "$tmp/tok$i" | sha256sum | cut -d' ' -f1)
        echo "p$i https://127.0.0.1:$((base + i)) $sha $tmp/w$i/tls/cert.pem" >> "$tmp/peers.txt"
    done
}
peer() { # INDEX [flags]
    local i=$1
    shift
    "$LOOM" client --peers "$tmp/peers.txt" --name "p$i" --token-file "$tmp/tok$i" --config "$tmp/run.json" \
        --data "$tmp/cd/p$i.txt" --work-dir "$tmp/w$i" --threads 1 --give-up 60 "$@"
}
for attempt in 1 2 3; do # another base when a port is taken
    make_peers
    pids=()
    for i in 0 1 2; do
        peer $i --give-up 20 > /dev/null 2> "$tmp/p$i.log" &
        pids+=($!)
    done
    ok=0
    for i in 0 1 2; do
        wait "${pids[$i]}" && ok=$((ok + 1))
    done
    [ $ok -eq 3 ] || ! grep -q "cannot listen" "$tmp"/p[012].log || continue
    break
done
check "three peers finish" test $ok -eq 3
for i in 0 1 2; do
    check "peer $i equals the simulated peer $i" test "$(st_data "$tmp/w$i/peer.safetensors")" = \
        "$(st_data "$tmp/sim/peers/$i.safetensors")"
done
check "a peer logs its gossip" grep -q "round 2: trained (loss [0-9.]*), 2 gossip steps with 2 neighbours" "$tmp/p1.log"
# on a ring of three every peer averages all three: a path 0 - 1 - 2 keeps the peers apart (the middle
# one weighs its ends by 1/3, an end its neighbour by 1/3 and itself by 2/3)
printf '0 1\n1 2\n' > "$tmp/path.txt"
sed "s|\"ring\"|\"$tmp/path.txt\"|" "$tmp/run.json" > "$tmp/run2.json"
"$LOOM" sim --config "$tmp/run2.json" --clients-dir "$tmp/cd" --decentralized --quiet-clients --out "$tmp/sim2" \
    > /dev/null 2>&1
pids=()
for i in 0 1 2; do
    peer $i --config "$tmp/run2.json" --out "$tmp/path$i.safetensors" > /dev/null 2> "$tmp/q$i.log" &
    pids+=($!)
done
ok=0
for i in 0 1 2; do
    wait "${pids[$i]}" && ok=$((ok + 1))
done
check "three peers on a path finish" test $ok -eq 3
for i in 0 1 2; do
    check "path: peer $i equals the simulated peer $i" test "$(st_data "$tmp/path$i.safetensors")" = \
        "$(st_data "$tmp/sim2/peers/$i.safetensors")"
done
check "path: the peers' models differ" test "$(st_data "$tmp/path0.safetensors")" != "$(st_data "$tmp/path1.safetensors")"
# one peer alone: it trains round 1, serves its step-0 vector and waits for its neighbours
rm -rf "$tmp/w0"
peer 0 --give-up 30 > /dev/null 2> "$tmp/alone.log" &
apid=$!
for _ in $(seq 100); do grep -q listening "$tmp/alone.log" 2> /dev/null && break; sleep 0.1; done
url="https://127.0.0.1:$base/v1/peer/vector"
code() { curl -s -o "$tmp/body" -w '%{http_code}' --cacert "$tmp/w0/tls/cert.pem" "$@"; }
check "no token: 401" test "$(code "$url?round=1&step=0")" = 401
check "an unknown token: 401" test "$(code -H "Authorization: Bearer $(printf '%064d' 0)" "$url?round=1&step=0")" = 401
auth="Authorization: Bearer $(cat "$tmp/tok1")"
for _ in $(seq 100); do [ "$(code -H "$auth" "$url?round=1&step=0")" = 200 ] && break; sleep 0.1; done
check "a neighbour's token: 200 with the vector" test "$(code -H "$auth" "$url?round=1&step=0")" = 200
check "  ... a safetensors body" test "$(st_data "$tmp/body" | wc -c)" -gt 60
check "a later step: 425 not_ready" test "$(code -H "$auth" "$url?round=2&step=1")" = 425
check "  ... with its code" grep -q not_ready "$tmp/body"
check "a step out of range: 400" test "$(code -H "$auth" "$url?round=1&step=7")" = 400
kill "$apid" 2> /dev/null
wait "$apid" 2> /dev/null
# the peers file's errors
sed '2s/ [0-9a-f]\{64\} / 12345 /' "$tmp/peers.txt" > "$tmp/bad.txt"
refuse "bad token hash names the file and line" 1 "bad.txt:2" "SHA-256" -- \
    "$LOOM" client --peers "$tmp/bad.txt" --name p0 --token-file "$tmp/tok0" --config "$tmp/run.json" \
    --data "$tmp/cd/p0.txt" --work-dir "$tmp/wb"
refuse "a name not in the peers file" 1 "--name zed" "peers file" -- \
    "$LOOM" client --peers "$tmp/peers.txt" --name zed --token-file "$tmp/tok0" --config "$tmp/run.json" \
    --data "$tmp/cd/p0.txt" --work-dir "$tmp/wb"
refuse "--peers with --server" 1 "--peers" "--server" -- \
    "$LOOM" client --peers "$tmp/peers.txt" --server https://127.0.0.1:1 --name p0 --token-file "$tmp/tok0"
finish
