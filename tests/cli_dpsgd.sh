#!/usr/bin/env bash
# loom train --dp sgd: every metrics row carries the epsilon spent so far, which equals the accountant's
# (loom dp epsilon) at q = batch / training windows; the end of the run prints it; a budget that the
# last step would exceed is refused before training, with a --dp-noise and a --steps that fit (both
# then accepted); a resumed DP run equals the uninterrupted one bit for bit; the federated modes and
# incomplete settings are refused with messages naming the flag.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
head -c 4000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/small.txt"
T="$LOOM train --model tiny --data $tmp/small.txt --batch 4 --seq 32 --eval-every 0 --eval-windows 2 --sample-len 0 --threads 1"
DP="--dp sgd --dp-clip 1 --dp-noise 1.1"

$T --steps 6 $DP --out "$tmp/a" > /dev/null 2> "$tmp/a.err"
check "DP run trains" test -s "$tmp/a/model.safetensors"
check "six rows with epsilon" test "$(grep -c '"loss":.*"epsilon":' "$tmp/a/metrics.jsonl")" -eq 6
# the training windows: (1 - val-frac) of the text's tokens (val-frac the float 0.1), minus one window of
# --seq + 1
ntok=$(sed -n 's/.*parameters (new), \([0-9]*\) tokens.*/\1/p' "$tmp/a.err")
N=$(awk -v n="$ntok" 'BEGIN { printf "%d", int(n * (1 - 0.100000001490116)) - 33 }')
check "header names q = B/N" grep -q "q = 4/$N = " "$tmp/a.err"
q=$(awk -v n="$N" 'BEGIN { printf "%.17g", 4 / n }')
for s in 1 6; do
  want=$("$LOOM" dp epsilon --q "$q" --sigma 1.1 --steps $s --delta 1e-5 --json | sed 's/.*"epsilon": *\([0-9.e+-]*\).*/\1/')
  got=$(sed -n "s/.*\"step\":$s,\"loss\".*\"epsilon\":\([0-9.e+-]*\),.*/\1/p" "$tmp/a/metrics.jsonl")
  check "epsilon of step $s ($got) is the accountant's ($want)" awk -v a="$got" -v b="$want" 'BEGIN { exit !(a > 0 && (a - b) ^ 2 <= (1e-5 * b) ^ 2) }'
done
check "epsilon grows" awk -F'"epsilon":' '/"loss"/ { split($2, v, ","); if (v[1] + 0 <= last) bad = 1; last = v[1] + 0 } END { exit bad }' "$tmp/a/metrics.jsonl"
check "the end prints epsilon" grep -q 'DP-SGD spent epsilon [0-9.]* at delta 1e-05 (RDP order [0-9.]*) over 6 steps' "$tmp/a.err"
check "global clip off by default with DP" grep -q 'clip 0, 1 threads' "$tmp/a.err"
plain=$($T --steps 1 2>&1 >/dev/null | grep -c 'clip 1, 1 threads')
check "global clip 1 by default without DP" test "$plain" -eq 1

# resume: 6 steps == 3, stop, 3 more
$T --steps 6 $DP --stop-at 3 --out "$tmp/b" > /dev/null 2>&1
$T --steps 6 $DP --resume --out "$tmp/b" > /dev/null 2>&1
check "resumed DP run equals the uninterrupted one" cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors"
check "resumed epsilon rows equal" cmp -s <(sed 's/,"tokens_per_s.*//' "$tmp/a/metrics.jsonl") <(sed 's/,"tokens_per_s.*//' "$tmp/b/metrics.jsonl")

# the budget: refused before any step, with knobs that fit
B="--dp sgd --dp-clip 1 --dp-noise 0.6 --dp-epsilon 2.15"
fails "budget exceeded" "--dp-epsilon 2.15 would be exceeded: 40 steps" $T --steps 40 $B
check "refused before training" bash -c "! grep -q 'step ' '$tmp/err'"
check "names --dp-noise" grep -q 'raise --dp-noise to [0-9.]* (epsilon 2.1[0-9]* after 40 steps)' "$tmp/err"
check "names --steps" grep -q 'or lower --steps to [0-9]*' "$tmp/err"
sig=$(sed -n 's/.*raise --dp-noise to \([0-9.]*\).*/\1/p' "$tmp/err")
st=$(sed -n 's/.*lower --steps to \([0-9]*\).*/\1/p' "$tmp/err")
check "suggested steps below 40" test "$st" -lt 40 -a "$st" -gt 0
$T --steps "$st" --stop-at 1 --out "$tmp/d" $B > /dev/null 2> "$tmp/st.err"
check "the suggested --steps $st fits" grep -q 'budget ok' "$tmp/st.err"
fails "one step more does not" "would be exceeded" $T --steps $((st + 1)) $B
$T --steps 40 --stop-at 1 --out "$tmp/c" --dp sgd --dp-clip 1 --dp-noise "$sig" --dp-epsilon 2.15 > /dev/null 2> "$tmp/sig.err"
check "the suggested --dp-noise $sig fits" grep -q 'budget ok' "$tmp/sig.err"

# refusals
fails "central is federated" "--dp central is client-level DP of a federated run" $T --steps 1 --dp central --dp-clip 1 --dp-noise 1
fails "local is federated" "--dp local is client-level DP" $T --steps 1 --dp local --dp-clip 1 --dp-noise 1
fails "unknown mode" "--dp foo: unknown" $T --steps 1 --dp foo
fails "noise without --dp" "--dp-noise needs --dp sgd" $T --steps 1 --dp-noise 1
fails "clip needed" "--dp sgd needs --dp-clip C > 0" $T --steps 1 --dp sgd --dp-noise 1
fails "clip 0" "--dp sgd needs --dp-clip C > 0" $T --steps 1 --dp sgd --dp-clip 0 --dp-noise 1
fails "noise needed" "--dp sgd needs --dp-noise SIGMA" $T --steps 1 --dp sgd --dp-clip 1
fails "delta 0" "--dp-delta must be in (0, 1)" $T --steps 1 $DP --dp-delta 0
fails "adaptive clip is client-level" "--dp-adaptive-clip is client-level DP's" $T --steps 1 $DP --dp-adaptive-clip 0.5
head -c 40 "$tmp/small.txt" > "$tmp/s40.txt"
fails "batch above the examples" "--batch 64 exceeds the 35 training examples" $LOOM train --model tiny --data "$tmp/s40.txt" --val-frac 0 --batch 64 --seq 4 --steps 1 --sample-len 0 $DP
finish
