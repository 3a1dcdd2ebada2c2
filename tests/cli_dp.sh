# loom dp: the accountant from the command line, against ../shared/reference/dp (the classic MNIST
# case and Opacus's unit test, read from the reference file), the inverse, and the refusals.
. "$(dirname "$0")/testlib.sh"
ref="$SHARED/reference/dp/rdp_reference.json"
flat=$(tr -d '\n ' < "$ref")
want=$(grep -o '"opacus_default_alphas":{[^}]*}' <<< "$flat")
want_eps=$(sed 's/.*"epsilon":\([0-9.e+-]*\).*/\1/' <<< "$want")
want_alpha=$(sed 's/.*"alpha":\([0-9.e+-]*\).*/\1/' <<< "$want")
q=$(grep -o '"classic":{[^}]*' <<< "$flat" | grep -o '"q":[0-9.e+-]*' | cut -d: -f2)
check "reference values read ($want_eps at $want_alpha, q $q)" test -n "$want_eps" -a -n "$want_alpha" -a -n "$q"
out=$("$LOOM" dp epsilon --q "$q" --sigma 1.1 --steps 14063 --delta 1e-5 --json)
check "classic case: epsilon and order as the reference ($out)" test "$out" = "{\"epsilon\": $want_eps, \"order\": $want_alpha}"
ou=$(grep -o '"opacus_unit_test":{[^}]*}' <<< "$flat")
ou_eps=$(sed 's/.*"epsilon":\([0-9.e+-]*\).*/\1/' <<< "$ou")
out=$("$LOOM" dp epsilon --q 0.04 --sigma 1.5 --steps 2250 --delta 1e-5 --json)
check "Opacus's unit test ($out)" test "$out" = "{\"epsilon\": $ou_eps, \"order\": 3.9}"
out=$("$LOOM" dp sigma --q "$q" --steps 14063 --delta 1e-5 --epsilon "$want_eps" --json)
sig=$(sed 's/.*"sigma": \([0-9.e+-]*\).*/\1/' <<< "$out")
check "the inverse gives back sigma 1.1 ($sig)" awk -v s="$sig" 'BEGIN { exit !(s > 1.0999999 && s < 1.1000001) }'
check "plain output names epsilon and the order" bash -c "'$LOOM' dp epsilon --q 0.01 --sigma 1 --steps 100 | grep -q 'epsilon .* (RDP order'"
refuse "q above 1" 12 '--q' -- "$LOOM" dp epsilon --q 2 --sigma 1 --steps 10
refuse "no sigma" 12 '--sigma' -- "$LOOM" dp epsilon --q 0.1 --steps 10
refuse "no target" 12 '--epsilon' -- "$LOOM" dp sigma --q 0.1 --steps 10
refuse "unreachable target" 12 'noise multiplier' -- "$LOOM" dp sigma --q 1 --steps 1000000000 --epsilon 0.001
refuse "unknown subcommand" 12 'usage' -- "$LOOM" dp budget
check "dp --help" "$LOOM" dp --help > /dev/null

# ---- client-level DP in loom sim (docs/privacy-dp.md) ----
export LOOM_SHARED=$SHARED
cat > "$tmp/cfg.json" <<'JSON'
{"model": "tiny", "rounds": 3, "sample": 4, "local-steps": 1, "batch": 2, "seq": 32, "eval-every": 3,
 "eval-clients": 2, "sample-len": 0, "seed": 3}
