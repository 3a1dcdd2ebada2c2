#!/usr/bin/env bash
# The attack/defence matrix: every simulated attack against every aggregation rule, on one federated
# classification task, with the final clean accuracy, clean loss and (backdoor, embedding poisoning)
# attack success of each cell, as a markdown table and an SVG heat map.
#
# The setting: AG News titles (../shared/data/ag-news/test.csv: 7,600 news titles, 4 topics named world,
# sports, business, science as the verbalizers). The model is the pretrained stories260K Llama (llama2.c,
# 512-token vocabulary), first fine-tuned centrally on the even rows (public data: 2,000 AdamW steps of
# 8 x 48 tokens, lr 0.002; about 0.48 accuracy, chance is 0.25), then federated on the odd rows, split
# IID among 20 clients, all of them in every round; 4 of them attack (f = 4, chosen by the seed). Full
# fine-tuning (the embedding poisoning attack needs the token embeddings in the trainable set) by
# AdamW on each client, ROUNDS rounds of LOCAL_STEPS steps of BATCH x SEQ tokens. Evaluation after the
# last round on every client's test examples (20% of each client's).
#
# Rules: fedavg (the weighted mean), krum, multi-krum, bulyan (all with f = 4), median, trimmed-mean
# (beta 0.2: 4 cut from each end), geomedian, centered-clip and norm-bound (tau and bound = the median
# L2 norm of the honest updates of the first cell, fedavg without attack), fltrust (100 root examples).
# Attacks (loom sim --attack): none, gaussian (sigma 1), signflip, scale (x10), alie, ipm (epsilon 0.1),
# labelflip, backdoor (trigger "cf" -> world, half of each attacker's examples), embedding (the trigger's
# embedding rows only, boosted x200: those rows are a tiny part of the vector, so the boosted update's
# norm is still only about 5 times an honest one's; at x1 the attack does nothing measurable here).
#
# Usage: bash bench/robustness.sh [--readme]
#   --readme  also copy the heat map to docs/robustness-heatmap.svg and replace the README's table
#             between the markers <!-- robustness:begin --> and <!-- robustness:end -->
# Environment: ROUNDS (5), LOCAL_STEPS (5), BATCH (8), SEQ (48), LR (0.001), WORKERS (2), SEED (1),
# RULES and ATTACKS (space-separated subsets of the lists above), LOOM_BIN (a loom binary to use
# instead of building build/loom). Runs go to runs/bench-robustness/; a finished cell is not run again
# (delete its directory to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
readme=0
[ "${1:-}" = --readme ] && readme=1
rounds=${ROUNDS:-5}
local_steps=${LOCAL_STEPS:-5}
batch=${BATCH:-8}
seq=${SEQ:-48}
lr=${LR:-0.001}
workers=${WORKERS:-2}
seed=${SEED:-1}
rules=${RULES:-"fedavg krum multi-krum bulyan median trimmed-mean geomedian centered-clip norm-bound fltrust"}
attacks=${ATTACKS:-"none gaussian signflip scale alie ipm labelflip backdoor embedding"}
command -v python3 > /dev/null || { echo "robustness: needs python3" >&2; exit 1; }
. bench/lib.sh
S="$LOOM_SHARED/data/stories260K"
out=runs/bench-robustness
mkdir -p "$out"
data="$out/ag_news_odd.csv"
public="$out/ag_news_even.csv"
[ -s "$data" ] || awk 'NR % 2 == 1' "$LOOM_SHARED/data/ag-news/test.csv" > "$data"
[ -s "$public" ] || awk 'NR % 2 == 0' "$LOOM_SHARED/data/ag-news/test.csv" > "$public"
labels=(--format csv --text-col 2 --label-col 1 --labels world,sports,business,science)
if [ ! -s "$out/warm/model.safetensors" ]; then
  echo "robustness: fine-tuning stories260K on the public half (once; about a minute)"
  "$L" train --model "$S/stories260K.bin" --tokenizer "$S/tok512.bin" --peft full --data "$public" "${labels[@]}" \
    --steps 2000 --batch 8 --seq 48 --optimizer adamw --lr 0.002 --eval-every 0 --sample-len 0 --threads 2 \
    --out "$out/warm" > "$out/warm.log" 2>&1 || { echo "robustness: the warm start failed, see $out/warm.log" >&2; exit 1; }
