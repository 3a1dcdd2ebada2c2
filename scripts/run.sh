#!/usr/bin/env bash
# The main job: installs missing packages, builds loom, and runs a federated training of a small
# transformer on federated Shakespeare (one client per speaking role, 10 sampled per round, FedAvg),
# with progress, a final table, an accuracy plot and a sample from the global model.
# Extra arguments go to `loom sim` (e.g. --rounds 20, --strategy fedadam, --workers 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ ! -f ../shared/data/tinyshakespeare/input.txt ]; then
  echo "data missing: expected ../shared/data/tinyshakespeare/input.txt beside the repository" >&2; exit 1
fi
echo "building loom (release)..." >&2
log=$(mktemp)
if ! bash scripts/build.sh > "$log" 2>&1; then cat "$log" >&2; rm -f "$log"; exit 1; fi
rm -f "$log"
export LOOM_SHARED="$(cd ../shared && pwd)"
mkdir -p runs
./build/loom sim --config configs/shakespeare.json "$@"
