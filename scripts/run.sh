#!/usr/bin/env bash
# The main job: installs missing packages, builds loom (the program is build/loom), and runs federated
# fine-tuning of a pretrained model: the stories260K Llama (trained on children's stories) is adapted
# to Shakespeare by 88 clients, one per speaking role, each keeping its own lines; 10 clients sampled
# per round, FedAvg. Before training it measures the model on every client's held-out lines and samples
# from it; at the end it prints the same after training (a table of perplexity before/after per
# client), writes runs/shakespeare/ (metrics.jsonl, global.safetensors, checkpoint.safetensors,
# accuracy.svg) and a sample from the fine-tuned model.
# Extra arguments go to `loom sim` (e.g. --rounds 10, --strategy fedadam, --peft lora --lora-r 8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export LOOM_SHARED="${LOOM_SHARED:-$(cd .. && pwd)/shared}"
for f in data/tinyshakespeare/input.txt data/stories260K/stories260K.bin data/stories260K/tok512.bin; do
  if [ ! -f "$LOOM_SHARED/$f" ]; then
    echo "data missing: expected $LOOM_SHARED/$f (set LOOM_SHARED to the shared data directory)" >&2; exit 1
  fi
done
echo "building loom (release) into build/..." >&2
log=$(mktemp)
if ! bash scripts/build.sh > "$log" 2>&1; then cat "$log" >&2; rm -f "$log"; exit 1; fi
rm -f "$log"
export PATH="$PWD/build:$PATH"
# a fresh run directory unless continuing one
case " $* " in *" --resume "*) ;; *) rm -rf runs/shakespeare ;; esac
loom sim --config configs/shakespeare.json \
  --model "$LOOM_SHARED/data/stories260K/stories260K.bin" --tokenizer "$LOOM_SHARED/data/stories260K/tok512.bin" "$@"
