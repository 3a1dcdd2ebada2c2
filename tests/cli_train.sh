#!/usr/bin/env bash
# Outputs and runs: --out parents are created and checked before any work; export refuses to write
# over its inputs; loom train writes metrics.jsonl and checkpoints, and --resume continues bit for bit;
# loom sim prints plain progress lines when stderr is not a terminal; the default data is found from
# any directory.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
TXT="$LOOM_SHARED/data/tinyshakespeare/input.txt"
T="$LOOM train --model tiny --data $TXT --batch 2 --seq 32 --eval-every 4 --eval-windows 2 --sample-len 0 --threads 1"

# parents of --out are created
$T --steps 2 --out "$tmp/runs/deep/tiny" > /dev/null 2>&1
check "train creates the parents of --out" test -s "$tmp/runs/deep/tiny/model.safetensors"
# an --out that cannot be created fails before training
touch "$tmp/file"
fails "train --out under a file" "--out: cannot create directory $tmp/file/x" $T --steps 2 --out "$tmp/file/x"
check "train fails before any step" bash -c "! grep -q 'step ' '$tmp/err'"
fails "sim --out under a file" "--out: cannot create directory" $LOOM sim --rounds 1 --out "$tmp/file/x"
check "sim fails before loading data" bash -c "! grep -q 'clients' '$tmp/err'"
fails "sim --plot under a file" "--plot: cannot create directory" $LOOM sim --rounds 1 --plot "$tmp/file/x/p.svg"
fails "export --out under a file" "--out: cannot create directory" $LOOM export --model "$tmp/runs" --adapter "$tmp/runs" --out "$tmp/file/x"

# export refuses to overwrite the base or the adapter directory
mkdir -p "$tmp/base" "$tmp/ad"; echo keep > "$tmp/base/config.json"; echo keep > "$tmp/ad/adapter_config.json"
fails "export --out = --model" "--out $tmp/base/ is the --model directory" $LOOM export --model "$tmp/base" --adapter "$tmp/ad" --out "$tmp/base/" --merge
fails "export --out = --adapter" "is the --adapter directory" $LOOM export --model "$tmp/base" --adapter "$tmp/ad" --out "$tmp/ad"
check "base left alone" grep -q keep "$tmp/base/config.json"

# metrics and resume: 12 steps in one go == 6 steps, stop, resume, 6 more (bit for bit)
$T --steps 12 --checkpoint-every 5 --out "$tmp/a" > /dev/null 2>&1
$T --steps 12 --checkpoint-every 5 --stop-at 6 --out "$tmp/b" > /dev/null 2> "$tmp/b1.err"
check "stop-at says how to continue" grep -q 'continues with --resume' "$tmp/b1.err"
check "no model written at a stop" test ! -e "$tmp/b/model.safetensors"
$T --steps 12 --checkpoint-every 5 --resume --out "$tmp/b" > /dev/null 2> "$tmp/b2.err"
check "resume announced" grep -q 'resuming at step 6' "$tmp/b2.err"
check "resumed run equals the uninterrupted one" cmp -s "$tmp/a/model.safetensors" "$tmp/b/model.safetensors"
check "metrics rows per step" test "$(grep -c '"loss"' "$tmp/a/metrics.jsonl")" -eq 12
check "metrics rows have lr and tokens/s" grep -q '"step":12,"loss":[0-9.]*,"lr":[0-9.e-]*,"grad_norm":[0-9.e-]*,"tokens_per_s":' "$tmp/a/metrics.jsonl"
check "metrics val loss rows" test "$(grep -c '"val_loss"' "$tmp/a/metrics.jsonl")" -eq 4
check "resumed metrics equal (but for speed)" cmp -s <(sed 's/,"tokens_per_s.*//' "$tmp/a/metrics.jsonl") <(sed 's/,"tokens_per_s.*//' "$tmp/b/metrics.jsonl")
check "checkpoint written" test -s "$tmp/a/checkpoint.safetensors"
# the same with LoRA on a pretrained model (the set and AdamW state are restored)
M="$LOOM_SHARED/data/stories260K/stories260K.bin"; K="$LOOM_SHARED/data/stories260K/tok512.bin"
P="$LOOM train --model $M --tokenizer $K --peft lora --lora-r 4 --data $TXT --batch 2 --seq 32 --eval-every 0 --eval-windows 2 --sample-len 0 --threads 1"
$P --steps 8 --out "$tmp/la" > /dev/null 2>&1
$P --steps 8 --stop-at 3 --out "$tmp/lb" > /dev/null 2>&1
$P --steps 8 --resume --out "$tmp/lb" > /dev/null 2>&1
check "LoRA resume bit for bit" cmp -s "$tmp/la/adapter_model.safetensors" "$tmp/lb/adapter_model.safetensors"
# resume refusals
fails "resume with another seed" "written with --seed 1337, this run has 5" $T --steps 12 --resume --seed 5 --out "$tmp/b"
fails "resume with nothing left" "nothing left to do" $T --steps 12 --resume --out "$tmp/b"
fails "resume without a checkpoint" "checkpoint.safetensors" $T --steps 12 --resume --out "$tmp/none"
fails "resume without --out" "need --out" $T --steps 12 --resume
fails "stop-at past the end" "--stop-at 12 must be below --steps 12" $T --steps 12 --stop-at 12 --out "$tmp/c"

