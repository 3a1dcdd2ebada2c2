#!/usr/bin/env bash
# Flags and config files are parsed strictly: out-of-range, non-finite and malformed numbers fail with
# exit status 2 and a message naming the flag (or the file and key) and the accepted range; every
# command's help lists its flags; one --format list; split manifests are refused clearly.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
S="$LOOM sim --sample-len 0"
fails "rounds beyond int" "--rounds expects an integer in \[1, " $S --rounds 4294967297
fails "rounds 0" "--rounds expects an integer in \[1, " $S --rounds 0
fails "rounds not a number" "--rounds.*'3x'" $S --rounds 3x
fails "sample inf" "--sample expects a count of clients in \[1, 88\] or a fraction in (0, 1\]" $S --sample inf
fails "sample nan" "--sample expects" $S --sample nan
fails "sample 0" "--sample expects" $S --sample 0
fails "sample 1.5" "--sample expects" $S --sample 1.5
fails "negative workers" "--workers expects an integer in \[1, " $S --workers -1
fails "workers 100000" "--workers expects an integer in \[1, " $S --workers 100000
fails "client-threads 100000" "--client-threads expects" $S --client-threads 100000
fails "negative eval-every" "--eval-every expects an integer in \[0, " $S --eval-every -1
fails "negative checkpoint-every" "--checkpoint-every expects" $S --checkpoint-every -2
fails "negative eval-clients" "--eval-clients expects" $S --eval-clients -1
fails "lr inf" "--lr expects a finite number in \[0, 1000\], got 'inf'" $S --lr inf
fails "lr nan" "--lr expects a finite number" $S --lr nan
fails "alpha 0" "--alpha expects" $S --alpha 0
fails "max-update-norm negative" "--max-update-norm expects" $S --max-update-norm -1
fails "train threads -1" "--threads expects an integer in \[0, " $LOOM train --data x --threads -1
fails "train threads 100000" "--threads expects an integer in \[0, " $LOOM train --data x --threads 100000
fails "train steps fraction" "--steps expects an integer" $LOOM train --data x --steps 1.5
fails "train steps with a blank" "--steps expects an integer" $LOOM train --data x --steps " 5"
fails "train lr overflow" "--lr expects a finite number" $LOOM train --data x --lr 1e400
fails "train lora-r beyond int" "--lora-r expects an integer" $LOOM train --data x --lora-r 4294967300
fails "eval threads" "--threads expects" $LOOM eval --model x --data x --threads 100000
fails "generate temperature nan" "--temperature expects a finite number in \[0, 100\]" $LOOM generate --model tiny --temperature nan
fails "generate top-p nan" "--top-p expects a finite number in \[0, 1\]" $LOOM generate --model tiny --top-p nan
fails "generate steps negative" "--steps expects" $LOOM generate --model tiny --steps -5
fails "bench threads" "--threads expects an integer in \[1, " $LOOM bench train --threads 100000
fails "bench tokenize reps" "--reps expects an integer in \[1, 1000\]" $LOOM bench tokenize --reps 0
fails "data split clients" "--clients expects an integer" $LOOM data split --clients -1
fails "data split alpha inf" "--alpha expects a finite number" $LOOM data split --alpha inf
fails "data shakespeare min-lines" "--min-lines expects an integer" $LOOM data shakespeare --min-lines 6x
fails "data shakespeare test-frac" "--test-frac expects a finite number in \[0, 0.99\]" $LOOM data shakespeare --test-frac 1

# a sampled fraction written as 1e-1 is 10% (9 of 88 clients), not everyone
$S --sample 1e-1 --rounds 1 --local-steps 1 --batch 1 --seq 8 --eval-clients 1 > /dev/null 2> "$tmp/frac.err"
check "sample 1e-1 is a fraction" grep -q '88 clients.*9 per round' "$tmp/frac.err"

# config files go through the same checks and name the file and the key
printf '{"rounds": "3"}' > "$tmp/str.json"
fails "config string for a number" 'str.json: "rounds" must be an integer in \[1, ' $LOOM sim --config "$tmp/str.json"
printf '{"rounds": 4294967297}' > "$tmp/big.json"
fails "config integer out of range" 'big.json: "rounds" expects an integer in \[1, ' $LOOM sim --config "$tmp/big.json"
printf '{"rounds": 2.5}' > "$tmp/frac.json"
fails "config fraction for an integer" 'frac.json: "rounds" must be an integer' $LOOM sim --config "$tmp/frac.json"
printf '{"lr": "fast"}' > "$tmp/lr.json"
fails "config string for a real" 'lr.json: "lr" must be a number' $LOOM sim --config "$tmp/lr.json"
printf '{"lr": 1e999}' > "$tmp/inf.json"
fails "config real overflow" 'inf.json' $LOOM sim --config "$tmp/inf.json"
printf '{"roundz": 3}' > "$tmp/key.json"
fails "config unknown key" 'key.json: unknown key "roundz"' $LOOM sim --config "$tmp/key.json"
printf '{"resume": 1}' > "$tmp/flag.json"
fails "config flag needs a boolean" 'flag.json: "resume" must be true or false' $LOOM sim --config "$tmp/flag.json"
printf '{"workers": -3}' > "$tmp/w.json"
fails "config negative workers" 'w.json: "workers" expects an integer in \[1, ' $LOOM sim --config "$tmp/w.json"

