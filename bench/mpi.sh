#!/usr/bin/env bash
# loom sim --mpi on this machine: the round time for P = 1, 2, 4 processes (mpirun, oversubscribed, shared
# memory only) against the in-process run, and the bytes each process reduces per round. The run: 16
# LoRA clients a round (r 4 on c_attn of the GPT-2 124M shape, random weights, 147,456 trainable values)
# over SST-2 split among 1,000 clients, 2 local steps of 1 x 16 tokens, one worker thread per process.
# Each process holds its own copy of the frozen base. Every run's global.safetensors must be the
# in-process one's (checked). Round time = the median over the rounds of the metrics' "seconds" on
# rank 0 (which includes waiting for the slowest rank in the sum).
# Usage: bash bench/mpi.sh [ROUNDS] [P ...]     (default 5 rounds, P = 1 2 4; LOOM_BIN; MPIRUN_ARGS)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-5}
shift || true
procs=("$@")
[ ${#procs[@]} -eq 0 ] && procs=(1 2 4)
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader} OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
read -r -a mpirun_args <<< "${MPIRUN_ARGS:---oversubscribe --bind-to none}"
out=runs/bench-mpi
mkdir -p "$out"
common=(--model gpt2-124m --tokenizer "$LOOM_SHARED/data/gpt2-tokenizer" --peft lora --lora-r 4
        --target-modules c_attn --data "$LOOM_SHARED/data/sst2/train.tsv" --format tsv --text-col sentence
        --label-col label --partition iid --clients 1000 --sample 16 --rounds "$rounds" --local-steps 2 --batch 1
        --seq 16 --eval-every 0 --eval-clients 1 --sample-len 0 --seed 1 --client-threads 1 --quiet-clients)
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
round_s() { grep '"type":"round"' "$1/metrics.jsonl" | grep -o '"seconds":[0-9.e+-]*' | cut -d: -f2 | median; }
printf '%-22s %10s %8s %16s %10s\n' run round_s speedup bytes_per_round same
ref=""
for w in 1 2; do
  dir="$out/inproc-w$w"
  rm -rf "$dir"
  "$L" sim "${common[@]}" --workers $w --out "$dir" > "$dir.log" 2>&1 || { echo "mpi: in-process run failed (see $dir.log)" >&2; exit 1; }
  s=$(round_s "$dir")
  [ -z "$ref" ] && ref=$s && refsha=$(sha256sum < "$dir/global.safetensors")
  same=$([ "$(sha256sum < "$dir/global.safetensors")" = "$refsha" ] && echo yes || echo NO)
  printf '%-22s %10.2f %8.2f %16s %10s\n' "in-process workers $w" "$s" "$(awk -v a="$ref" -v b="$s" 'BEGIN { print a / b }')" - "$same"
done
for P in "${procs[@]}"; do
  dir="$out/mpi-p$P"
  rm -rf "$dir"
  mpirun "${mpirun_args[@]}" -np "$P" "$L" sim "${common[@]}" --workers 1 --mpi --out "$dir" > "$dir.log" 2>&1 ||
    { echo "mpi: mpirun -np $P failed (see $dir.log)" >&2; exit 1; }
  s=$(round_s "$dir")
  bytes=$(grep '^MPI ' "$dir.log" | sed 's/.* processes, \([0-9]*\) bytes reduced per round.*/\1/')
  same=$([ "$(sha256sum < "$dir/global.safetensors")" = "$refsha" ] && echo yes || echo NO)
  printf '%-22s %10.2f %8.2f %16s %10s\n' "mpirun -np $P" "$s" "$(awk -v a="$ref" -v b="$s" 'BEGIN { print a / b }')" "$bytes" "$same"
done
echo "bytes_per_round: the words each process hands to MPI_Allreduce per round (fit + evaluation), x 8"
