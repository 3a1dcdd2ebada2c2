# Sourced by the bench scripts after `cd` to the repository root: exports LOOM_SHARED (../shared unless set)
# and sets L to the loom binary: $LOOM_BIN if set, else build/loom, built first.
export LOOM_SHARED=${LOOM_SHARED:-$(cd ../shared && pwd)}
if [ -n "${LOOM_BIN:-}" ]; then
  L=$LOOM_BIN
else
  bash scripts/build.sh loom > /dev/null
  L=./build/loom
fi
