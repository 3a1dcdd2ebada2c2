#!/usr/bin/env bash
# loom sim end to end on federated Shakespeare (small and fast): outputs, config files, resume,
# determinism across worker counts, and the errors for impossible configurations.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
cat > "$tmp/cfg.json" <<'JSON'
{"model": "tiny", "rounds": 3, "sample": 4, "local-steps": 2, "batch": 2, "seq": 32, "eval-every": 3,
 "eval-clients": 5, "sample-len": 20, "checkpoint-every": 1, "seed": 3}
JSON
"$LOOM" sim --config "$tmp/cfg.json" --out "$tmp/a" --workers 1 > "$tmp/a.out" 2> "$tmp/a.err"
check "sim exits 0" test $? -eq 0
check "3 round rows" test "$(grep -c '"type":"round"' "$tmp/a/metrics.jsonl")" -eq 3
check "4 client rows per round" test "$(grep -c '"type":"client"' "$tmp/a/metrics.jsonl")" -eq 12
check "eval in the last round" grep -q '"round":3.*"eval_acc"' "$tmp/a/metrics.jsonl"
check "bytes counted" grep -q '"bytes_up":[1-9]' "$tmp/a/metrics.jsonl"
check "global model written" test -s "$tmp/a/global.safetensors"
check "checkpoint written" test -s "$tmp/a/checkpoint.safetensors"
check "plot written" grep -q '<svg' "$tmp/a/accuracy.svg"
check "summary table" grep -q 'final eval accuracy' "$tmp/a.out"
check "progress lines" grep -q 'round    3/3' "$tmp/a.err"
# the same run on 3 workers gives the same global model, byte for byte
"$LOOM" sim --config "$tmp/cfg.json" --out "$tmp/b" --workers 3 > /dev/null 2>&1
check "workers 1 == workers 3" cmp -s "$tmp/a/global.safetensors" "$tmp/b/global.safetensors"
# a command-line flag overrides the config file
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --out "$tmp/c" > /dev/null 2>&1
check "flag overrides config" test "$(grep -c '"type":"round"' "$tmp/c/metrics.jsonl")" -eq 1
# resume from round 1 to 3 equals the straight run
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --out "$tmp/d" > /dev/null 2>&1
"$LOOM" sim --config "$tmp/cfg.json" --out "$tmp/d" --resume > /dev/null 2>&1
check "resume == straight" cmp -s "$tmp/a/global.safetensors" "$tmp/d/global.safetensors"
# a reused --out holding an earlier run's checkpoint is refused without --resume, before any work
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --out "$tmp/d" > /dev/null 2> "$tmp/e7"
check "stale checkpoint refused" test $? -ne 0
check "stale checkpoint message names --resume" grep -q -- 'earlier run: pass --resume' "$tmp/e7"
# --resume with no rounds left is refused (not a silent exit 0)
"$LOOM" sim --config "$tmp/cfg.json" --rounds 2 --out "$tmp/d" --resume > /dev/null 2> "$tmp/e8"
check "resume with fewer rounds refused" test $? -ne 0
check "resume message names --rounds" grep -q -- 'finished 3 rounds, so --rounds 2 leaves nothing to do' "$tmp/e8"
"$LOOM" sim --config "$tmp/cfg.json" --max-update-norm -1 --out "$tmp/g" > /dev/null 2> "$tmp/e9"
check "negative --max-update-norm refused" grep -Eq -- '--max-update-norm (must be finite and >= 0|expects a finite number in \[0,)' "$tmp/e9"
check "nothing written for a refused run" test ! -e "$tmp/g/metrics.jsonl"
# other strategies run
for s in fedsgd fedprox fedavgm fedadam fedyogi fedadagrad scaffold; do
  "$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --strategy $s --sample-len 0 > /dev/null 2> "$tmp/s.err"
  check "strategy $s runs" test $? -eq 0
done
# impossible configurations: exit status 1 (or 2 for a usage error) and a message naming the flag
refuse "sample > clients" 12 '--sample' '1000' -- "$LOOM" sim --config "$tmp/cfg.json" --sample 1000
refuse "unknown strategy" 12 'fedfoo' 'fedavg' -- "$LOOM" sim --config "$tmp/cfg.json" --strategy fedfoo
refuse "tau < 0" 12 '--tau' 'must|positive|> *0|expects .*\[0,' -- "$LOOM" sim --config "$tmp/cfg.json" --strategy fedadam --tau -0.5
refuse "server momentum >= 1" 12 '--server-momentum' 'must|\[0, *1[])]|< *1' -- "$LOOM" sim --config "$tmp/cfg.json" \
    --strategy fedavgm --server-momentum 1.5
