#!/usr/bin/env bash
# mpirun -np P loom sim --mpi against the in-process loom sim with the same seeds: the same
# global.safetensors (sha256) and the same metrics rows (but the wall-clock "seconds") for P = 1, 2, 4
# on one machine (oversubscribed, shared memory only), with refused and failing clients, clipping,
# control variates, compression and central DP with adaptive clipping in one run; and the options it
# refuses, by name.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
if ! command -v mpirun > /dev/null; then
    echo "FAIL: mpirun not found (scripts/deps.sh installs openmpi-bin)" >&2
    exit 1
fi
# a container: no network interfaces needed, no single-copy (ptrace) mechanism, root allowed
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false
# A sanitizer build: OpenMPI's own allocations that outlive MPI_Finalize would be reported as leaks.
# The last run (one process) checks leaks with them suppressed (tests/lsan_openmpi.supp; full unwinding,
# slow, so that their stacks reach the OpenMPI libraries through its unloaded components); the others
# keep the address and undefined-behaviour checks without the leak check.
asan=${ASAN_OPTIONS:-}
export ASAN_OPTIONS="${asan:+$asan:}detect_leaks=0"
MPIRUN=(mpirun --oversubscribe --bind-to none)
head -c 60000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/text.txt" # small, quick to load
base=(--model tiny --data "$tmp/text.txt" --clients 16 --rounds 2 --local-steps 2 --batch 2 --seq 32 --eval-every 1 --eval-clients 5 --sample-len 0
      --seed 5 --workers 1 --quiet-clients)
rows() { sed 's/"seconds":[-0-9.e+]*,\{0,1\}//' "$1/metrics.jsonl"; }
same_run() { # what, in-process dir, mpi dir
    check "$1: global.safetensors sha256" test "$(sha256sum < "$2/global.safetensors")" = "$(sha256sum < "$3/global.safetensors")"
    check "$1: metrics rows" cmp -s <(rows "$2") <(rows "$3")
}
# 1. plain FedAvg, 7 of 16 clients a round
"$LOOM" sim "${base[@]}" --sample 7 --out "$tmp/ref" > /dev/null 2> "$tmp/ref.err"
check "in-process run" test -s "$tmp/ref/global.safetensors"
for P in 1 2 4; do
    "${MPIRUN[@]}" -np $P "$LOOM" sim "${base[@]}" --sample 7 --mpi --out "$tmp/p$P" > "$tmp/p$P.out" 2> "$tmp/p$P.err"
    check "P=$P exits 0" test $? -eq 0
    same_run "fedavg P=$P" "$tmp/ref" "$tmp/p$P"
done
check "rank 0 reports the sums" grep -Eq '^MPI +4 processes, [0-9]+ bytes reduced per round .* in 4 sums' "$tmp/p4.out"
check "one set of output lines" test "$(grep -c 'round    2/2' "$tmp/p4.err")" -eq 1
check "the rows name every sampled client" test "$(grep -c '"type":"client"' "$tmp/p4/metrics.jsonl")" -eq 14
# 2. what crosses processes besides the sum: a NaN update and a failed client (their rows), int8
#    compression with its residuals (each client's state stays on its rank), central DP with adaptive
#    clipping (the clip moves with the count of updates within it, noise from the seed on every rank)
rich=(--sample 9 --strategy fedadam --fault 4:nan,12:fail --compress int8 --dp central --dp-clip 0.3 --dp-noise 0.5
      --dp-adaptive-clip 0.5)
"$LOOM" sim "${base[@]}" "${rich[@]}" --out "$tmp/ref2" > /dev/null 2> "$tmp/ref2.err"
check "in-process DP run" test -s "$tmp/ref2/global.safetensors"
"${MPIRUN[@]}" -np 3 "$LOOM" sim "${base[@]}" "${rich[@]}" --mpi --out "$tmp/q3" > /dev/null 2> "$tmp/q3.err"
check "DP P=3 exits 0" test $? -eq 0
same_run "DP P=3" "$tmp/ref2" "$tmp/q3"
check "the refused update is in the rows" grep -q '"status":"non-finite value"' "$tmp/q3/metrics.jsonl"
check "the failed client is in the rows" grep -q '"status":"client failure"' "$tmp/q3/metrics.jsonl"
check "the clip moved" test "$(grep -o '"dp_clip":[0-9.e-]*' "$tmp/q3/metrics.jsonl" | sort -u | wc -l)" -eq 2
#    scaffold's control sums, a server clip, and stragglers refused as late on the virtual clock
sc=(--sample 9 --strategy scaffold --update-clip 0.5 --step-seconds 1 --time-spread 1 --deadline 2.5)
"$LOOM" sim "${base[@]}" "${sc[@]}" --out "$tmp/ref3" > /dev/null 2> "$tmp/ref3.err"
"${MPIRUN[@]}" -np 2 "$LOOM" sim "${base[@]}" "${sc[@]}" --mpi --out "$tmp/s2" > /dev/null 2> "$tmp/s2.err"
check "scaffold P=2 exits 0" test $? -eq 0
same_run "scaffold P=2" "$tmp/ref3" "$tmp/s2"
check "late clients in the rows" grep -q '"status":"late"' "$tmp/s2/metrics.jsonl"
# 3. what cannot be distributed is refused by name, before any round, with a clean exit
refuse "--mpi refuses --mode fedbuff" 1 'mpi cannot distribute' '--mode fedbuff' -- \
    "${MPIRUN[@]}" -np 2 "$LOOM" sim "${base[@]}" --sample 4 --mode fedbuff --mpi
check "a refusal ends without MPI_ABORT" bash -c "! grep -q MPI_ABORT '$tmp/refuse.err'"
refuse "--mpi refuses --aggregator" 1 'mpi cannot distribute' '--aggregator' -- \
    "$LOOM" sim "${base[@]}" --sample 4 --aggregator median --mpi
refuse "--mpi refuses --checkpoint-every" 1 'mpi cannot distribute' '--checkpoint-every' -- \
    "$LOOM" sim "${base[@]}" --sample 4 --checkpoint-every 1 --mpi
# 4. without --mpi nothing of MPI runs (no mpirun needed), and --mpi alone is one process
ASAN_OPTIONS="${asan:+$asan:}fast_unwind_on_malloc=0" LSAN_OPTIONS="suppressions=$SRC/tests/lsan_openmpi.supp" \
    "$LOOM" sim "${base[@]}" --sample 7 --mpi --out "$tmp/single" > /dev/null 2> "$tmp/single.err"
check "--mpi without mpirun exits 0 (no leak)" test $? -eq 0
same_run "--mpi without mpirun" "$tmp/ref" "$tmp/single"
finish