# text read in blocks gives the ids of the whole text: the token count equals loom tokenize's over the
# whole file, and the validation loss is the same for 1000-byte blocks and one block
G="$LOOM_SHARED/data/gpt2-tokenizer/encoder.json"
printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 64, "vocab_size": 50257}' > "$tmp/g.json"
want=$("$LOOM" tokenize --tokenizer "$G" < "$TXT" | wc -w)
for b in 1000 1000000000; do
  LOOM_TEXT_BLOCK=$b "$LOOM" train --model "$tmp/g.json" --tokenizer "$G" --data "$TXT" --steps 1 --batch 1 --seq 16 \
    --eval-windows 64 --sample-len 0 --threads 1 > /dev/null 2> "$tmp/blk$b.err"
  check "block $b: whole-text token count" grep -q "parameters (new), $want tokens" "$tmp/blk$b.err"
done
check "same val loss for any block size" test "$(grep 'step      0' "$tmp/blk1000.err")" = "$(grep 'step      0' "$tmp/blk1000000000.err")"

# sim: plain progress lines when stderr is a file
$LOOM sim --rounds 1 --sample 3 --local-steps 1 --batch 1 --seq 8 --eval-clients 1 --sample-len 0 --progress-every 0 \
  > /dev/null 2> "$tmp/sim.err"
check "sim progress lines without a terminal" grep -q '^  round 1/1  client 1/3 done' "$tmp/sim.err"
check "no carriage returns in a file" bash -c "! grep -q $'\r' '$tmp/sim.err'"
check "a new model is said to train from scratch" grep -q 'training from scratch of [0-9]* parameters' "$tmp/sim.err"

# sim --compare: per-client perplexity before and after fine-tuning a pretrained model, sample before
$LOOM sim --model "$M" --tokenizer "$K" --min-lines 400 --rounds 1 --sample 2 --local-steps 3 --batch 4 --seq 32 \
  --optimizer adamw --lr 0.003 --eval-clients 1 --compare 2 --sample-len 8 --workers 1 --checkpoint-every 1 \
  --out "$tmp/cmp" > "$tmp/cmp.out" 2> "$tmp/cmp.err"
check "compare: sample from the initial model" grep -q 'sample from the initial model' "$tmp/cmp.out"
check "compare: table header" grep -q 'client  *test tokens  *ppl before  *ppl after' "$tmp/cmp.out"
check "compare: two client rows" test "$(grep -c '^  [A-Z][A-Z ]* [0-9]* *[0-9.]* *[0-9.]* *[-+]' "$tmp/cmp.out")" -eq 2
check "compare: pooled row" grep -q '^  all [0-9]* clients' "$tmp/cmp.out"
check "compare: fine-tuning lowers the pooled perplexity" awk '/^  all [0-9]+ clients/ { ok = ($6 < $5) } END { exit !ok }' "$tmp/cmp.out"
check "pretrained model is said to be fine-tuned" grep -q 'full fine-tuning of 260032 parameters' "$tmp/cmp.err"
check "written line names the checkpoint" grep -q 'written .*checkpoint.safetensors' "$tmp/cmp.out"

# the default --data shakespeare is found from another directory, through the binary's location
(cd "$tmp" && env -u LOOM_SHARED "$LOOM" sim --rounds 1 --sample 1 --local-steps 1 --batch 1 --seq 8 --eval-clients 1 \
  --sample-len 0 > /dev/null 2> "$tmp/where.err")
check "default data found from any directory" grep -q '88 clients' "$tmp/where.err"
fails "missing shared dir named" "set LOOM_SHARED" env LOOM_SHARED="$tmp/nope" $LOOM sim --rounds 1

echo "cli_train: $pass passed, $fail failed"
[ $fail -eq 0 ]
