#!/usr/bin/env bash
# loom's speed side by side with what a user would otherwise run, on this machine, in one sitting.
#
# Training: one GPT-2 124M step (B=4, T=256: forward with full logits, mean cross-entropy, backward, AdamW),
# full fine-tuning and LoRA r=8 alpha=16 on c_attn, in loom (`loom bench train`, --precision f32 and bf16) and
# in PyTorch (../shared/bench/torch_baseline.py, f32 and --amp: bf16 autocast), tokens/s and peak RSS.
# Generation: greedy decoding of 256 tokens from BOS with a random Llama of llama2.c's 110M shape (dim 768,
# hidden 2048, 12 layers, 12 heads, vocabulary 32000, tied embedding, seed 1), the same weights in every engine:
# loom (`loom bench generate`, --weights f32, bf16 and int8), llama2.c's run.c (built here in a temporary folder with
# its README's flags) and llama.cpp (node-llama-cpp 3.21.1 from npm, installed in a temporary folder, reading
# the checkpoint converted to GGUF by ../shared/bench/llamacpp/llama2c_to_gguf.py: F32 and Q8_0), on 1 and 2
# threads: tokens/s, GB/s of weights streamed (the weight bytes one token reads, times tokens/s) and peak RSS,
# beside the memory read ceiling of the same round (bench/membw.c: a streaming read of 1 GiB on as many threads),
# which bounds every engine's GB/s: decoding one token reads every weight once.
#
# Every configuration runs REPS times, the configurations interleaved (a round of all of them, then the next
# round), and the table gives the median of the REPS figures; each figure is itself a median over steps
# (training) or a whole 256-token run (generation).
#
# Usage: bash bench/speed.sh [--readme]
#   --readme  also replace the README's table between <!-- speed:begin --> and <!-- speed:end -->
# Environment: REPS (3), TRAIN_STEPS (5), GEN_STEPS (256), THREADS ("1 2" for generation; training uses 2),
# PARTS ("train generate", or "table" to rewrite the table from the last run's results), LOOM_BIN (a loom binary instead of building build/loom). Needs /usr/bin/python3
# with torch and numpy (apt-get install python3-torch libopenblas0-openmp), gcc, node and npm (the registry).
# Raw output goes to runs/bench-speed/.
set -euo pipefail
cd "$(dirname "$0")/.."
readme=0
[ "${1:-}" = --readme ] && readme=1
reps=${REPS:-3}
train_steps=${TRAIN_STEPS:-5}
gen_steps=${GEN_STEPS:-256}
threads_list=${THREADS:-"1 2"}
parts=${PARTS:-"train generate"}
PY=/usr/bin/python3
. bench/lib.sh
B="$LOOM_SHARED/bench"
out=runs/bench-speed
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
res="$out/results.tsv" # part, engine, config, threads, rep, tokens_per_s, peak_rss_mib, weight_bytes
: > "$res.new"
[ "$parts" = table ] && cp "$res" "$res.new" # PARTS=table: only rewrite the table from the last results
mv "$res.new" "$res"

# peak RSS (MiB) of a command, its stdout+stderr into a file
timed() { # timed LOG CMD...
  local log=$1
  shift
  /usr/bin/time -o "$log.rss" -f '%M' "$@" > "$log" 2>&1 || { echo "speed: failed: $* (see $log)" >&2; tail -5 "$log" >&2; return 1; }
  echo $(($(tail -1 "$log.rss") / 1024))
}
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$res"; }