JSON
# epsilon of round R of a run's metrics, and loom dp epsilon's for the same q, sigma, steps
row_eps() { grep "\"type\":\"round\",\"round\":$2," "$1/metrics.jsonl" | grep -o '"epsilon":[^,]*' | cut -d: -f2; }
cli_eps() { "$LOOM" dp epsilon --q "$1" --sigma "$2" --steps "$3" --delta "$4" --json | sed 's/.*"epsilon": \([^,]*\),.*/\1/'; }
"$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 0.5 --dp-noise 0.8 --out "$tmp/c" > "$tmp/c.out" 2>&1
check "central DP run" test -s "$tmp/c/global.safetensors"
N=$(sed -n 's/^clients *\([0-9]*\) (4 per round)/\1/p' "$tmp/c.out")
q=$(awk -v n="$N" 'BEGIN { printf "%.17g", 4 / n }')
for r in 1 2 3; do
    got=$(row_eps "$tmp/c" $r) want=$(cli_eps "$q" 0.8 $r 1e-5)
    check "central: round $r epsilon $got = loom dp epsilon --q 4/$N --sigma 0.8 --steps $r ($want)" test -n "$got" -a "$got" = "$want"
done
check "central: every round row has dp_clip 0.5" test "$(grep -c '"type":"round".*"dp_clip":0.5,' "$tmp/c/metrics.jsonl")" = 3
# local: q = 1, sigma / 2 (replacement of a client's data: sensitivity 2 S), one release per round
"$LOOM" sim --config "$tmp/cfg.json" --dp local --dp-clip 0.5 --dp-noise 3 --dp-delta 1e-3 --out "$tmp/l" > /dev/null 2>&1
got=$(row_eps "$tmp/l" 3) want=$(cli_eps 1 1.5 3 1e-3)
check "local: round 3 epsilon $got = loom dp epsilon --q 1 --sigma 1.5 --steps 3 --delta 1e-3 ($want)" test -n "$got" -a "$got" = "$want"
check "local: every client's norm is that of a clipped-and-noised update" \
    awk -F'"update_norm":' '/"type":"client"/ { split($2, a, ","); if (a[1] + 0 < 100) bad = 1 } END { exit bad }' "$tmp/l/metrics.jsonl"
check "local and central differ" bash -c "! cmp -s '$tmp/l/global.safetensors' '$tmp/c/global.safetensors'"
# sgd: the worst client's example-level epsilon, q = batch / its examples, local steps x rounds
mkdir -p "$tmp/cd"
head -c 20000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/carol.txt"
tail -c 9000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
"$LOOM" sim --config "$tmp/cfg.json" --clients-dir "$tmp/cd" --sample 2 --dp sgd --dp-clip 1 --dp-noise 1.1 --out "$tmp/s" > /dev/null 2>&1
fewest=$(grep '"type":"client","round":1,' "$tmp/s/metrics.jsonl" | sed 's/.*"examples":\([0-9]*\).*/\1/' | sort -n | head -1)
qs=$(awk -v n="$fewest" 'BEGIN { printf "%.17g", 2 / n }')
got=$(row_eps "$tmp/s" 2) want=$(cli_eps "$qs" 1.1 2 1e-5)
check "sgd: round 2 epsilon $got = loom dp epsilon --q 2/$fewest --sigma 1.1 --steps 2 ($want)" test -n "$got" -a "$got" = "$want"
# the budget: refused before round 1, naming the round it runs out at and the knobs; the knob works
refuse "budget exceeded" 12 '--dp-epsilon 2.6' 'runs out at round 2' 'raise --dp-noise to' 'lower --rounds to 1' -- \
    "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 0.5 --dp-noise 0.8 --dp-epsilon 2.6 --out "$tmp/b"