fi

common=(--model "$out/warm" --tokenizer "$S/tok512.bin" --peft full --data "$data" "${labels[@]}" --clients 20 --rounds "$rounds"
        --local-steps "$local_steps" --batch "$batch" --seq "$seq" --optimizer adamw --lr "$lr" --eval-every 0
        --sample-len 0 --workers "$workers" --seed "$seed")

rule_flags() {
  case "$1" in
  fedavg) ;;
  krum | multi-krum | bulyan) echo "--aggregator $1 --agg-f 4" ;;
  trimmed-mean) echo "--aggregator trimmed-mean --agg-beta 0.2" ;;
  centered-clip) echo "--aggregator centered-clip --agg-tau $norm" ;;
  norm-bound) echo "--aggregator norm-bound --agg-bound $norm" ;;
  fltrust) echo "--aggregator fltrust --root-examples 100" ;;
  *) echo "--aggregator $1" ;;
  esac
}

# run_cell RULE ATTACK: one loom sim run into $out/RULE.ATTACK (skipped when already finished)
run_cell() {
  local dir="$out/$1.$2" t0
  [ -s "$dir/global.safetensors" ] && return 0
  rm -rf "$dir"
  t0=$(date +%s)
  # shellcheck disable=SC2046
  local atk=()
  [ "$2" = none ] || atk=(--attack "$2" --attackers 4)
  [ "$2" = embedding ] && atk+=(--attack-scale 200)
  if ! "$L" sim "${common[@]}" $(rule_flags "$1") "${atk[@]}" --out "$dir" > "$dir.log" 2>&1; then
    echo "robustness: $1 x $2 failed, see $dir.log" >&2
    tail -3 "$dir.log" >&2
    return 1
  fi
  echo "  $1 x $2: $(( $(date +%s) - t0 ))s"
}

# the honest clients' median update norm in the first cell: the scale of tau and the norm bound
echo "robustness: $rounds rounds x $local_steps steps of $batch x $seq tokens, 20 clients, f = 4"
norm=1
run_cell fedavg none
norm=$(python3 - "$out/fedavg.none/metrics.jsonl" << 'PY'
import json, statistics, sys
norms = [r["update_norm"] for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "client" and r.get("update_norm")]
print("%.4g" % statistics.median(norms))
PY
)
echo "  median honest update norm: $norm (centered-clip tau, norm-bound bound)"
for a in $attacks; do
  for r in $rules; do run_cell "$r" "$a" || true; done
done
# the trigger's effect without any training (lr 0: nobody moves the model): the base rate of attack success
base="$out/base.backdoor"
if [ ! -s "$base/global.safetensors" ]; then
  rm -rf "$base"
  "$L" sim "${common[@]}" --rounds 1 --lr 0 --attack backdoor --attackers 4 --out "$base" > "$base.log" 2>&1 ||
    { echo "robustness: the base-rate run failed, see $base.log" >&2; exit 1; }
fi

python3 - "$out" "$readme" "$rounds" "$local_steps" "$batch" "$seq" "$norm" "$rules" "$attacks" << 'PY'
import json, math, os, sys
out, readme = sys.argv[1], sys.argv[2] == "1"
rounds, steps, batch, seq, norm = sys.argv[3:8]
rules, attacks = sys.argv[8].split(), sys.argv[9].split()
targeted = {"backdoor", "embedding"}

def last_round(rule, attack):
    path = os.path.join(out, "%s.%s" % (rule, attack), "metrics.jsonl")
    row = None
    try:
        for line in open(path):
            r = json.loads(line)
            if r.get("type") == "round":
                row = r
    except OSError:
        return None
    return row

cells = {(r, a): last_round(r, a) for r in rules for a in attacks}
b = last_round("base", "backdoor")
base = ("; the trigger alone, before any training, gets attack success %.2f" % b["attack_success"]
        if b and "attack_success" in b else "")