if [[ " $parts " == *" train "* ]]; then
  $PY -c 'import torch' 2> /dev/null || { echo "speed: needs PyTorch: apt-get install python3-torch libopenblas0-openmp" >&2; exit 1; }
  lora=(--peft lora --lora-r 8 --lora-alpha 16 --target-modules c_attn)
  for rep in $(seq "$reps"); do
    for prec in f32 bf16; do
      for mode in full lora; do
        log="$out/train.loom.$mode.$prec.$rep.log"
        extra=()
        [ "$mode" = lora ] && extra=("${lora[@]}")
        rss=$(timed "$log" "$L" bench train --model gpt2-124m --batch 4 --seq 256 --threads 2 --steps "$train_steps" --warmup 2 \
          --precision "$prec" "${extra[@]}")
        tps=$(sed -n 's/^RESULT .*tokens_per_s=\([0-9.]*\).*/\1/p' "$log")
        # the training run's own peak (as the baseline's), not the matmul-peak measurement that follows it
        rss=$(sed -n 's/^RESULT .*peak_rss_mib=\([0-9.]*\).*/\1/p' "$log")
        echo "train loom $mode $prec rep $rep: $tps tokens/s, $rss MiB"
        row train loom "$mode-$prec" 2 "$rep" "$tps" "$rss" 0
      done
    done
    for amp in "" --amp; do
      prec=f32
      [ -n "$amp" ] && prec=bf16
      log="$out/train.torch.$prec.$rep.log"
      $PY "$B/torch_baseline.py" --config gpt2-124m --mode all --threads 2 --warmup 2 --steps "$train_steps" $amp \
        --json "$log.json" > "$log" 2>&1 || { echo "speed: torch_baseline.py failed (see $log)" >&2; exit 1; }
      $PY - "$log.json" "$prec" "$rep" >> "$res" << 'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
rows = rows if isinstance(rows, list) else rows.get("results", [rows])
for r in rows:
    print("train\ttorch\t%s-%s\t2\t%s\t%.2f\t%.0f\t0" % (r["mode"], sys.argv[2], sys.argv[3], r["tokens_per_s"], r["peak_rss_mib"]))
PY
      grep tokens/s "$log" | sed 's/^/train torch: /'
    done
  done
fi

if [[ " $parts " == *" generate "* ]]; then
  $PY -c 'import numpy' 2> /dev/null || { echo "speed: needs numpy for /usr/bin/python3 (apt-get install python3-numpy)" >&2; exit 1; }
  command -v npm > /dev/null || { echo "speed: needs node and npm" >&2; exit 1; }
  model="$out/llama110m.bin"
  if [ ! -s "$model" ]; then
    echo "speed: writing a random Llama of the 110M shape (llama2.c format, seed 1)"
    $PY - "$model" << 'PY'
import sys, numpy as np
dim, hid, L, H, KV, V, S = 768, 2048, 12, 12, 12, 32000, 1024
rng = np.random.default_rng(1)
hs = dim // H
def w(*shape, std=0.02):
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
with open(sys.argv[1], "wb") as f:
    f.write(np.array([dim, hid, L, H, KV, V, S], dtype=np.int32).tobytes())  # V > 0: tied embedding and head
    f.write(w(V, dim).tobytes())
    f.write(np.ones((L, dim), np.float32).tobytes())
    for shape in [(L, dim, dim), (L, KV * hs, dim), (L, KV * hs, dim), (L, dim, dim)]:
        f.write(w(*shape).tobytes())
    f.write(np.ones((L, dim), np.float32).tobytes())
    for shape in [(L, hid, dim), (L, dim, hid), (L, hid, dim)]:
        f.write(w(*shape).tobytes())
    f.write(np.ones(dim, np.float32).tobytes())
    f.write(np.zeros((S, hs), np.float32).tobytes())  # the legacy freq_cis tables (unused by the readers)
