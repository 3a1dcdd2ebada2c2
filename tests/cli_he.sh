#!/usr/bin/env bash
# loom sim --he paillier: clients encrypt their updates under a key holder's Paillier key, the server
# adds ciphertexts, the key holder decrypts the round's sum. The global model equals the plain run's
# within the encoding's error bound; a clip below the updates' size changes it (the encrypted path is
# really the one used); the uploads are the ciphertexts; oversized sets and impossible settings are
# refused naming their flag.
#
# The bound: each value is rounded to the 2^-32 grid (an error of at most 2^-33), so the round's mean
# differs from the plain pipeline's (exact to 2^-49) by at most 2^-33 + 2^-48; the strategy (fedavg,
# server lr 1) adds the mean to x in float, each result rounded once:
#     |g_he - g_plain| <= 2^-33 + 2^-48 + 2^-23 (max(|g_he|, |g_plain|) + |g_plain - x|).
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
base=(--model tiny --peft prompt --prompt-len 2 --rounds 1 --sample 4 --local-steps 1 --batch 2 --seq 32
      --sample-len 0 --eval-clients 1 --seed 7 --quiet-clients)

"$LOOM" sim "${base[@]}" --out "$tmp/plain" > /dev/null 2>&1
check "plain run" test $? -eq 0
"$LOOM" sim "${base[@]}" --lr 0 --out "$tmp/x0" > /dev/null 2>&1
check "lr 0 run (the initial vector)" test $? -eq 0
"$LOOM" sim "${base[@]}" --he paillier --he-clip 4 --out "$tmp/he" > /dev/null 2> "$tmp/he.err"
check "paillier run" test $? -eq 0
check "paillier: every client accepted" grep -q '"type":"round".*"accepted":4,"rejected":0' "$tmp/he/metrics.jsonl"
# a 2048-bit ciphertext (512 bytes) carries 34 values of 60 bits: far more than 4 bytes a value
up() { grep -o '"type":"round".*"bytes_up":[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }
check "paillier: the uploads are ciphertexts (at least 3x the f32 size)" \
    test "$(up "$tmp/he/metrics.jsonl")" -ge $((3 * $(up "$tmp/plain/metrics.jsonl")))

f32() {
    local h
    h=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    tail -c +$((9 + h)) "$1" | od -An -v -t f4 -w4 | tr -d ' '
}
within() { # within A B X MIN_DIFFERING: A equals B within the bound (X the initial vector)
    f32 "$1" > "$tmp/a"; f32 "$2" > "$tmp/b"; f32 "$3" > "$tmp/x"
    paste "$tmp/a" "$tmp/b" "$tmp/x" | awk '
        function abs(v) { return v < 0 ? -v : v }
        { d = abs($1 - $2); m = abs($1) > abs($2) ? abs($1) : abs($2)
          tol = 2^-33 + 2^-48 + 2^-23 * (m + abs($2 - $3))
          if (d > tol) bad++
          n++ }
        END { printf "%d values, %d beyond the bound\n", n, bad; exit !(n >= 256 && bad == 0) }'
}
check "paillier == plain within the encoding bound" within "$tmp/he/global.safetensors" "$tmp/plain/global.safetensors" "$tmp/x0/global.safetensors"

"$LOOM" sim "${base[@]}" --he paillier --he-clip 1e-6 --out "$tmp/tiny" > /dev/null 2>&1
check "paillier with a tiny clip: the run completes" test $? -eq 0
if within "$tmp/tiny/global.safetensors" "$tmp/plain/global.safetensors" "$tmp/x0/global.safetensors" > /dev/null; then
    check "a clip of 1e-6 changes the model (the encrypted path is the one aggregated)" false
else
    check "a clip of 1e-6 changes the model (the encrypted path is the one aggregated)" true
fi

refuse "a trainable set above --he-max-dim" 1 "--he-max-dim 100" "has 256 values" "--peft" -- \
    "$LOOM" sim "${base[@]}" --he paillier --he-max-dim 100 --out "$tmp/r1"
refuse "keys below 2048 bits" 2 "--he-key-bits" -- "$LOOM" sim "${base[@]}" --he paillier --he-key-bits 1024 --out "$tmp/r2"
refuse "an unknown scheme" 1 "--he expects paillier" -- "$LOOM" sim "${base[@]}" --he rsa --out "$tmp/r3"
refuse "--he-clip without --he" 1 "--he-clip needs --he" -- "$LOOM" sim "${base[@]}" --he-clip 2 --out "$tmp/r4"
refuse "--he with --secagg" 1 "give one" -- "$LOOM" sim "${base[@]}" --he paillier --secagg --out "$tmp/r5"
refuse "--he with central DP" 1 "--dp central" -- "$LOOM" sim "${base[@]}" --he paillier --dp central --dp-clip 1 --dp-noise 1 --out "$tmp/r6"
refuse "asynchronous mode" 1 "Paillier aggregation" "synchronous" -- "$LOOM" sim "${base[@]}" --he paillier --mode fedasync --out "$tmp/r7"
finish
