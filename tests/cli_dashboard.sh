# The dashboard: loom server's page and JSON API behind its tokens (administrator and viewer roles; a
# viewer reads the dashboard only, a client token cannot), its rows equal metrics.jsonl's; loom sim
# --serve and loom report --serve serve the same API; refusals name their flag. In headless Chromium
# (Debian's, driven by playwright-core from the fixture's npm install): an unauthenticated browser gets
# the login prompt and the API 401; logged in, the round counter advances while a real server and two
# clients train, the loss chart gets points, and the page's screenshot is left in the build folder
# (Testing/dashboard.png). The sanitizer builds run the loom side only.
. "$(dirname "$0")/testlib.sh"

mkdir -p "$tmp/cd"
head -c 12000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/alice.txt"
tail -c 12000 "$SHARED/data/tinyshakespeare/input.txt" > "$tmp/cd/bob.txt"
cat > "$tmp/run.json" << 'EOF2'
{"model": "tiny", "rounds": 3, "local-steps": 2, "batch": 4, "seq": 32, "seed": 3, "eval-every": 1,
 "strategy": "fedavg", "sample-len": 0}
EOF2
S="$tmp/s"
"$LOOM" server add-client --state "$S" alice > "$S.alice" 2> /dev/null
"$LOOM" server add-client --state "$S" bob > "$S.bob" 2> /dev/null
"$LOOM" server add-client --state "$S" --admin ops > "$S.ops" 2> /dev/null
check "a viewer is registered" "$LOOM" server add-client --state "$S" --role viewer watch > "$S.watch" 2> "$tmp/reg.err"
check "add-client says viewer" grep -q "(viewer)" "$tmp/reg.err"
refuse "an unknown role" 2 "--role" "client, admin or viewer" -- "$LOOM" server add-client --state "$S" --role boss x

port=""
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    "$LOOM" server --state "$S" --config "$tmp/run.json" --listen "127.0.0.1:$port" --poll-ms 100 --serve-wait >> "$S.log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do
        grep -q "listening on port" "$S.log" 2> /dev/null && break 2
        kill -0 $spid 2> /dev/null || break
        sleep 0.1
    done
done
check "server starts" grep -q "listening on port" "$S.log"
U="https://127.0.0.1:$port"
code() { curl -s --max-time 20 -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --cacert "$S/tls/cert.pem" "$@"; }
bearer() { echo "Authorization: Bearer $(cat "$S.$1")"; }

# the page: no token needed (it holds no data), a strict content policy
check "page without a token: 200" test "$(code "$U/")" = 200
check "the page is the login form and the script" grep -q 'id="login-form"' "$tmp/body"
check "the page forbids foreign scripts" grep -qi "content-security-policy: default-src 'self'" "$tmp/hdr"
check "the script is served" test "$(code "$U/dash.js")" = 200
check "the script reads the API" grep -q "/v1/dash/metrics?since=" "$tmp/body"
# the API: 401 without a token, 200 for a viewer and an administrator, 403 for a client of the run
check "status without a token: 401" test "$(code "$U/v1/dash/status")" = 401
check "401 says why" grep -q '"unauthorized"' "$tmp/body"
check "metrics with a wrong token: 401" test "$(code -H "Authorization: Bearer 00ff" "$U/v1/dash/metrics")" = 401
check "viewer reads the status" test "$(code -H "$(bearer watch)" "$U/v1/dash/status")" = 200
check "the status names the run's clients" grep -q '"name":"alice"' "$tmp/body"
check "the viewer is not a client of the run" grep -q '"clients_total":2' "$tmp/body"
check "viewer reads the metrics" test "$(code -H "$(bearer watch)" "$U/v1/dash/metrics?since=0")" = 200
check "a bad since: 400 naming it" test "$(code -H "$(bearer watch)" "$U/v1/dash/metrics?since=x")" = 400
check "400 names since" grep -q "since" "$tmp/body"
check "viewer cannot read /v1/status" test "$(code -H "$(bearer watch)" "$U/v1/status")" = 403
check "403 says a viewer reads the dashboard only" grep -q "viewer token reads the dashboard only" "$tmp/body"
check "viewer cannot poll for tasks" test "$(code -H "$(bearer watch)" "$U/v1/task")" = 403
check "viewer cannot say hello" test "$(code -H "$(bearer watch)" -X POST --data '{"name":"watch"}' "$U/v1/hello")" = 403
check "a client token cannot read the dashboard" test "$(code -H "$(bearer alice)" "$U/v1/dash/status")" = 403
check "403 asks for an administrator or viewer" grep -q "administrator or viewer" "$tmp/body"
check "administrator reads the dashboard" test "$(code -H "$(bearer ops)" "$U/v1/dash/status")" = 200
check "/v1/status is kept for the administrator" test "$(code -H "$(bearer ops)" "$U/v1/status")" = 200

