#!/usr/bin/env bash
# loom audit: a small byte-level GPT-2 trained (loom train) to overfit 32 lines of Tiny Shakespeare
# with two canaries inserted 8 times each. Membership inference tells those lines from the lines
# between them (AUC > 0.8) and cannot tell two halves of unseen text apart (AUC near 0.5); the
# reference-calibrated attack works too; the inserted canaries are more exposed than two canaries
# never trained on; refusals name the flag or the file.
set -u
. "$(dirname "$0")/testlib.sh"
TXT="$SHARED/data/tinyshakespeare/input.txt"
A="$LOOM audit"
# members and non-members alternate through one passage (same distribution); unseen halves likewise
awk 'length($0) > 20' "$TXT" > "$tmp/lines.txt"
sed -n '3001,3064p' "$tmp/lines.txt" | awk 'NR % 2 == 1' > "$tmp/mem.txt"
sed -n '3001,3064p' "$tmp/lines.txt" | awk 'NR % 2 == 0' > "$tmp/non.txt"
sed -n '5001,5256p' "$tmp/lines.txt" | awk 'NR % 2 == 1' > "$tmp/ua.txt"
sed -n '5001,5256p' "$tmp/lines.txt" | awk 'NR % 2 == 0' > "$tmp/ub.txt"
sed -n '7001,7064p' "$tmp/lines.txt" > "$tmp/other.txt"
check "members file has 32 lines" test "$(wc -l < "$tmp/mem.txt")" -eq 32

# canaries: two inserted (8 copies each, each its own paragraph), two never trained on
cp "$tmp/mem.txt" "$tmp/train.txt"
$A canaries --out "$tmp/cin" --n 2 --seed 7 --insert "$tmp/train.txt" --repeat 8 2> /dev/null
$A canaries --out "$tmp/cout" --n 2 --seed 8 2> /dev/null
check "canaries.txt has the canaries" test "$(grep -c '^my secret code is [0-9] [0-9] [0-9] [0-9] [0-9] [0-9]$' "$tmp/cin/canaries.txt")" -eq 2
check "canaries.json names the space" grep -q '"space": 1000000' "$tmp/cin/canaries.json"
c1=$(head -1 "$tmp/cin/canaries.txt")
check "each canary inserted 8 times" test "$(grep -cxF "$c1" "$tmp/train.txt")" -eq 8
check "the members are kept" cmp -s "$tmp/mem.txt" <(head -32 "$tmp/train.txt")
$A canaries --out "$tmp/cin2" --n 2 --seed 7 2> /dev/null
check "canaries are a function of the seed" cmp -s "$tmp/cin/canaries.txt" "$tmp/cin2/canaries.txt"
check "another seed, other canaries" bash -c "! cmp -s '$tmp/cin/canaries.txt' '$tmp/cout/canaries.txt'"

printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 128, "vocab_size": 259}' > "$tmp/small.json"
TR="$LOOM train --model $tmp/small.json --batch 8 --seq 64 --val-frac 0 --sample-len 0 --threads 1 --lr 3e-3"
$TR --data "$tmp/train.txt" --steps 150 --out "$tmp/m" > /dev/null 2>&1
$TR --data "$tmp/other.txt" --steps 100 --seed 5 --out "$tmp/ref" > /dev/null 2>&1
check "target model trained" test -s "$tmp/m/model.safetensors"
check "reference model trained" test -s "$tmp/ref/model.safetensors"

# loom train on plain text never shows the model a BOS or an EOS: score the examples without them
M="$A mia --model $tmp/m --bos no --eos no --threads 1"
$M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --reference "$tmp/ref" --json > "$tmp/mia.json" 2> "$tmp/mia.err"
cat "$tmp/mia.json" >&2
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))" "$@"; }
check "mia counts" test "$(field "$tmp/mia.json" 'members + nonmembers')" = 64
check "members have the lower loss" num_lt "$(field "$tmp/mia.json" mean_loss_members)" "$(field "$tmp/mia.json" mean_loss_nonmembers)"
check "loss attack: AUC > 0.8 on trained-on lines" num_lt 0.8 "$(field "$tmp/mia.json" "loss['auc']")"
check "loss attack: TPR at 1% FPR above chance" num_lt 0.05 "$(field "$tmp/mia.json" "loss['tpr_at_fpr']")"
check "reference attack: AUC > 0.8" num_lt 0.8 "$(field "$tmp/mia.json" "reference['auc']")"
check "fpr reached within the target" test "$(field "$tmp/mia.json" "loss['fpr'] <= 0.01")" = True
$M --members "$tmp/ua.txt" --nonmembers "$tmp/ub.txt" --json > "$tmp/un.json" 2> /dev/null
cat "$tmp/un.json" >&2
check "unseen halves: AUC near 0.5" test "$(field "$tmp/un.json" "abs(loss['auc'] - 0.5) < 0.12")" = True
check "no reference attack without --reference" bash -c "! grep -q '\"reference\"' '$tmp/un.json'"
$M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --scores "$tmp/scores.tsv" > "$tmp/mia.txt" 2> /dev/null
check "text output names the attack" grep -q '^loss threshold ' "$tmp/mia.txt"
check "scores: one row per example" test "$(grep -c '^member' "$tmp/scores.tsv")" -eq 32
# per-example loss by a second route: loom eval on a file holding just that line (no newline, no BOS:
# one window, the same targets), for examples scored in a batch beside longer ones
for k in 1 2 3; do
  printf '%s' "$(sed -n "${k}p" "$tmp/mem.txt")" > "$tmp/one.txt"
  want=$($LOOM eval --model "$tmp/m" --data "$tmp/one.txt" --seq 64 --threads 1 | awk '{ print $2 }')
  got=$(awk -F'\t' -v k=$k '$1 == "member" && $2 == k { print $5 }' "$tmp/scores.tsv")
  check "member $k: loss equals loom eval's ($got vs $want)" awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; exit !(a != "" && d < 6e-5 && d > -6e-5) }'