refuse "local steps 0" 12 '--local-steps' 'must|>= *1|at least|\[1,' -- "$LOOM" sim --config "$tmp/cfg.json" --local-steps 0
printf '{"rounds": }' > "$tmp/bad.json"
refuse "bad config file" 12 'bad\.json' -- "$LOOM" sim --config "$tmp/bad.json"
refuse "missing config file" 12 'no-such\.json' -- "$LOOM" sim --config "$tmp/no-such.json"
"$LOOM" sim --config "$tmp/cfg.json" --fault 1:nan --sample 88 --local-steps 1 --out "$tmp/f" --rounds 1 > /dev/null 2>&1
check "faulty client rejected and counted" grep -q '"rejected":1' "$tmp/f/metrics.jsonl"
# a client that fails is a refused update with its reason; the round goes on
"$LOOM" sim --config "$tmp/cfg.json" --fault 2:fail --sample 88 --local-steps 1 --out "$tmp/ff" --rounds 1 --sample-len 0 > /dev/null 2>&1
check "failed client: the run completes" test -s "$tmp/ff/global.safetensors"
check "failed client: its row says client failure" grep -q '"client":2,.*"status":"client failure"' "$tmp/ff/metrics.jsonl"
check "failed client: 87 accepted" grep -q '"accepted":87,"rejected":1' "$tmp/ff/metrics.jsonl"
# the virtual clock: with a spread of client speeds and a deadline, the slow clients are late; the same
# run on 1 and 3 workers gives the same bits
for w in 1 3; do
  "$LOOM" sim --config "$tmp/cfg.json" --sample 20 --rounds 1 --sample-len 0 --step-seconds 1 --time-spread 1 \
      --deadline 2.5 --workers $w --out "$tmp/dl$w" > /dev/null 2>&1
done
late=$(grep -c '"status":"late"' "$tmp/dl1/metrics.jsonl")
check "deadline: some clients late ($late), not all" test "$late" -gt 0 -a "$late" -lt 20
check "deadline: workers 1 == workers 3" cmp -s "$tmp/dl1/global.safetensors" "$tmp/dl3/global.safetensors"
refuse "negative deadline" 12 '--deadline' -- "$LOOM" sim --config "$tmp/cfg.json" --deadline -1
# the server's clip of each update: a tiny bound moves the model less than no bound
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --sample-len 0 --out "$tmp/nc" > /dev/null 2>&1
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --sample-len 0 --update-clip 1e6 --out "$tmp/uc0" > /dev/null 2>&1
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --sample-len 0 --update-clip 1e-6 --out "$tmp/uc" > /dev/null 2>&1
check "update clip runs" test -s "$tmp/uc/global.safetensors"
check "a clip above every norm changes nothing" cmp -s "$tmp/uc0/global.safetensors" "$tmp/nc/global.safetensors"
check "a tiny clip changes the result" bash -c "! cmp -s '$tmp/uc/global.safetensors' '$tmp/nc/global.safetensors'"
# 1,000 clients with a LoRA trainable set, all participating: only LoRA vectors travel, the base is shared
"$LOOM" sim --model tiny --peft lora --lora-r 4 --target-modules c_attn --data "$LOOM_SHARED/data/sst2/train.tsv" \
    --format tsv --text-col sentence --label-col label --partition iid --clients 1000 --rounds 1 --local-steps 1 \
    --batch 1 --seq 16 --eval-clients 10 --sample-len 0 --workers 2 --out "$tmp/lora" > "$tmp/lora.out" 2> "$tmp/lora.err"
