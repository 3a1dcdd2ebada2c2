#!/usr/bin/env bash
# The output modes of the long commands (src/cli/progress.c): plain progress lines when stderr is a
# file, one line redrawn in place on a terminal, --quiet (errors only), --json (one JSON object per line
# on stdout, its numbers those of metrics.jsonl), and --quiet with --json refused.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
TXT="$SHARED/data/tinyshakespeare/input.txt"
SIM=(sim --model tiny --rounds 3 --sample 3 --local-steps 1 --batch 1 --seq 8 --eval-every 1 --eval-clients 2 --sample-len 0 --seed 2)

# piped: a plain line per round, no carriage return, no terminal escape
"$LOOM" "${SIM[@]}" --out "$tmp/a" > "$tmp/a.out" 2> "$tmp/a.err"
check "sim exits 0" test $? -eq 0
check "a line per round" test "$(grep -c '^  round    [123]/3  train loss' "$tmp/a.err")" -eq 3
check "no carriage return" bash -c "! grep -q $'\r' '$tmp/a.err'"
check "no escape sequence" bash -c "! grep -q $'\033' '$tmp/a.err'"
check "the summary on stdout" grep -q 'final eval accuracy' "$tmp/a.out"
# the round line's train loss is the metrics row's
want=$(grep '"type":"round","round":2,' "$tmp/a/metrics.jsonl" | sed 's/.*"train_loss":\([-0-9.e]*\).*/\1/')
check "round 2's train loss in its line" grep -q "round    2/3  train loss $(printf '%.4f' "$want")" "$tmp/a.err"

# --json: stdout is JSON lines only: a progress object per round, then one result
"$LOOM" "${SIM[@]}" --out "$tmp/j" --json > "$tmp/j.out" 2> "$tmp/j.err"
check "sim --json exits 0" test $? -eq 0
check "every stdout line is a JSON object" awk '!/^\{"type":"(progress|result)","cmd":"sim",.*\}$/ { bad = 1 } END { exit bad || NR == 0 }' "$tmp/j.out"
check "three progress objects" test "$(grep -c '"type":"progress"' "$tmp/j.out")" -eq 3
check "one result" test "$(grep -c '"type":"result"' "$tmp/j.out")" -eq 1
check "rounds numbered 1..3" test "$(grep -o '"round":[0-9]*' "$tmp/j.out" | tr '\n' ' ')" = '"round":1 "round":2 "round":3 '
check "python's json reads every line" python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$tmp/j.out"
# the result's accuracy is the last round row's eval_acc (to the 6 digits both print)
acc_m=$(grep '"type":"round","round":3,' "$tmp/j/metrics.jsonl" | sed 's/.*"eval_acc":\([-0-9.e]*\).*/\1/')
acc_j=$(grep '"type":"result"' "$tmp/j.out" | sed 's/.*"eval_acc":\([-0-9.e]*\).*/\1/')
check "result eval_acc = metrics eval_acc ($acc_m, $acc_j)" test "$(printf '%.6f' "$acc_m")" = "$(printf '%.6f' "$acc_j")"
check "json: no progress text on stderr" bash -c "! grep -q 'round ' '$tmp/j.err'"
check "json: the same run" cmp -s "$tmp/a/global.safetensors" "$tmp/j/global.safetensors"

# --quiet: nothing at all on a successful run
"$LOOM" "${SIM[@]}" --quiet > "$tmp/q.out" 2> "$tmp/q.err"
check "sim --quiet exits 0" test $? -eq 0
check "quiet: stdout empty" test ! -s "$tmp/q.out"
check "quiet: stderr empty" test ! -s "$tmp/q.err"
# errors still show in quiet mode, naming the flag
refuse "quiet keeps errors" 12 '--seq 4096' 'positions' -- "$LOOM" sim --model tiny --seq 4096 --quiet
refuse "--quiet with --json" 2 '--quiet and --json' -- "$LOOM" sim --quiet --json

# train: --json steps and evaluations; piped lines every --log-every steps (on 20 kB of text)
head -c 20000 "$TXT" > "$tmp/small.txt"
"$LOOM" train --model tiny --data "$tmp/small.txt" --steps 4 --batch 1 --seq 16 --eval-every 2 --eval-windows 4 --log-every 2 --sample-len 0 \
    --threads 1 --json > "$tmp/t.out" 2> /dev/null
check "train --json: progress at steps 1, 2, 4" test "$(grep '"type":"progress"' "$tmp/t.out" | grep -o '"step":[0-9]*' | tr '\n' ' ')" = '"step":1 "step":2 "step":4 '
check "train --json: evaluations at 0, 2, 4" test "$(grep -c '"type":"eval"' "$tmp/t.out")" -eq 3
check "train --json: a result" grep -q '^{"type":"result","cmd":"train","steps":4,' "$tmp/t.out"
"$LOOM" train --model tiny --data "$tmp/small.txt" --steps 4 --batch 1 --seq 16 --log-every 2 --sample-len 0 --threads 1 \
    > /dev/null 2> "$tmp/t.err"
check "train piped: steps 1, 2, 4" test "$(grep -o '^  step *[0-9]*/4' "$tmp/t.err" | tr -s ' ' | tr '\n' ';')" = ' step 1/4; step 2/4; step 4/4;'

# on a terminal (script gives the command a pseudo-terminal): one line redrawn in place
if script -qec true /dev/null > /dev/null 2>&1; then
    # the terminal's transcript: what the command drew there
    script -qec "$LOOM ${SIM[*]}" "$tmp/tty.log" > /dev/null 2>&1 < /dev/null
    check "tty: the line is redrawn (carriage returns)" grep -q $'\r  round' "$tmp/tty.log"
    check "tty: cleared to the end of the line" grep -q $'\033\\[K' "$tmp/tty.log"
    check "tty: the last round shown" grep -q 'round    3/3' "$tmp/tty.log"
    check "tty: the per-round lines do not scroll" test "$(grep -c '^  round    [12]/3' "$tmp/tty.log")" -eq 0
