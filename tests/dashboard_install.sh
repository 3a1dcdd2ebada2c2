#!/usr/bin/env bash
# Installs playwright-core 1.65.1 from npm (the browser driver only, about 9 MB: no browser download)
# into DIR, for the dashboard's browser tests (tests/cli_dashboard.sh drives Debian's /usr/bin/chromium
# with it: a CTest fixture runs this once before them and removes DIR after them). An existing install
# is kept. Fails, saying why, when npm cannot install it: the browser tests then fail too, never pass
# silently.
#   bash tests/dashboard_install.sh DIR
set -u
dir=${1:?usage: dashboard_install.sh DIR}
if [ -f "$dir/node_modules/playwright-core/package.json" ]; then
    echo "playwright-core already installed in $dir"
    exit 0
fi
if ! command -v npm > /dev/null || ! command -v node > /dev/null; then
    echo "FAIL: node or npm not found (scripts/deps.sh --test installs nodejs and npm); the dashboard's browser tests cannot run" >&2
    exit 1
fi
mkdir -p "$dir"
printf '{"name": "loom-dashboard-tests", "private": true, "type": "module"}\n' > "$dir/package.json"
for attempt in 1 2; do
    if (cd "$dir" && npm i -E --no-audit --no-fund --prefer-offline --ignore-scripts --fetch-retries 1 \
            --fetch-retry-maxtimeout 10000 playwright-core@1.65.1 > "$dir/npm.log" 2>&1); then
        echo "playwright-core 1.65.1 installed in $dir (node $(node --version))"
        exit 0
    fi
    echo "npm install attempt $attempt failed" >&2
done
echo "FAIL: npm could not install playwright-core 1.65.1 into $dir (is the npm registry reachable?):" >&2
tail -5 "$dir/npm.log" | sed 's/^/    /' >&2
rm -rf "$dir/node_modules"
exit 1