browser() { # MODE ARGS...: tests/browser/dashboard.mjs with the fixture's playwright-core
    cp "$SRC/tests/browser/dashboard.mjs" "$LOOM_DASH_NPM/dashboard.mjs" &&
        (cd "$LOOM_DASH_NPM" && timeout 150 node dashboard.mjs "$@")
}
shot_dir="${LOOM_BUILD:-.}/Testing"
if [ -z "${LOOM_SANITIZED:-}" ]; then
    if [ -z "${LOOM_DASH_NPM:-}" ] || [ ! -f "$LOOM_DASH_NPM/node_modules/playwright-core/package.json" ]; then
        check "playwright-core is installed (the dashboard_install fixture)" false
    elif [ ! -x "${LOOM_CHROMIUM:-/usr/bin/chromium}" ]; then
        check "chromium is installed (scripts/deps.sh --test)" false
    else
        mkdir -p "$shot_dir"
        rm -f "$shot_dir/dashboard.png"
        browser "$U/" "$(cat "$S.watch")" "$shot_dir/dashboard.png" > "$tmp/browser.out" 2>&1 &
        bpid=$!
        for _ in $(seq 600); do grep -q "logged in at round\|FAIL" "$tmp/browser.out" && break; sleep 0.1; done
        check "browser without a token: login prompt, API 401, wrong token refused" grep -q "^ok login" "$tmp/browser.out"
        check "the browser logged in with the viewer token" grep -q "logged in at round 0" "$tmp/browser.out"
    fi
fi

# the clients train: the run goes through its rounds
cpids=""
for n in alice bob; do
    "$LOOM" client --server "$U" --name $n --token-file "$S.$n" --ca-cert "$S/tls/cert.pem" --data "$tmp/cd/$n.txt" \
        --work-dir "$tmp/w$n" --threads 1 > /dev/null 2>> "$tmp/$n.log" &
    cpids="$cpids $!"
done
# the API's rows while the run goes on (the most it served before the server ended), polled beside the browser
poll_rows() {
    local best=0 n
    for _ in $(seq 600); do
        if [ "$(curl -s --max-time 20 -o "$tmp/rows.now" -w '%{http_code}' --cacert "$S/tls/cert.pem" -H "$(bearer watch)" \
                "$U/v1/dash/metrics?since=0")" = 200 ]; then
            n=$(grep -o '"type":"round"' "$tmp/rows.now" | wc -l)
            [ "$n" -gt "$best" ] && best=$n && cp "$tmp/rows.now" "$tmp/api_rows"
        fi
        kill -0 $spid 2> /dev/null || break
        sleep 0.05
    done
    echo $best > "$tmp/api_best"
}
poll_rows &
ppid_rows=$!
if [ -n "${bpid:-}" ]; then
    wait $bpid
    check "browser: the round counter advances and the loss chart has points" grep -q "^ok round" "$tmp/browser.out"
    grep "FAIL" "$tmp/browser.out" >&2
    check "the screenshot is in the build folder" test -s "$shot_dir/dashboard.png"
fi
for p in $cpids; do # a client still polling 60 s after the run ended is a failure, not a hang
    for _ in $(seq 600); do kill -0 $p 2> /dev/null || break; sleep 0.1; done
    kill -0 $p 2> /dev/null && kill -9 $p
    wait $p
done
# --serve-wait: the finished run's dashboard stays up until SIGTERM
for _ in $(seq 600); do grep -q '"type":"round","round":3,' "$S/metrics.jsonl" 2> /dev/null && break; sleep 0.1; done
check "after the last round the server still serves the dashboard" test "$(code -H "$(bearer watch)" "$U/v1/dash/status")" = 200
check "its status says the run is done" grep -q '"round":3,"rounds":3' "$tmp/body"
kill -TERM $spid
for _ in $(seq 300); do kill -0 $spid 2> /dev/null || break; sleep 0.1; done
kill -0 $spid 2> /dev/null && kill -9 $spid
wait $spid
check "server finishes on SIGTERM, exit 0" test $? -eq 0
check "the finished run is reported written, not stopped" grep -q "global.safetensors" "$S.log"
check "metrics.jsonl has 3 round rows" test "$(grep -c '"type":"round"' "$S/metrics.jsonl")" = 3
# each row the API served is metrics.jsonl's row, byte for byte
wait $ppid_rows
best=$(cat "$tmp/api_best" 2> /dev/null || echo 0)
check "the API served the run's round rows while it ran" test "$best" -ge 2
same=1
while IFS= read -r row; do grep -qxF "$row" "$S/metrics.jsonl" || same=0; done < <(grep -o '{"type":"round"[^}]*}' "$tmp/api_rows")
check "the API's rows are metrics.jsonl's" test $same = 1 -a "$best" -ge 1