fi
# generate --json: one result whose text is what a plain run prints (after the prompt); bench --json
ST="$SHARED/data/stories260K"
G=(generate --model "$ST/stories260K.bin" --tokenizer "$ST/tok512.bin" --temperature 0 --steps 40 --threads 1)
"$LOOM" "${G[@]}" > "$tmp/g.txt" 2> /dev/null
"$LOOM" "${G[@]}" --json > "$tmp/g.json" 2> "$tmp/g.err"
check "generate --json: one line" test "$(wc -l < "$tmp/g.json")" -eq 1
check "generate --json: the text of a plain run" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read())
plain = open(sys.argv[2]).read().rstrip("\n")
sys.exit(not (r["type"] == "result" and r["tokens"] == 40 and r["text"] and plain.endswith(r["text"])))' "$tmp/g.json" "$tmp/g.txt"
check "generate --json: no speed line on stderr" test ! -s "$tmp/g.err"
"$LOOM" bench generate --model tiny --steps 16 --reps 2 --json > "$tmp/bg.json" 2> /dev/null
check "bench generate --json: two runs and a result" test "$(grep -c '"type":"progress","cmd":"bench generate"' "$tmp/bg.json")" -eq 2 -a "$(grep -c '"gen_tokens_per_s"' "$tmp/bg.json")" -eq 1

# loom server and loom client on loopback: the server's --json (its port, a progress object per round
# with the metrics row's train loss, its log as event objects, the result), a --quiet client, and
# loom report on the server's state directory
mkdir -p "$tmp/cd"
head -c 6000 "$TXT" > "$tmp/cd/alice.txt"
tail -c 6000 "$TXT" > "$tmp/cd/bob.txt"
cat > "$tmp/run.json" << 'EOF2'
{"model": "tiny", "rounds": 2, "local-steps": 1, "batch": 2, "seq": 16, "seed": 5, "eval-every": 1, "sample-len": 0}
EOF2
S="$tmp/state"
for n in alice bob; do "$LOOM" server add-client --state "$S" $n > "$S.$n" 2> /dev/null; done
"$LOOM" server --state "$S" --config "$tmp/run.json" --listen 127.0.0.1:0 --poll-ms 20 --json > "$S.json" 2> "$S.log" &
spid=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's/^{"type":"listening","cmd":"server","port":\([0-9]*\)}$/\1/p' "$S.json" 2> /dev/null)
    [ -n "$port" ] && break
    kill -0 $spid 2> /dev/null || break
    sleep 0.1
done
check "server --json: its port as a JSON line" test -n "$port"
cpids=
for n in alice bob; do
    q=; [ $n = alice ] && q=--quiet
    "$LOOM" client --server "https://127.0.0.1:${port:-1}" --name $n --token-file "$S.$n" --ca-cert "$S/tls/cert.pem" \
        --data "$tmp/cd/$n.txt" --work-dir "$tmp/w$n" --threads 1 --give-up 20 $q > "$tmp/$n.out" 2> "$tmp/$n.err" &
    cpids="$cpids $!"
done
t=0
while kill -0 $spid 2> /dev/null && [ $t -lt 600 ]; do sleep 0.1; t=$((t + 1)); done
kill -0 $spid 2> /dev/null && kill -9 $spid
wait $spid
check "server exits 0" test $? -eq 0
for p in $cpids; do wait $p; done
check "server --json: every stdout line is a JSON object" awk '!/^\{"type":"(listening|progress|event|result)","cmd":"server",.*\}$/ { bad = 1 } END { exit bad || NR == 0 }' "$S.json"
check "server --json: a progress object per round" test "$(grep -o '^{"type":"progress","cmd":"server","round":[0-9]*' "$S.json" | tr '\n' ' ')" = '{"type":"progress","cmd":"server","round":1 {"type":"progress","cmd":"server","round":2 '
want=$(grep '"type":"round","round":2,' "$S/metrics.jsonl" | sed 's/.*"train_loss":\([-0-9.e]*\).*/\1/')
got=$(grep '"type":"progress","cmd":"server","round":2,' "$S.json" | sed 's/.*"train_loss":\([-0-9.e]*\).*/\1/')
check "server --json: round 2's train loss is the metrics row's ($want, $got)" test "$(printf '%.6f' "$want")" = "$(printf '%.6f' "${got:-0}")"
check "server --json: its log as events" grep -q '^{"type":"event","cmd":"server","level":"info"' "$S.json"
check "server --json: a result" grep -q '^{"type":"result","cmd":"server","strategy":"fedavg"' "$S.json"
check "server --json: its warnings also on stderr, nothing else" bash -c "grep -q ' server warning:' '$S.log' && ! grep -v -e ' server warning:' -e ' server error:' '$S.log' | grep -q ."
check "quiet client: nothing on stdout or stderr" test ! -s "$tmp/alice.out" -a ! -s "$tmp/alice.err"
check "the other client logs its rounds" grep -q 'round 2: trained' "$tmp/bob.err"
"$LOOM" report "$S" --format md > /dev/null 2> "$tmp/srep.err"
check "report on a server's state directory" grep -qxF '| rounds | 2 (last round 2) |' "$S/report/summary.md"
check "report: the server's settings" grep -qxF '| strategy | fedavg |' "$S/report/summary.md"
finish