check "1000 LoRA clients run" test $? -eq 0
check "1000 client rows" test "$(grep -c '"type":"client"' "$tmp/lora/metrics.jsonl")" -eq 1000
check "classification accuracy reported" grep -q '"eval_acc"' "$tmp/lora/metrics.jsonl"
check "adapter in PEFT layout" test -s "$tmp/lora/adapter/adapter_model.safetensors" -a -s "$tmp/lora/adapter/adapter_config.json"
check "only the LoRA vector travels" grep -q 'trainable vector *[0-9]* floats (0.0' "$tmp/lora.out"
# --clients-dir: one data file per client, numbered in byte order of the names (the file's stem)
small="--batch 2 --seq 32 --eval-every 0 --eval-clients 1" # these runs check orders and identities, not learning
mkdir -p "$tmp/cd" "$tmp/cd2" "$tmp/cdempty"
head -c 20000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/carol.txt"
tail -c 15000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
head -c 60000 "$LOOM_SHARED/data/tinyshakespeare/input.txt" | tail -c 12000 > "$tmp/cd/bob.txt"
touch "$tmp/cd/.hidden"
cp "$tmp/cd/bob.txt" "$tmp/cd2/bob.txt"; cp "$tmp/cd/carol.txt" "$tmp/cd2/carol.txt"; cp "$tmp/cd/alice.txt" "$tmp/cd2/alice.txt"
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 2 --local-steps 2 --sample 2 --sample-len 0 --out "$tmp/cdo" > /dev/null 2>&1
check "clients-dir runs" test -s "$tmp/cdo/global.safetensors"
names=$(grep '"type":"client","round":1' "$tmp/cdo/metrics.jsonl" | sed 's/.*"name":"\([a-z]*\)".*/\1/' | tr '\n' ' ')
clients=$(grep '"type":"round","round":1' "$tmp/cdo/metrics.jsonl" | sed 's/.*"clients":\[\([0-9,]*\)\].*/\1/')
want=""
for k in ${clients//,/ }; do want="$want$(echo alice bob carol | cut -d' ' -f$((k + 1))) "; done
check "clients-dir: client k is the k-th name in byte order ($names / $clients)" test "$names" = "$want"
"$LOOM" sim --clients-dir "$tmp/cd2" $small --rounds 2 --local-steps 2 --sample 2 --sample-len 0 --out "$tmp/cdo2" > /dev/null 2>&1
check "clients-dir: the order of creation does not matter" cmp -s "$tmp/cdo/global.safetensors" "$tmp/cdo2/global.safetensors"
mv "$tmp/cd2/alice.txt" "$tmp/cd2/zed.txt"
"$LOOM" sim --clients-dir "$tmp/cd2" $small --rounds 2 --local-steps 2 --sample 2 --sample-len 0 --out "$tmp/cdo3" > /dev/null 2>&1
check "clients-dir: renaming a client renumbers the clients" bash -c "! cmp -s '$tmp/cdo/global.safetensors' '$tmp/cdo3/global.safetensors'"
refuse "clients-dir with --data" 12 'clients-dir' 'replaces --data' -- "$LOOM" sim --clients-dir "$tmp/cd" --data "$tmp/cd/bob.txt"
refuse "empty clients-dir" 12 'cdempty' 'no data files' -- "$LOOM" sim --clients-dir "$tmp/cdempty"
refuse "missing clients-dir" 12 'nonexistent' -- "$LOOM" sim --clients-dir "$tmp/nonexistent"
: > "$tmp/cd2/tiny.txt"
refuse "clients-dir file without examples" 12 'tiny.txt' -- "$LOOM" sim --clients-dir "$tmp/cd2" $small --rounds 1
# asynchronous modes: FedBuff with every client in every buffer, equal speeds, is synchronous FedAvg
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 2 --local-steps 2 --sample-len 0 --out "$tmp/sy" > /dev/null 2>&1
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 2 --local-steps 2 --sample-len 0 --mode fedbuff --buffer 3 --concurrency 3 \
    --out "$tmp/fb" > /dev/null 2>&1
check "fedbuff K = N == sync fedavg, bit for bit" cmp -s "$tmp/sy/global.safetensors" "$tmp/fb/global.safetensors"
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 4 --local-steps 2 --sample-len 0 --mode fedasync --staleness hinge:0.5:1 \
    --concurrency 3 --step-seconds 1 --time-spread 1 --out "$tmp/fa" > /dev/null 2>&1
check "fedasync: one row per version" test "$(grep -c '"type":"round"' "$tmp/fa/metrics.jsonl")" -eq 4
check "fedasync: staleness in the rows" grep -q '"staleness_max"' "$tmp/fa/metrics.jsonl"
check "fedasync: some update was stale" grep -q '"staleness":[1-9]' "$tmp/fa/metrics.jsonl"
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 4 --local-steps 2 --sample-len 0 --mode fedasync --async-alpha 0 \
    --concurrency 3 --out "$tmp/fa0" > /dev/null 2>&1
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 1 --local-steps 1 --sample-len 0 --lr 0 --out "$tmp/lr0" > /dev/null 2>&1
check "fedasync alpha 0 leaves the model (== an lr 0 round)" test "$(st_data "$tmp/fa0/global.safetensors")" = "$(st_data "$tmp/lr0/global.safetensors")"
"$LOOM" sim --clients-dir "$tmp/cd" $small --rounds 2 --local-steps 2 --sample-len 0 --mode fedasync --concurrency 2 \
    --compress int8 --out "$tmp/fac" > /dev/null 2>&1
check "fedasync with int8 compression runs" test -s "$tmp/fac/global.safetensors"
up=$(grep -o '"type":"round".*"bytes_up":[0-9]*' "$tmp/fac/metrics.jsonl" | head -1 | sed 's/.*"bytes_up"://')
check "fedasync int8: a quarter of the f32 bytes up ($up)" test "${up:-0}" -gt 0 -a "${up:-0}" -lt 1000000
refuse "unknown mode" 12 '--mode' 'fedasync' -- "$LOOM" sim --mode bogus
refuse "bad staleness" 12 '--staleness' -- "$LOOM" sim --staleness hinge:x
refuse "async resume" 12 'resume' -- "$LOOM" sim --clients-dir "$tmp/cd" --mode fedasync --rounds 8 --out "$tmp/fa" --resume
# simulated attackers (sim_attack.c): their client rows are marked; bad --attack flags are refused
"$LOOM" sim --config "$tmp/cfg.json" --rounds 1 --eval-every 0 --sample-len 0 --checkpoint-every 0 --attack alie \
    --attackers 0.5 --out "$tmp/atk" > /dev/null 2>&1
check "attack run exits 0" test $? -eq 0
check "attackers' rows marked" test "$(grep -c '"attacker":true' "$tmp/atk/metrics.jsonl")" -ge 1
refuse "unknown attack" 12 "--attack 'sybil'" -- "$LOOM" sim --attack sybil --attackers 2
refuse "attack without attackers" 12 '--attackers N or FRACTION' -- "$LOOM" sim --attack ipm
refuse "backdoor flag without a backdoor" 12 '--backdoor-frac needs --attack backdoor' -- "$LOOM" sim --attack ipm \
    --attackers 2 --backdoor-frac 0.2
refuse "embedding poisoning of a LoRA set" 12 'use full fine-tuning' 'freeze the embedding' -- "$LOOM" sim --model tiny \
    --rounds 1 --sample-len 0 --attack embedding --attackers 2 --peft lora
# FLTrust: the server trains on its root examples each round and trusts updates by their cosine with
# its own; when every client flips its update's sign, no update is trusted and the model stays put
ft="--rounds 1 --sample 4 --local-steps 1 --batch 2 --seq 32 --eval-every 0 --eval-clients 1 --sample-len 0 --checkpoint-every 0"
"$LOOM" sim $ft --aggregator fltrust --root-examples 20 --attack signflip --attackers 88 --out "$tmp/ft0" > /dev/null 2>&1
"$LOOM" sim $ft --aggregator fltrust --root-examples 20 --out "$tmp/ft1" > /dev/null 2>&1
"$LOOM" sim $ft --lr 0 --out "$tmp/ftl0" > /dev/null 2>&1
check "fltrust: all updates flipped -> none trusted (== an lr 0 round)" test -s "$tmp/ft0/global.safetensors" -a "$(st_data "$tmp/ft0/global.safetensors")" = "$(st_data "$tmp/ftl0/global.safetensors")"
check "fltrust: honest clients move the model" test -s "$tmp/ft1/global.safetensors" -a "$(st_data "$tmp/ft1/global.safetensors")" != "$(st_data "$tmp/ftl0/global.safetensors")"
refuse "fltrust with --clients-dir" 12 'fltrust' 'clients-dir' -- "$LOOM" sim --clients-dir "$tmp/cd" --aggregator fltrust
refuse "fltrust: more root examples than data" 12 '--root-examples' -- "$LOOM" sim $ft --aggregator fltrust --root-examples 999999
refuse "bulyan with too few clients a round" 12 'bulyan' '4f \+ 3' '--sample' -- "$LOOM" sim $ft --aggregator bulyan --agg-f 2
refuse "root data without fltrust" 12 '--root-data' 'fltrust' -- "$LOOM" sim $ft --root-data "$tmp/cd/bob.txt"
check "sim --help" "$LOOM" sim --help > /dev/null
echo "$pass passed, $fail failed"
test $fail -eq 0
