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
if command -v python3 > /dev/null; then
    check "python's json reads every line" python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$tmp/j.out"
fi
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

# train: --json steps and evaluations; piped lines every --log-every steps
"$LOOM" train --model tiny --data "$TXT" --steps 4 --batch 1 --seq 16 --eval-every 2 --eval-windows 4 --log-every 2 --sample-len 0 \
    --threads 1 --json > "$tmp/t.out" 2> /dev/null
check "train --json: progress at steps 1, 2, 4" test "$(grep '"type":"progress"' "$tmp/t.out" | grep -o '"step":[0-9]*' | tr '\n' ' ')" = '"step":1 "step":2 "step":4 '
check "train --json: evaluations at 0, 2, 4" test "$(grep -c '"type":"eval"' "$tmp/t.out")" -eq 3
check "train --json: a result" grep -q '^{"type":"result","cmd":"train","steps":4,' "$tmp/t.out"
"$LOOM" train --model tiny --data "$TXT" --steps 4 --batch 1 --seq 16 --log-every 2 --sample-len 0 --threads 1 \
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
finish