# one --format list for train and sim, naming every format the data loader knows
fails "train unknown format" "unknown --format 'foo' (text, jsonl, jsonl-cls, alpaca, dolly, self-instruct, csv, tsv, brown)" \
  $LOOM train --model tiny --data "$LOOM_SHARED/data/tinyshakespeare/input.txt" --format foo
fails "sim unknown format" "unknown --format 'foo' (text, jsonl, jsonl-cls, alpaca, dolly, self-instruct, csv, tsv, brown)" \
  $S --data "$LOOM_SHARED/data/tinyshakespeare/input.txt" --format foo
check "train and sim help list the same formats" test "$($LOOM train --help | grep -o 'text, jsonl[^(]*brown')" = "$($LOOM sim --help | grep -o 'text, jsonl[^(]*brown')"

# eval/generate --base-dtype advise the flag they have
fails "eval base-dtype advice" "add --adapter DIR" $LOOM eval --model "$LOOM_SHARED/data/stories260K/stories260K.bin" --data x --base-dtype bf16
check "eval advice does not name --peft" bash -c "! grep -q -- '--peft' '$tmp/err'"
fails "generate base-dtype advice" "add --adapter DIR" $LOOM generate --model "$LOOM_SHARED/data/stories260K/stories260K.bin" --base-dtype int8
fails "generate --weights unknown" "unknown base type 'int4' (f32, bf16, int8)" $LOOM generate --model tiny --weights int4
fails "generate --weights with an adapter" "with --adapter, hold the base's linear weights with --base-dtype int8" $LOOM generate --model tiny --weights int8 --adapter "$tmp/none"
fails "bench generate --isa unknown" "unknown instruction set 'sse'" $LOOM bench generate --model tiny --isa sse
fails "generate --int8 unknown" "--int8 'q4': dot or widen" $LOOM generate --model tiny --int8 q4
fails "bench generate --int8 unknown" "--int8 'q4': dot or widen" $LOOM bench generate --model tiny --int8 q4

# help texts: each lists the command's own flags
$LOOM data shakespeare --help > "$tmp/h1"
check "data shakespeare help is its own" grep -q -- '--min-lines' "$tmp/h1"
check "data shakespeare help is not the split help" bash -c "! grep -q -- '--partition' '$tmp/h1'"
$LOOM bench tokenize --help > "$tmp/h2"
for f in --tokenizer --file --reps; do check "bench tokenize help lists $f" grep -q -- "$f" "$tmp/h2"; done
$LOOM data split --help > "$tmp/h3"
for f in --data --format --partition --clients --out --text-col --label-col --seed; do
  check "data split help lists $f" grep -q -- "$f " "$tmp/h3"; done
$LOOM train --help > "$tmp/h4"
for f in --text-col --label-col --resume --checkpoint-every --stop-at; do check "train help lists $f" grep -q -- "$f" "$tmp/h4"; done
check "help shows ranges" grep -q -- '--steps N .*\[1, ' "$tmp/h4"

# train --format tsv picks its columns
printf 'id\tsentence\tlabel\n' > "$tmp/d.tsv"
for i in $(seq 1 40); do printf '%d\tgood film number %d\t%d\n' $i $i $((i % 2)) >> "$tmp/d.tsv"; done
$LOOM train --model tiny --data "$tmp/d.tsv" --format tsv --text-col sentence --label-col label --steps 2 --batch 2 \
  --seq 32 --sample-len 0 > /dev/null 2> "$tmp/tsv.err"
check "train --format tsv --text-col runs" grep -q 'tokens in examples' "$tmp/tsv.err"
fails "train text-col without format" "--text-col and --label-col need --format" $LOOM train --model tiny --data "$tmp/d.tsv" --text-col sentence

# a split manifest given as --data is refused, naming it
$LOOM data split --data "$tmp/d.tsv" --format tsv --text-col sentence --label-col label --partition iid --clients 2 --out "$tmp/split" > /dev/null
fails "sim refuses a split manifest" "split manifest" $S --data "$tmp/split/manifest.json" --format tsv
fails "train refuses a split manifest" "split manifest" $LOOM train --model tiny --data "$tmp/split/manifest.json"

echo "cli_args: $pass passed, $fail failed"
[ $fail -eq 0 ]
