#!/usr/bin/env bash
# Federated unlearning, verified (README "Unlearning"): a small byte-level GPT-2 (2 layers, 64 wide,
# pretrained on other Shakespeare) is fully fine-tuned by FedAvg over 4 clients of 32 lines each
# (Adam, enough local steps to memorise). Each client in turn is removed, exactly (loom unlearn --mode
# exact: the retrain from scratch without it) and approximately (FedEraser: --mode approx, with half and
# with all of the local steps as calibration). For each model: the membership-inference audit (loom
# audit mia) of the removed client's 32 lines against 32 lines of the same passages it never had (the
# lines in between), and the L2 distance to the retrain and to the original model.
#   usage: bench/unlearn.sh [LOOM] [WORKDIR]   (about a minute on 2 cores)
set -eu
LOOM=${1:-./build-dev/loom}
W=${2:-$(mktemp -d /tmp/loom_unlearn_XXXXXX)}
SHARED=${LOOM_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}
export LOOM_SHARED=$SHARED
mkdir -p "$W"
cd "$W"
LOOM=$(command -v "$LOOM" || realpath "$LOOM")
awk 'length($0) > 20' "$SHARED/data/tinyshakespeare/input.txt" > lines.txt
printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 128, "vocab_size": 259}' > small.json
[ -s base/model.safetensors ] || {
    sed -n '20001,24000p' lines.txt > pre.txt
    "$LOOM" train --model small.json --data pre.txt --batch 8 --seq 64 --val-frac 0 --sample-len 0 --threads 2 --lr 3e-3 \
        --steps 300 --out base > base.log 2>&1
}
mkdir -p cd
for i in 0 1 2 3; do # client i: the odd lines of a 64-line passage; its non-members: the even ones
    sed -n "$((3001 + i * 200)),$((3064 + i * 200))p" lines.txt | awk 'NR % 2 == 1' > cd/c$i.txt
    sed -n "$((3001 + i * 200)),$((3064 + i * 200))p" lines.txt | awk 'NR % 2 == 0' > non$i.txt
done
FL="--model base --clients-dir cd --rounds 10 --local-steps 20 --optimizer adamw --lr 3e-3 --batch 8 --seq 64
    --test-frac 0 --eval-every 0 --sample-len 0 --quiet-clients --workers 2"
rm -rf orig
# shellcheck disable=SC2086
"$LOOM" sim $FL --keep-checkpoints 2 --keep-updates 1 --out orig > orig.log 2>&1
asmodel() { mkdir -p "$2" && cp base/config.json "$2/" && cp "$1" "$2/model.safetensors"; }
auc() { "$LOOM" audit mia --model "$1" --members "cd/$2.txt" --nonmembers "non${2#c}.txt" --reference base --threads 2 --json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f %.3f" % (j["loss"]["auc"], j["reference"]["auc"]))'; }
dist() { python3 - "$1" "$2" << 'EOF'
import json, struct, sys, math
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: struct.unpack('<%df' % ((v['data_offsets'][1] - v['data_offsets'][0]) // 4), d[v['data_offsets'][0]:v['data_offsets'][1]])
            for k, v in h.items() if k != '__metadata__'}
a, b = load(sys.argv[1]), load(sys.argv[2])
print('%.4g' % math.sqrt(sum((x - y) ** 2 for k in a for x, y in zip(a[k], b[k]))))
EOF
}
asmodel orig/global.safetensors m_orig
echo "| removed | model | AUC loss | AUC calibrated | distance to retrain | distance to original | seconds |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for t in c0 c1 c2 c3; do
    rm -rf "ex_$t" "ap_$t" "apf_$t"
    s0=$(date +%s.%N)
    "$LOOM" unlearn --client $t --run orig --mode exact --out "ex_$t" --workers 2 > "ex_$t.log" 2>&1
    s1=$(date +%s.%N)
    "$LOOM" unlearn --client $t --run orig --mode approx --out "ap_$t" --workers 2 > "ap_$t.log" 2>&1
    s2=$(date +%s.%N)
    "$LOOM" unlearn --client $t --run orig --mode approx --calibration-steps 20 --out "apf_$t" --workers 2 > "apf_$t.log" 2>&1
    s3=$(date +%s.%N)
    for m in ex ap apf; do asmodel "${m}_$t/global.safetensors" "m_${m}_$t"; done
    R=ex_$t/global.safetensors
    echo "| $t | original | $(auc m_orig $t | tr ' ' '|') | $(dist orig/global.safetensors $R) | 0 | - |"
    echo "| $t | exact (retrain) | $(auc "m_ex_$t" $t | tr ' ' '|') | 0 | $(dist $R orig/global.safetensors) | $(echo "$s1 - $s0" | bc) |"
    echo "| $t | FedEraser, 10 calibration steps | $(auc "m_ap_$t" $t | tr ' ' '|') | $(dist "ap_$t/global.safetensors" $R) | $(dist "ap_$t/global.safetensors" orig/global.safetensors) | $(echo "$s2 - $s1" | bc) |"
    echo "| $t | FedEraser, 20 calibration steps | $(auc "m_apf_$t" $t | tr ' ' '|') | $(dist "apf_$t/global.safetensors" $R) | $(dist "apf_$t/global.safetensors" orig/global.safetensors) | $(echo "$s3 - $s2" | bc) |"
done
echo "original run: $(grep -E '^time' orig.log); kept: $(du -sh orig/unlearn/updates | cut -f1) of updates, $(du -ch orig/unlearn/start_* | tail -1 | cut -f1) of checkpoints"
