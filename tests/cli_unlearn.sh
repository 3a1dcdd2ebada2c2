#!/usr/bin/env bash
# loom unlearn: what loom sim keeps (round membership, start checkpoints, client updates); exact
# unlearning equals a run in which the client never had data, bit for bit (from round 1, and from a kept
# checkpoint); FedEraser's properties (its limit is the exact retrain, the removed client's stored
# updates are never read, a client that contributed nothing changes nothing); the refusals.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
IN=$SHARED/data/tinyshakespeare/input.txt
mkdir -p "$tmp/cd" "$tmp/cd2"
head -c 12000 "$IN" > "$tmp/cd/a.txt"
head -c 24000 "$IN" | tail -c 12000 > "$tmp/cd/b.txt"
head -c 36000 "$IN" | tail -c 12000 > "$tmp/cd/c.txt"
cp "$tmp/cd/a.txt" "$tmp/cd/b.txt" "$tmp/cd2/"
cat > "$tmp/run.json" <<'JSON'
{"model": "tiny", "rounds": 3, "local-steps": 2, "batch": 2, "seq": 32, "seed": 5, "eval-every": 3,
 "sample-len": 0, "quiet-clients": true}
JSON
LOOM=$(realpath "$LOOM")
SHARED=$(realpath "$SHARED")
export LOOM_SHARED=$SHARED
cd "$tmp" || exit 1 # the runs use relative paths, as a user would; loom unlearn finds them again

"$LOOM" sim --config run.json --clients-dir cd --out orig --keep-checkpoints 1 --keep-updates 1 > /dev/null 2> orig.err
check "original run" test -s orig/global.safetensors
check "membership: one row per round" test "$(wc -l < orig/unlearn/membership.jsonl)" -eq 3
# the weights are the examples each client reported (its metrics rows)
wa=$(grep '"type":"client","round":2,"client":0,' orig/metrics.jsonl | sed 's/.*"examples":\([0-9]*\).*/\1/')
check "membership: clients and weights of round 2" grep -q "^{\"round\":2,\"clients\":\[0,1,2\],\"weights\":\[$wa," orig/unlearn/membership.jsonl
check "start checkpoints of rounds 2 and 3 kept" test -s orig/unlearn/start_000002.safetensors -a -s orig/unlearn/start_000003.safetensors
check "round 1's start is not written (the initial model)" test ! -e orig/unlearn/start_000001.safetensors
check "9 client updates kept" test "$(ls orig/unlearn/updates | wc -l)" -eq 9

# exact: removing c (the last file, every client in every round) == the run without c's file
"$LOOM" sim --config run.json --clients-dir cd2 --out fresh > /dev/null 2>&1
"$LOOM" unlearn --client c --run orig --mode exact --out ex --reference fresh/global.safetensors > ex.out 2> ex.err
check "exact unlearning exits 0" test $? -eq 0
check "exact == a run without the client's data, bit for bit" test "$(st_data ex/global.safetensors)" = "$(st_data fresh/global.safetensors)"
check "the unlearned model differs from the original" test "$(st_data ex/global.safetensors)" != "$(st_data orig/global.safetensors)"
check "report: restart at round 1" grep -q '"restart_round": 1' ex/unlearn.json
check "report: distance to the reference 0" grep -Eq 'distance to the reference +0$' ex.out
check "the original run is untouched" test "$(ls orig/unlearn/updates | wc -l)" -eq 9 -a ! -e orig/unlearn.json

# a resumed run (2 rounds, then resumed to 3) unlearns over all of its rounds
"$LOOM" sim --config run.json --clients-dir cd --out rs --rounds 2 --checkpoint-every 1 --keep-checkpoints 1 > /dev/null 2>&1
"$LOOM" sim --config run.json --clients-dir cd --out rs --checkpoint-every 1 --keep-checkpoints 1 --resume > /dev/null 2>&1
"$LOOM" unlearn --client c --run rs --mode exact --out rsu > /dev/null 2>&1
check "a resumed run: exact == the run without the client" test "$(st_data rsu/global.safetensors)" = "$(st_data fresh/global.safetensors)"

# exact from a kept checkpoint: with 3 of 88 clients a round, AUTOLYCUS first joins in round 4; with
# checkpoints every 2 rounds the retrain restarts at round 3 and equals a run that removed it from round 1
cat > s.json <<'JSON'
{"model": "tiny", "rounds": 5, "sample": 3, "local-steps": 2, "batch": 2, "seq": 32, "seed": 3, "eval-every": 5,
 "eval-clients": 4, "sample-len": 0, "quiet-clients": true}
