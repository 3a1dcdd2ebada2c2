#!/usr/bin/env bash
# Installs the Debian packages loom needs to build and run (when run as root), or prints the
# exact apt-get line and fails. Called by scripts/run.sh, and with --test by scripts/test.sh (which also
# needs clang 14 with its libFuzzer and OpenMP runtimes for the fuzzing stage, curl, which the
# network tests use to speak to a running server, and node with npm for the GGUF tests).
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libjansson-dev libpcre2-dev libicu-dev
      libmicrohttpd-dev libgnutls28-dev libcurl4-gnutls-dev libsqlite3-dev libsodium-dev libgmp-dev libdnnl-dev
      libopenmpi-dev openmpi-bin)
if [ "${1:-}" = "--test" ]; then
  PKGS+=(clang-14 libclang-rt-14-dev libomp-14-dev curl)
  PKGS+=(python3 libxml2-utils) # the tests' independent JSON and XML readers (cli_audit, cli_output, cli_report)
  # node and npm for the GGUF tests' llama.cpp (node-llama-cpp from npm); Debian's when none is installed
  # (tests/llamacpp_install.sh adds a Node 20 from npm when the node found is older)
  command -v npm > /dev/null || PKGS+=(nodejs npm)
  PKGS+=(chromium) # the dashboard's browser tests (tests/cli_dashboard.sh: playwright-core from npm drives it)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "loom needs these Debian packages; install them as root with:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