PY
  fi
  tokbin="$LOOM_SHARED/data/llama2-tokenizer/tokenizer.bin"
  for q in f32 q8_0; do
    [ -s "$out/llama110m.$q.gguf" ] || $PY "$B/llamacpp/llama2c_to_gguf.py" "$model" "$tokbin" "$out/llama110m.$q.gguf" $q > /dev/null
  done
  echo "speed: building llama2.c's run.c and bench/membw.c, installing node-llama-cpp in $tmp"
  cp "$B/llama2c/run.c" "$tmp/" && gcc -Ofast -fopenmp -march=native "$tmp/run.c" -lm -o "$tmp/run"
  gcc -O3 -march=native -fopenmp bench/membw.c -o "$tmp/membw"
  cp "$B/llamacpp/package.json" "$B/llamacpp/generate.mjs" "$tmp/"
  (cd "$tmp" && npm i -E --omit=optional --no-audit --no-fund node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 > npm.log 2>&1) ||
    { echo "speed: npm could not install node-llama-cpp (see $tmp/npm.log)" >&2; cat "$tmp/npm.log" >&2; exit 1; }
  # weight bytes one token reads: every matrix once (the tied embedding as the head), norms; f32 = the file's
  # weights; int8 / Q8_0: one byte per matrix weight plus the scales (Q8_0: 2 bytes per 32)
  nmat=$((32000 * 768 + 12 * (4 * 768 * 768 + 3 * 768 * 2048)))
  f32_bytes=$((4 * nmat))
  q8_bytes=$((nmat + nmat / 16))
  bf16_bytes=$((2 * nmat))
  for rep in $(seq "$reps"); do
    for t in $threads_list; do
      for wt in f32 bf16 int8; do
        log="$out/gen.loom.$wt.t$t.$rep.log"
        rss=$(timed "$log" "$L" bench generate --model "$model" --steps "$gen_steps" --reps 1 --threads "$t" --weights "$wt")
        tps=$(sed -n 's/^RESULT .*gen_tokens_per_s=\([0-9.]*\).*/\1/p' "$log")
        bytes=$f32_bytes
        [ "$wt" = int8 ] && bytes=$q8_bytes
        [ "$wt" = bf16 ] && bytes=$bf16_bytes
        echo "generate loom $wt t$t rep $rep: $tps tokens/s, $rss MiB"
        row generate loom "$wt" "$t" "$rep" "$tps" "$rss" "$bytes"
      done
      # the memory read ceiling in the same round: a streaming read of 1 GiB on t threads (median of 5 passes)
      log="$out/gen.membw.t$t.$rep.log"
      OMP_NUM_THREADS=$t "$tmp/membw" 1024 5 > "$log" 2>&1 || { echo "speed: membw failed (see $log)" >&2; exit 1; }
      gbps=$(sed -n 's/^RESULT .*gbps_median=\([0-9.]*\).*/\1/p' "$log")
      echo "generate memory read ceiling t$t rep $rep: $gbps GB/s"
      row generate membw read "$t" "$rep" "$gbps" 0 0
      log="$out/gen.runc.t$t.$rep.log"
      rss=$(OMP_NUM_THREADS=$t timed "$log" "$tmp/run" "$model" -z "$tokbin" -t 0 -n "$gen_steps")
      tps=$(sed -n 's/.*achieved tok\/s: \([0-9.]*\).*/\1/p' "$log")
      echo "generate run.c f32 t$t rep $rep: $tps tokens/s, $rss MiB"
      row generate run.c f32 "$t" "$rep" "$tps" "$rss" "$f32_bytes"
      for q in f32 q8_0; do
        log="$out/gen.llamacpp.$q.t$t.$rep.log"
        rss=$(timed "$log" node "$tmp/generate.mjs" "$out/llama110m.$q.gguf" "$gen_steps" "$t")
        tps=$(sed -n 's/.*decode_tok_per_s \([0-9.]*\).*/\1/p' "$log")
        bytes=$f32_bytes
        [ "$q" = q8_0 ] && bytes=$q8_bytes
        echo "generate llama.cpp $q t$t rep $rep: $tps tokens/s, $rss MiB"
        row generate llama.cpp "$q" "$t" "$rep" "$tps" "$rss" "$bytes"
      done
    done
  done
fi

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
$PY - "$res" "$readme" "$cpu" "$reps" "$gen_steps" << 'PY'
import statistics, sys, collections
res, readme, cpu, reps, gen_steps = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4], sys.argv[5]
runs = collections.defaultdict(list)
for line in open(res):
    part, eng, cfg, thr, rep, tps, rss, nb = line.rstrip("\n").split("\t")
    runs[(part, eng, cfg, thr)].append((float(tps), float(rss), int(nb)))
