#!/usr/bin/env bash
# loom sim --secagg: the securely aggregated global model equals the plain one within the encoding's
# error bound, dropouts after the masked input still give a complete round, SecAgg+ runs, the result
# does not depend on the workers, and impossible settings are refused naming their flag.
#
# The bound (docs/privacy-secagg.md): each value is rounded to the 2^-24 grid, an error of at most
# 2^-25, so the weighted mean of the round differs from the plain pipeline's (itself exact to 2^-49)
# by at most 2^-25 + 2^-48; the strategy (fedavg, server lr 1) adds the mean to x in float, each
# result rounded once: |g_secagg - g_plain| <= 2^-25 + 2^-48 + 2^-23 (max(|g_s|, |g_p|) + |g_p - x|),
# the last term covering the rounding of the mean itself and of the sum.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
base=(--model tiny --rounds 1 --sample 5 --local-steps 1 --batch 2 --seq 32 --sample-len 0 --eval-clients 1
      --seed 7 --quiet-clients)

"$LOOM" sim "${base[@]}" --out "$tmp/plain" > /dev/null 2> "$tmp/plain.err"
check "plain run" test $? -eq 0
"$LOOM" sim "${base[@]}" --lr 0 --out "$tmp/x0" > /dev/null 2>&1
check "lr 0 run (the initial model)" test $? -eq 0
"$LOOM" sim "${base[@]}" --secagg --secagg-clip 4 --out "$tmp/sa" > /dev/null 2> "$tmp/sa.err"
check "secagg run" test $? -eq 0
check "secagg: every client accepted" grep -q '"type":"round".*"accepted":5,"rejected":0' "$tmp/sa/metrics.jsonl"
check "secagg: uploads counted (masked input > f32)" \
    bash -c "num() { grep -o '\"bytes_up\":[0-9]*' \"\$1\" | head -1 | cut -d: -f2; }; test \$(num '$tmp/sa/metrics.jsonl') -gt \$(num '$tmp/plain/metrics.jsonl')"

# the float data of a safetensors file, one value a line
f32() {
    local h
    h=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    tail -c +$((9 + h)) "$1" | od -An -v -t f4 -w4 | tr -d ' '
}
f32 "$tmp/sa/global.safetensors" > "$tmp/a"
f32 "$tmp/plain/global.safetensors" > "$tmp/b"
f32 "$tmp/x0/global.safetensors" > "$tmp/x"
paste "$tmp/a" "$tmp/b" "$tmp/x" | awk '
    function abs(v) { return v < 0 ? -v : v }
    { d = abs($1 - $2); m = abs($1) > abs($2) ? abs($1) : abs($2)
      tol = 2^-25 + 2^-48 + 2^-23 * (m + abs($2 - $3))
      if (d > tol) bad++
      if (d > 0) diff++
      r = d / tol; if (r > worst) worst = r; n++ }
    END { printf "%d values, %d differ, %d beyond the bound, worst |d|/bound %.3f\n", n, diff, bad, worst
          exit !(n > 100000 && bad == 0 && diff > 0) }' > "$tmp/cmp.txt"
ok=$?
echo "secagg vs plain: $(cat "$tmp/cmp.txt")" >&2
check "secagg == plain within the encoding bound, and the encoding is visible" test $ok -eq 0

# two clients vanish after their masked input: their inputs stay in the sum, which is the same model
# (on 1 worker instead of 2: the result does not depend on the workers either)
"$LOOM" sim "${base[@]}" --secagg --secagg-clip 4 --secagg-threshold 3 --secagg-drop 2 --workers 1 --out "$tmp/dr" \
    > /dev/null 2> "$tmp/dr.err"
check "secagg-drop: the run completes" test $? -eq 0
check "secagg-drop on 1 worker: every input in the sum, the same model" \
    cmp -s "$tmp/sa/global.safetensors" "$tmp/dr/global.safetensors"

# SecAgg+: 2 neighbours each (5 clients), threshold 2 of the 3 holders
"$LOOM" sim "${base[@]}" --secagg --secagg-clip 4 --secagg-neighbours 2 --secagg-threshold 2 --secagg-drop 1 --out "$tmp/nb" > /dev/null 2>&1
check "secagg+ with a dropout: the same model" cmp -s "$tmp/sa/global.safetensors" "$tmp/nb/global.safetensors"

# a refused update (non-finite) never enters the protocol: the other four are summed
first=$(grep -o '"clients":\[[0-9]*' "$tmp/sa/metrics.jsonl" | head -1 | grep -o '[0-9]*$')
"$LOOM" sim "${base[@]}" --secagg --secagg-clip 4 --fault "$first:nan" --out "$tmp/ft" > /dev/null 2>&1
check "secagg with a refused update: the run completes" test $? -eq 0
check "secagg with a refused update: 4 accepted, its row says why" \
    grep -q '"type":"round".*"accepted":4' "$tmp/ft/metrics.jsonl"
check "the refused client's row" grep -q "\"client\":$first,.*non-finite" "$tmp/ft/metrics.jsonl"

refuse "drop beyond n - t" 1 "--secagg-drop" "threshold" -- "$LOOM" sim "${base[@]}" --secagg --secagg-drop 2 --out "$tmp/r1"
refuse "odd neighbours" 1 "--secagg-neighbours" "even" -- "$LOOM" sim "${base[@]}" --secagg --secagg-neighbours 3 --out "$tmp/r2"
refuse "threshold at half" 1 "--secagg-threshold" "above" -- "$LOOM" sim "${base[@]}" --secagg --secagg-threshold 2 --out "$tmp/r3"
refuse "secagg flag without --secagg" 1 "--secagg-drop" "needs --secagg" -- "$LOOM" sim "${base[@]}" --secagg-drop 1 --out "$tmp/r4"
refuse "asynchronous mode" 1 "secure aggregation" "synchronous" -- "$LOOM" sim "${base[@]}" --secagg --mode fedasync --out "$tmp/r5"
refuse "overflowing clip" 1 "--secagg-clip" "overflow" -- "$LOOM" sim "${base[@]}" --secagg --secagg-clip 900000 --out "$tmp/r6"
finish