done
# swapping the sets mirrors the AUC
$M --members "$tmp/non.txt" --nonmembers "$tmp/mem.txt" --json > "$tmp/swap.json" 2> /dev/null
check "swapped sets: AUC mirrored" test "$(python3 -c "import json; a=json.load(open('$tmp/mia.json')); b=json.load(open('$tmp/swap.json')); print(abs(a['loss']['auc'] + b['loss']['auc'] - 1) < 1e-12)")" = True

# exposure: the trained-in canaries rank first, the others do not
E="$A exposure --model $tmp/m --bos no --eos no --threads 1 --candidates 200 --json"
$E --canaries "$tmp/cin" > "$tmp/ein.json" 2> /dev/null
$E --canaries "$tmp/cout" > "$tmp/eout.json" 2> /dev/null
cat "$tmp/ein.json" "$tmp/eout.json" >&2
check "inserted canaries: high exposure" num_lt 5 "$(field "$tmp/ein.json" mean_exposure)"
check "inserted canaries more exposed than the others" num_lt "$(field "$tmp/eout.json" mean_exposure)" "$(field "$tmp/ein.json" mean_exposure)"
check "exposure at most log2(K + 1)" test "$(field "$tmp/ein.json" "max_exposure <= max_possible + 1e-12")" = True
# a 2-digit space is enumerated whole
$A canaries --out "$tmp/c2" --n 1 --seed 3 --format 'pin # #' 2> /dev/null
$A exposure --model "$tmp/m" --bos no --eos no --threads 1 --canaries "$tmp/c2" --candidates 5000 --json > "$tmp/e2.json" 2> /dev/null
check "small space enumerated: 99 candidates" test "$(field "$tmp/e2.json" "(candidates, exhaustive)")" = "(99, True)"

# refusals name the flag or the file
refuse "mia without --members" 2 "--members" "required" -- $M --nonmembers "$tmp/non.txt"
refuse "missing members file" 1 "--members" "$tmp/none.txt" "no such file" -- $M --members "$tmp/none.txt" --nonmembers "$tmp/non.txt"
refuse "missing model" 1 "--model" "$tmp/nomodel" -- $A mia --model "$tmp/nomodel" --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt"
refuse "bad --bos" 2 "--bos" "auto, yes or no" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --bos maybe
refuse "bad --eos" 2 "--eos" "auto, yes or no" -- $A exposure --model "$tmp/m" --canaries "$tmp/cin" --eos 1
refuse "bad --split" 2 "--split" "line, paragraph or file" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --split words
refuse "--fpr out of range" 2 "--fpr" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --fpr 2
refuse "--seq-len past the model" 2 "--seq-len 500" "128 positions" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --seq-len 500
printf '\n\n' > "$tmp/empty.txt"
refuse "members without examples" 1 "--members" "$tmp/empty.txt" -- $M --members "$tmp/empty.txt" --nonmembers "$tmp/non.txt"
refuse "reference adapter without reference" 2 "--reference-adapter needs --reference" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --reference-adapter "$tmp/m"
refuse "reference of another vocabulary" 1 "--reference" "share the tokenizer" -- $M --members "$tmp/mem.txt" --nonmembers "$tmp/non.txt" --reference "$SHARED/data/stories260K/stories260K.bin"
refuse "canaries without --out" 2 "--out" "required" -- $A canaries --n 2
refuse "format without a digit" 2 "--format" "has no '#'" -- $A canaries --out "$tmp/cx" --format 'no digits'
refuse "more canaries than half the space" 2 "--n 60" "at most 50" -- $A canaries --out "$tmp/cx" --format 'pin # #' --n 60
refuse "insert into a missing file" 1 "--insert" "$tmp/nofile" "no such file" -- $A canaries --out "$tmp/cx" --insert "$tmp/nofile"
check "nothing written before the insert is refused" test ! -e "$tmp/cx/canaries.json"
refuse "--repeat without --insert" 2 "--repeat needs --insert" -- $A canaries --out "$tmp/cx" --repeat 3
refuse "exposure without canaries.json" 1 "--canaries" "canaries.json" "loom audit canaries" -- $A exposure --model "$tmp/m" --canaries "$tmp/none"
mkdir -p "$tmp/cbad"
printf '{"format": "pin # #", "canaries": ["pin 1 x"]}' > "$tmp/cbad/canaries.json"
refuse "canary not of its format" 1 "$tmp/cbad/canaries.json" "canary 1" "not a digit" -- $A exposure --model "$tmp/m" --canaries "$tmp/cbad"
printf '{"format": "pin # #", "canaries": [' > "$tmp/cbad/canaries.json"
refuse "truncated canaries.json" 1 "$tmp/cbad/canaries.json" "line 1" -- $A exposure --model "$tmp/m" --canaries "$tmp/cbad"
refuse "unknown audit" 2 "unknown audit 'foo'" -- $A foo
check "audit --help" bash -c "$A --help | grep -q 'loom audit exposure'"
check "mia --help names the convention" bash -c "$A mia --help | grep -q 'without interpolation'"
finish