check "a refused run wrote no metrics" test ! -s "$tmp/b/metrics.jsonl"
sig=$(grep -o 'raise --dp-noise to [0-9.e+-]*' "$tmp/refuse.err" | awk '{ print $4 }')
"$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 0.5 --dp-noise "$sig" --dp-epsilon 2.6 --out "$tmp/b2" > /dev/null 2> "$tmp/b2.err"
check "the --dp-noise $sig it names fits the budget" test $? -eq 0
check "and the last round's epsilon is within it ($(row_eps "$tmp/b2" 3))" awk -v e="$(row_eps "$tmp/b2" 3)" 'BEGIN { exit !(e > 2.59 && e <= 2.6) }'
refuse "local budget" 12 'raise --dp-noise' -- "$LOOM" sim --config "$tmp/cfg.json" --dp local --dp-clip 1 --dp-noise 1 --dp-epsilon 2
# adaptive clipping: dp_clip moves; a resumed run continues it exactly
"$LOOM" sim --config "$tmp/cfg.json" --rounds 3 --dp central --dp-clip 0.05 --dp-noise 0.5 --dp-adaptive-clip 0.5 --dp-clip-noise 1 \
    --checkpoint-every 1 --out "$tmp/a" > /dev/null 2>&1
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --dp central --dp-clip 0.05 --dp-noise 0.5 --dp-adaptive-clip 0.5 --dp-clip-noise 1 \
    --checkpoint-every 1 --out "$tmp/a2" > /dev/null 2>&1
"$LOOM" sim --config "$tmp/cfg.json" --rounds 3 --dp central --dp-clip 0.05 --dp-noise 0.5 --dp-adaptive-clip 0.5 --dp-clip-noise 1 \
    --checkpoint-every 1 --out "$tmp/a2" --resume > /dev/null 2>&1