def med(key):
    v = runs.get(key)
    if not v: return None
    return statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), v[0][2]
out = []
if any(k[0] == "train" for k in runs):
    out.append("Training, GPT-2 124M, B=4, T=256, 2 threads: tokens/s (peak RSS), median of %s runs." % reps)
    out.append("")
    out.append("| mode | loom f32 | loom bf16 | PyTorch f32 | PyTorch bf16 autocast | loom best / PyTorch bf16 | loom f32 / PyTorch f32 |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("full", "lora"):
        c = {k: med(("train", e, "%s-%s" % (mode, p), "2")) for k, (e, p) in
             {"lf": ("loom", "f32"), "lb": ("loom", "bf16"), "tf": ("torch", "f32"), "tb": ("torch", "bf16")}.items()}
        cell = lambda x: "%.0f (%.0f MiB)" % (x[0], x[1]) if x else "-"
        best = max((x[0] for x in (c["lf"], c["lb"]) if x), default=None)
        r1 = "%.2fx" % (best / c["tb"][0]) if best and c["tb"] else "-"
        r2 = "%.2fx" % (c["lf"][0] / c["tf"][0]) if c["lf"] and c["tf"] else "-"
        name = "full fine-tuning" if mode == "full" else "LoRA r=8 on c_attn"
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (name, cell(c["lf"]), cell(c["lb"]), cell(c["tf"]), cell(c["tb"]), r1, r2))
    out.append("")
if any(k[0] == "generate" for k in runs):
    out.append("Generation, random Llama of llama2.c's 110M shape, greedy, %s tokens: tokens/s, GB/s of weights streamed, peak RSS; median of %s runs." % (gen_steps, reps))
    out.append("")
    out.append("The ratios compare loom with each baseline at its fastest thread count up to the row's (a baseline slower on more threads is compared at fewer).")
    out.append("")
    out.append("| threads | weights | loom | llama.cpp | run.c | loom / llama.cpp | loom / run.c | memory read ceiling |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    thrs = sorted({k[3] for k in runs if k[0] == "generate"}, key=int)
    for t in thrs:
        for lw, cw in (("f32", "f32"), ("bf16", None), ("int8", "q8_0")):
            lo, lc = med(("generate", "loom", lw, t)), med(("generate", "llama.cpp", cw, t)) if cw else None
            if not lo: continue
            rc = med(("generate", "run.c", "f32", t))
            cell = lambda x: "%.1f tok/s, %.1f GB/s, %.0f MiB" % (x[0], x[0] * x[2] / 1e9, x[1]) if x else "-"
            def ratio(eng, cfg):
                # loom against the baseline at its fastest thread count up to t (what its user would pick)
                best = max(((m[0], u) for u in thrs if int(u) <= int(t)
                            for m in [med(("generate", eng, cfg, u))] if m), default=None) if cfg else None
                if not best: return "-"
                return "%.2fx" % (lo[0] / best[0]) + ("" if best[1] == t else " (its %s-thread run, its fastest)" % best[1])
            r1, r2 = ratio("llama.cpp", cw), ratio("run.c", "f32")
            label = {"f32": "f32 (F32)", "bf16": "bf16", "int8": "int8 (Q8_0)"}[lw]
            bw = med(("generate", "membw", "read", t))
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (t, label, cell(lo), cell(lc), cell(rc), r1, r2,
                                                               "%.1f GB/s" % bw[0] if bw else "-"))
    out.append("")
out.append("CPU: %s. Written by `bash bench/speed.sh`." % cpu)
table = "\n".join(out)
print(table)
if readme:
    text = open("README.md").read()
    b, e = "<!-- speed:begin -->", "<!-- speed:end -->"
    if b not in text or e not in text:
        sys.exit("speed: README.md has no %s ... %s markers" % (b, e))
    head, rest = text.split(b, 1)
    _, tail = rest.split(e, 1)
    open("README.md", "w").write(head + b + "\n" + table + "\n" + e + tail)
    print("speed: README.md updated")
PY