# loom report --serve: the finished run from its state directory
echo "0123456789abcdef0123456789abcdef" > "$tmp/tok"
serve_up() { # LOG: waits for the dashboard line, sets $dport
    dport=""
    for _ in $(seq 100); do
        dport=$(grep -o 'http://127.0.0.1:[0-9]*/' "$1" 2> /dev/null | grep -o '[0-9]*/$' | tr -d /)
        [ -n "$dport" ] && return 0
        sleep 0.1
    done
    return 1
}
"$LOOM" report --serve --listen 0 --serve-token-file "$tmp/tok" "$S" 2> "$tmp/rep.err" &
rpid=$!
check "report --serve prints its URL" serve_up "$tmp/rep.err"
D="http://127.0.0.1:$dport"
T="Authorization: Bearer 0123456789abcdef0123456789abcdef"
check "report: 401 without the token" test "$(code "$D/v1/dash/status")" = 401
check "report: the status with the token" test "$(code -H "$T" "$D/v1/dash/status")" = 200
check "report: the last round, finished" grep -q '"round":3,"rounds":3,"state":"finished"' "$tmp/body"
check "report: the clients' names from the rows" grep -q '"name":"bob"' "$tmp/body"
check "report: every client contributed 3 rounds" test "$(grep -o '"rounds_contributed":3' "$tmp/body" | wc -l)" = 2
check "report: the rows since round 1" test "$(code -H "$T" "$D/v1/dash/metrics?since=1")" = 200
check "report: rounds 2 and 3" test "$(grep -o '"type":"round","round":[23],' "$tmp/body" | wc -l)" = 2
kill -INT $rpid
wait $rpid
check "report --serve stops on Ctrl-C" test $? -eq 0
refuse "report --serve without a run directory" 2 "RUN_DIR" "metrics.jsonl" -- "$LOOM" report --serve "$tmp/nothing"
refuse "report --serve with a bad --listen" 2 "--serve" "port" -- "$LOOM" report --serve --listen 127.0.0.1:99999 "$S"

# loom sim --serve: the same API fed by the simulator, kept up after the run with --serve-wait
"$LOOM" sim --config "$tmp/run.json" --clients-dir "$tmp/cd" --sample-len 12 --serve 0 --serve-token-file "$tmp/tok" \
    --serve-wait > "$tmp/sim.out" 2> "$tmp/sim.err" &
mpid=$!
check "sim --serve prints its URL" serve_up "$tmp/sim.err"
D="http://127.0.0.1:$dport"
for _ in $(seq 300); do grep -q "until Ctrl-C" "$tmp/sim.err" && break; sleep 0.1; done
check "sim: the status" test "$(code -H "$T" "$D/v1/dash/status")" = 200
check "sim: done after the last round" grep -q '"round":3,"rounds":3,"state":"done"' "$tmp/body"
check "sim: the final sample" grep -q '"sample":{"round":3,"text":' "$tmp/body"
check "sim: the run's options" grep -q '"strategy":"fedavg"' "$tmp/body"
check "sim: 401 without the token" test "$(code "$D/v1/dash/metrics")" = 401
kill -INT $mpid
wait $mpid
check "sim --serve-wait stops on Ctrl-C" test $? -eq 0
refuse "--serve-wait without --serve" 2 "--serve" -- "$LOOM" sim --config "$tmp/run.json" --serve-wait
refuse "--serve with a bad port" 2 "--serve" "port" -- "$LOOM" sim --config "$tmp/run.json" --serve 70000
printf 'short\n' > "$tmp/short"
refuse "a short token file" 2 "--serve-token-file" "16 to 255" -- "$LOOM" sim --config "$tmp/run.json" --serve 0 --serve-token-file "$tmp/short"
finish