clips() { grep '"type":"round"' "$1/metrics.jsonl" | grep -o '"dp_clip":[^,]*' | cut -d: -f2 | tr '\n' ' '; }
ca=$(clips "$tmp/a") cb=$(clips "$tmp/a2")
check "adaptive: the clip moves ($ca)" test "$(echo $ca | tr ' ' '\n' | sort -u | wc -l)" = 3
check "adaptive: resumed clips = uninterrupted ($cb)" test "$ca" = "$cb"
check "adaptive: resumed model = uninterrupted" test "$(st_data "$tmp/a/global.safetensors")" = "$(st_data "$tmp/a2/global.safetensors")"
# refused combinations
refuse "central without a clip" 12 '--dp-clip' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-noise 1
refuse "no noise given" 12 '--dp-noise' -- "$LOOM" sim --config "$tmp/cfg.json" --dp local --dp-clip 1
refuse "a DP flag without --dp" 12 '--dp-noise' 'needs --dp' -- "$LOOM" sim --config "$tmp/cfg.json" --dp-noise 1
refuse "unknown mode" 12 '--dp' 'sgd, central or local' -- "$LOOM" sim --config "$tmp/cfg.json" --dp centre --dp-clip 1 --dp-noise 1
refuse "asynchronous mode" 12 '--mode sync' -- "$LOOM" sim --config "$tmp/cfg.json" --mode fedasync --dp central --dp-clip 1 --dp-noise 1
refuse "scaffold" 12 'scaffold' -- "$LOOM" sim --config "$tmp/cfg.json" --strategy scaffold --dp central --dp-clip 1 --dp-noise 1
refuse "adaptive clipping in local mode" 12 '--dp-adaptive-clip' 'central only' -- "$LOOM" sim --config "$tmp/cfg.json" --dp local --dp-clip 1 --dp-noise 1 --dp-adaptive-clip 0.5
refuse "a quantile out of range" 12 '--dp-adaptive-clip' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 1 --dp-noise 0.1 --dp-adaptive-clip 1.5
refuse "too little count noise" 12 'sigma_b' '--dp-clip-noise' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 1 --dp-noise 1 --dp-adaptive-clip 0.5
refuse "a noise that is not a number" 12 '--dp-noise' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 1 --dp-noise abc
refuse "delta out of range" 12 '--dp-delta' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 1 --dp-noise 1 --dp-delta 2
refuse "two server clips" 12 '--update-clip' -- "$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 1 --dp-noise 1 --update-clip 2
refuse "resume without the run's --dp" 12 'dp is central' -- "$LOOM" sim --config "$tmp/cfg.json" --rounds 5 --checkpoint-every 1 --out "$tmp/a" --resume
# the keys of a server's RUN.json are the same
printf '{"model": "tiny", "rounds": 2, "dp": "sgd", "dp-clip": 1, "dp-noise": 1.0}\n' > "$tmp/run.json"
refuse "server: --dp sgd needs the fewest examples" 12 '--dp-min-examples' -- "$LOOM" server --state "$tmp/st" --config "$tmp/run.json"
printf '{"model": "tiny", "rounds": 2, "dp": "central", "dp-noise": 1.0}\n' > "$tmp/run.json"
refuse "server: RUN.json central without a clip" 12 '--dp-clip' -- "$LOOM" server --state "$tmp/st" --config "$tmp/run.json"
# ---- over the network: loom server with the same RUN.json keys; its clients privatize as loom sim's do
mkdir -p "$tmp/nd"
head -c 16000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/nd/alice.txt"
tail -c 14000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/nd/bob.txt"
net_run() { # MODE STATE: a networked run of RUN.json $tmp/$MODE.json, then loom sim --clients-dir on it
    local st=$2 port spid cpids="" ok=1
    "$LOOM" server add-client --state "$st" alice > "$st.alice" 2> /dev/null &&
        "$LOOM" server add-client --state "$st" bob > "$st.bob" 2> /dev/null || return 1
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$LOOM" server --state "$st" --config "$tmp/$1.json" --listen "127.0.0.1:$port" --poll-ms 50 >> "$st.log" 2>&1 &
        spid=$!
        for _ in $(seq 100); do
            grep -q "listening on port" "$st.log" 2> /dev/null && break 2
            kill -0 $spid 2> /dev/null || break
            sleep 0.1
        done
    done
    for n in alice bob; do
        "$LOOM" client --server "https://127.0.0.1:$port" --name $n --token-file "$st.$n" --ca-cert "$st/tls/cert.pem" \
            --data "$tmp/nd/$n.txt" --work-dir "$st.w$n" --threads 1 > /dev/null 2>> "$st.$n.log" &
        cpids="$cpids $!"
    done
    local t=0
    while kill -0 $spid 2> /dev/null && [ $t -lt 1200 ]; do sleep 0.1; t=$((t + 1)); done
    kill -0 $spid 2> /dev/null && { kill -9 $spid; ok=0; }
    wait $spid || ok=0
    for p in $cpids; do wait $p || ok=0; done
    "$LOOM" sim --config "$tmp/$1.json" --clients-dir "$tmp/nd" --out "$st.sim" > /dev/null 2>&1 || ok=0
    [ $ok = 1 ]
}
for mode in local central; do
    printf '{"model": "tiny", "rounds": 1, "local-steps": 2, "batch": 4, "seq": 32, "seed": 5, "sample-len": 0,
 "dp": "%s", "dp-clip": 0.5, "dp-noise": 0.7, "dp-delta": 1e-4}\n' $mode > "$tmp/$mode.json"
    net_run $mode "$tmp/n$mode"
    check "network, --dp $mode: the run completes and loom sim --clients-dir runs" test $? -eq 0
    check "network, --dp $mode: the server's model = loom sim --clients-dir's, bit for bit" \
        test "$(st_data "$tmp/n$mode/global.safetensors")" = "$(st_data "$tmp/n$mode.sim/global.safetensors")"
    got=$(row_eps "$tmp/n$mode" 1) want=$(row_eps "$tmp/n$mode.sim" 1)
    check "network, --dp $mode: epsilon of round 1 in the server's metrics ($got) = the simulator's ($want)" test -n "$got" -a "$got" = "$want"
done
check "network: local epsilon = loom dp epsilon --q 1 --sigma 0.35 --steps 1" test "$(row_eps "$tmp/nlocal" 1)" = "$(cli_eps 1 0.35 1 1e-4)"
check "network: central epsilon = loom dp epsilon --q 1 --sigma 0.7 --steps 1" test "$(row_eps "$tmp/ncentral" 1)" = "$(cli_eps 1 0.7 1 1e-4)"
finish
