#!/usr/bin/env bash
# loom sim --decentralized end to end on a small text: outputs, determinism across worker counts, push-sum
# on a directed edge list, and the errors for impossible topologies.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/small.txt"
run=(sim --model tiny --data "$tmp/small.txt" --clients 5 --rounds 2 --local-steps 2 --batch 2 --seq 32 --seed 4
     --decentralized --quiet-clients --eval-every 0)
"$LOOM" "${run[@]}" --topology ring --gossip-steps 2 --out "$tmp/a" --workers 1 > "$tmp/a.out" 2> "$tmp/a.err"
check "decentralized sim exits 0" test $? -eq 0
check "2 round rows" test "$(grep -c '"type":"round"' "$tmp/a/metrics.jsonl")" -eq 2
check "5 peer rows a round" test "$(grep -c '"type":"peer"' "$tmp/a/metrics.jsonl")" -eq 10
check "consensus reported" grep -q '"round":2,.*"consensus":[0-9]' "$tmp/a/metrics.jsonl"
check "peer accuracy reported" grep -q '"round":2,.*"peer_acc_min":[0-9]' "$tmp/a/metrics.jsonl"
check "average model written" test -s "$tmp/a/global.safetensors"
check "each peer's model written" test -s "$tmp/a/peers/4.safetensors"
check "consensus plot" grep -q '<svg' "$tmp/a/consensus.svg"
check "summary" grep -q 'final consensus distance' "$tmp/a.out"
check "topology described" grep -q '5 peers on ring (10 directed edges, degree 2..2), 2 Metropolis-Hastings' "$tmp/a.err"
"$LOOM" "${run[@]}" --topology ring --gossip-steps 2 --out "$tmp/b" --workers 2 > /dev/null 2>&1
check "workers 1 == workers 2" cmp -s "$tmp/a/global.safetensors" "$tmp/b/global.safetensors"
check "peer 3: workers 1 == workers 2" cmp -s "$tmp/a/peers/3.safetensors" "$tmp/b/peers/3.safetensors"
# more gossip steps pull the peers closer together
"$LOOM" "${run[@]}" --topology ring --gossip-steps 20 --out "$tmp/c" > /dev/null 2>&1
c2=$(grep '"type":"round","round":2,' "$tmp/a/metrics.jsonl" | sed 's/.*"consensus":\([^,]*\),.*/\1/')
c20=$(grep '"type":"round","round":2,' "$tmp/c/metrics.jsonl" | sed 's/.*"consensus":\([^,]*\),.*/\1/')
check "20 gossip steps reach a smaller consensus distance than 2 ($c20 < $c2)" num_lt "$c20" "$c2"
# push-sum over a directed edge list
printf '# a directed ring with a chord\ndirected\n0 1\n1 2\n2 3\n3 4\n4 0\n0 3\n' > "$tmp/dir.txt"
"$LOOM" "${run[@]}" --topology "$tmp/dir.txt" --push-sum --gossip-steps 3 --out "$tmp/d" > /dev/null 2> "$tmp/d.err"
check "push-sum run exits 0" test $? -eq 0
check "push-sum described" grep -q '6 directed edges, degree 1..2), 3 push-sum' "$tmp/d.err"
refuse "directed topology without --push-sum" 1 -- "$LOOM" "${run[@]}" --topology "$tmp/dir.txt"
check "  ... names --push-sum" grep -q -- '--push-sum' "$tmp/refuse.err"
printf '0 1\n1 2\n3 4\n' > "$tmp/split.txt"
refuse "disconnected topology" 1 "disconnected" "2 components" -- "$LOOM" "${run[@]}" --topology "$tmp/split.txt"
printf '0 1\n1 7\n' > "$tmp/bad.txt"
refuse "bad edge names the file and line" 1 "bad.txt:2" "\[0, 5\)" -- "$LOOM" "${run[@]}" --topology "$tmp/bad.txt"
refuse "kregular with odd n K" 1 "--topology kregular:3" "even" -- "$LOOM" "${run[@]}" --topology kregular:3
refuse "missing topology file" 1 "--topology" "nofile.txt" -- "$LOOM" "${run[@]}" --topology "$tmp/nofile.txt"
refuse "--topology needs --decentralized" 1 "--topology" "--decentralized" -- \
    "$LOOM" sim --model tiny --data "$tmp/small.txt" --clients 5 --rounds 1 --topology full
refuse "--sample is refused" 1 "decentralized" "--sample" -- "$LOOM" "${run[@]}" --sample 2
echo '{"model": "tiny", "rounds": 1, "decentralized": true, "topology": "ring"}' > "$tmp/srv.json"
refuse "loom server refuses a decentralized RUN.json" 1 "--decentralized" "loom client --peers" -- \
    timeout 20 "$LOOM" server --state "$tmp/srv" --config "$tmp/srv.json"
refuse "a mixed run: --split-layer with --decentralized" 1 "decentralized" "--split-layer" -- "$LOOM" "${run[@]}" --peft lora --split-layer 1
refuse "--strategy fedadam is refused" 1 "decentralized" "--strategy" -- "$LOOM" "${run[@]}" --strategy fedadam
refuse "--gossip-steps out of range" 2 "--gossip-steps" -- "$LOOM" "${run[@]}" --gossip-steps -1
finish