JSON
"$LOOM" sim --config s.json --out so --keep-checkpoints 2 > /dev/null 2>&1
"$LOOM" sim --config s.json --out sx --exclude-client AUTOLYCUS > /dev/null 2>&1
"$LOOM" unlearn --client AUTOLYCUS --run so --mode exact --out sxu > /dev/null 2> sxu.err
check "restarted from round 3's kept checkpoint" grep -q 'first contributed in round 4; retraining from round 3' sxu.err
check "exact from a checkpoint == removed from the start, bit for bit" test "$(st_data sxu/global.safetensors)" = "$(st_data sx/global.safetensors)"
check "the removed client is never sampled again" test "$(grep -c '"name":"AUTOLYCUS"' sxu/metrics.jsonl)" -eq 0
check "the others keep their rounds" test "$(grep -c '"type":"client"' sxu/metrics.jsonl)" -eq "$(grep '"type":"client"' so/metrics.jsonl | grep -v '"round":[12],' | grep -vc AUTOLYCUS)"

# approximate (FedEraser): calibrating every round with the full local steps and no rescaling is the retrain
"$LOOM" unlearn --client c --run orig --mode approx --calibration-steps 2 --no-rescale --out ap0 > /dev/null 2>&1
check "approx, full calibration, no rescaling == exact" test "$(st_data ap0/global.safetensors)" = "$(st_data ex/global.safetensors)"
# with rescaling it comes close to the retrain: much closer than the original model
"$LOOM" unlearn --client c --run orig --mode approx --calibration-steps 2 --out ap1 --reference fresh/global.safetensors > ap1.out 2>&1
d1=$(sed -n 's/^distance to the reference *//p' ap1.out)
d0=$(sed -n "s/^original's distance to the reference *//p" ap1.out)
check "approx is closer to the retrain than the original ($d1 < $d0 / 10)" num_lt "$d1" "$(awk -v d="$d0" 'BEGIN{print d/10}')"
# the removed client's stored updates are never read: garbage in them changes nothing ...
for f in orig/unlearn/updates/r*_c000002.safetensors; do printf 'not an update' > "$f"; done
"$LOOM" unlearn --client c --run orig --mode approx --calibration-steps 2 --out ap2 > /dev/null 2>&1
check "approx ignores the removed client's stored updates" test "$(st_data ap2/global.safetensors)" = "$(st_data ap1/global.safetensors)"
# ... while another client's are used (a broken one refuses that client)
printf 'not an update' > orig/unlearn/updates/r000002_c000001.safetensors
"$LOOM" unlearn --client c --run orig --mode approx --calibration-steps 2 --out ap3 > /dev/null 2> ap3.err
check "a broken stored update of another client changes the result" test "$(st_data ap3/global.safetensors)" != "$(st_data ap1/global.safetensors)"
check "... refuses that client, naming the file" grep -q 'round 2: client 1 failed: .*r000002_c000001.safetensors' ap3.err
check "... in its row" grep -q '"round":2,"client":1,.*"status":"client failure"' ap3/metrics.jsonl

# a client that contributed nothing (it failed in every round) changes nothing
"$LOOM" sim --config run.json --clients-dir cd --out fo --fault 2:fail --keep-updates 1 > /dev/null 2>&1
check "a failed client is not a member" test "$(grep -c '"clients":\[0,1\]' fo/unlearn/membership.jsonl)" -eq 3
for m in exact approx; do
  "$LOOM" unlearn --client c --run fo --mode $m --out "fo_$m" > "fo_$m.out" 2>&1
  check "$m: nothing to remove, the model is unchanged" test "$(st_data "fo_$m/global.safetensors")" = "$(st_data fo/global.safetensors)"
done
check "the report says so" grep -q 'contributed to no round' fo_exact.out

# refusals, with the flag or file named
refuse "unknown client" 1 "--client 'zed'" 'not a client' -- "$LOOM" unlearn --client zed --run orig --out z1
refuse "approx without kept updates" 1 '--keep-updates' 'kept none' -- "$LOOM" unlearn --client AUTOLYCUS --run so --mode approx --out z2
refuse "bad mode" 1 "--mode 'fast'" -- "$LOOM" unlearn --client c --run orig --mode fast --out z3
refuse "no run records" 1 '--run' 'unlearn/run.json' -- "$LOOM" unlearn --client c --run cd --out z4
refuse "out = run" 1 '--out must differ' -- "$LOOM" unlearn --client c --run orig --out orig
refuse "--run and --state" 1 'one of --run' -- "$LOOM" unlearn --client c --run orig --state orig --out z5
refuse "sim: unknown --exclude-client" 1 '--exclude-client' "'zed'" -- "$LOOM" sim --config run.json --clients-dir cd --exclude-client zed
refuse "sim: keep updates with secure aggregation" 1 '--keep-updates' 'secure' -- "$LOOM" sim --config run.json --clients-dir cd --secagg --keep-updates 1 --out z6
printf '{"round":1,"clients":[0,7],"weights":[1]}\n' > bad.jsonl
mkdir -p bad/unlearn && cp orig/unlearn/run.json bad/unlearn/ && cp bad.jsonl bad/unlearn/membership.jsonl
refuse "malformed membership" 1 'membership.jsonl:1' 'one length' -- "$LOOM" unlearn --client c --run bad --out z7
finish