def fmt(row, attack):
    if not row or "eval_acc" not in row:
        return "failed"
    s = "%.3f / %.3f" % (row["eval_acc"], row["eval_loss"])
    if attack in targeted:
        s += " / %.2f" % row["attack_success"] if "attack_success" in row else " / -"
    return s

lines = ["| attack \\ rule | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
for a in attacks:
    lines.append("| %s | " % a + " | ".join(fmt(cells[(r, a)], a) for r in rules) + " |")
table = "\n".join(lines)
caption = ("Final clean accuracy / clean loss (and attack success for backdoor and embedding) after %s rounds "
           "of %s local AdamW steps (%s x %s tokens), AG News titles, 20 clients of which 4 attack, stories260K "
           "(warm-started on the public half) fully fine-tuned; tau and the norm bound %s%s. Written by "
           "bench/robustness.sh." % (rounds, steps, batch, seq, norm, base))
open(os.path.join(out, "table.md"), "w").write(caption + "\n\n" + table + "\n")

# heat map: clean accuracy per cell (green high, red low); targeted attacks also show attack success
cw, ch, left, top = 92, 34, 110, 72
W, H = left + cw * len(rules) + 20, top + ch * len(attacks) + 60
accs = [c["eval_acc"] for c in cells.values() if c and "eval_acc" in c]
lo, hi = (min(accs), max(accs)) if accs else (0, 1)
if hi - lo < 1e-9:
    hi = lo + 1e-9
def colour(t):  # t in [0, 1]: red (bad for the defence) .. green (good)
    t = min(1.0, max(0.0, t))
    r, g = int(220 * (1 - t) + 30 * t), int(60 * (1 - t) + 170 * t)
    return "rgb(%d,%d,90)" % (r, g)
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
       '<rect width="100%" height="100%" fill="white"/>',
       '<text x="%d" y="20" font-size="13">Colour: clean accuracy (red %.3f .. green %.3f); backdoor and embedding '
       'rows: 1 - attack success (green: the backdoor failed).</text>' % (left, lo, hi),
       '<text x="%d" y="36" font-size="13">Text: clean accuracy, and attack success.</text>' % left]
for j, r in enumerate(rules):
    svg.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % (left + cw * j + cw // 2, top - 8, r))
for i, a in enumerate(attacks):
    y = top + ch * i
    svg.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + ch // 2 + 4, a))
    for j, r in enumerate(rules):
        c, x = cells[(r, a)], left + cw * j
        if not c or "eval_acc" not in c:
            svg.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#ccc" stroke="white"/>' % (x, y, cw, ch))
            continue
        label = "%.3f" % c["eval_acc"]
        if a in targeted and "attack_success" in c:
            label += ", %.2f" % c["attack_success"]
        t = (1 - c["attack_success"]) if a in targeted and "attack_success" in c else (c["eval_acc"] - lo) / (hi - lo)
        svg.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s" stroke="white"/>' % (x, y, cw, ch, colour(t)))
        svg.append('<text x="%d" y="%d" text-anchor="middle" fill="white">%s</text>' % (x + cw // 2, y + ch // 2 + 4, label))
svg.append('<text x="%d" y="%d">%s</text>' % (left, H - 20, "AG News titles, 20 clients (4 attackers), stories260K, %s rounds" % rounds))
svg.append("</svg>")
open(os.path.join(out, "heatmap.svg"), "w").write("\n".join(svg) + "\n")
print(caption + "\n\n" + table)
print("\nwrote %s/table.md and %s/heatmap.svg" % (out, out))
if readme:
    import shutil
    shutil.copy(os.path.join(out, "heatmap.svg"), "docs/robustness-heatmap.svg")
    text = open("README.md").read()
    b, e = "<!-- robustness:begin -->", "<!-- robustness:end -->"
    if b in text and e in text:
        pre, rest = text.split(b, 1)
        _, post = rest.split(e, 1)
        block = "%s\n%s\n\n%s\n\n![attack/defence heat map](docs/robustness-heatmap.svg)\n%s" % (b, caption, table, e)
        open("README.md", "w").write(pre + block + post)
        print("updated README.md and docs/robustness-heatmap.svg")
    else:
        print("README.md has no robustness markers: table not inserted", file=sys.stderr)
PY
