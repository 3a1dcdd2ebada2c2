#!/usr/bin/env bash
# Load and throughput of the federation transport on loopback TLS (docs/protocol.md).
#
# 1. N simulated clients (default 1000, build/loadgen: one thread, curl multi, keep-alive) poll a
#    `loom server` every RETRY_MS and upload LoRA-sized updates when sampled: the GPT-2 124M shape with
#    LoRA r=8 on c_attn, 12 x (8x768 + 2304x8) = 294912 floats (1.18 MB a f32 update). Prints
#    requests/s, p50/p99 poll and upload latency, bytes uploaded, MB/s, and the server's peak RSS
#    (VmHWM of /proc/PID/status).
# 2. One full update of the 124M-parameter model (124439808 floats, 498 MB f32): uploaded once by
#    loadgen (libcurl, as `loom client` does) and once by the curl program (the same number of bytes,
#    the same server, the same TLS): the two MB/s side by side.
#
# Usage: bash bench/net_load.sh [N_CLIENTS] [DURATION_S] [SAMPLE]
# The server is `loom server` (clients registered with `loom server add-client`, a RUN.json); where the
# loom binary has no server command yet, build/net_serve (the same loom_server_run, the LoRA layout,
# FedAvg) stands in for it.
# Env: LOOM (default build/loom), LOADGEN (default build/loadgen), NET_SERVE (default build/net_serve),
#      RETRY_MS (500), PORT (a free one),
#      BASE_SHA256 (the LoRA run's frozen base hash; default: computed by loadgen from gpt2-124m, seed 1,
#      as `loom server` makes it), SKIP_LORA=1, SKIP_FULL=1,
#      THREADS (the server's HTTP threads, default 16), KEEP=1 (keep the temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
duration=${2:-30}
sample=${3:-100}
retry=${RETRY_MS:-500}
loom=${LOOM:-build/loom}
loadgen=${LOADGEN:-build/loadgen}
net_serve=${NET_SERVE:-build/net_serve}
if "$loom" server add-client --help > /dev/null 2>&1; then
    use_cli=1
else
    use_cli=0
    echo "net_load: $loom has no server command: using $net_serve"
fi
bins=("$loom" "$loadgen")
[ "$use_cli" = 0 ] && bins+=("$net_serve")
for b in "${bins[@]}"; do
    [ -x "$b" ] || { echo "net_load: $b not built (cmake --build build)" >&2; exit 1; }
done
for t in openssl curl python3; do
    command -v "$t" > /dev/null || { echo "net_load: needs $t (apt-get install -y --no-install-recommends ${t/python3/python3-minimal})" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/loom_netload.XXXXXX)
server_pid=
sampler_pid=
cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "net_load: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
echo "net_load: $(ulimit -n) file descriptors per process; $(nproc) cores"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A certificate for 127.0.0.1 (the clients verify it against this file).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
chmod 600 "$tmp/key.pem"

# register STATE COUNT PREFIX OUT: COUNT identities, their "name token" lines into OUT.
register() {
    local i
    : > "$4"
    for ((i = 0; i < $2; i++)); do
        local name
        name=$(printf '%s%04d' "$3" "$i")
        echo "$name $("$loom" server add-client --state "$1" "$name" 2>> "$tmp/add-client.log")" >> "$4"
    done
}

# serve STATE N TOKENS RUN.json LOG DIM SAMPLE ROUNDS: registers N clients ("name token" lines into
# TOKENS), starts the server and waits until it answers over TLS.
serve() {
    port=${PORT:-$(free_port)}
    url=https://127.0.0.1:$port
    if [ "$use_cli" = 1 ]; then
        register "$1" "$2" c "$3"
        "$loom" server --state "$1" --config "$4" --listen "127.0.0.1:$port" --threads "${THREADS:-16}" \
            --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" > "$5" 2>&1 &
    else
        "$net_serve" --state "$1" --clients "$2" --tokens "$3" --dim "$6" --sample "$7" --rounds "$8" \
            --listen "127.0.0.1:$port" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" --poll-ms "$retry" \
            > "$5" 2>&1 &
    fi
    server_pid=$!
    local t
    for ((t = 0; t < 1200; t++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tmp/cert.pem" "$url/v1/task" || true)
        [ "$code" = 401 ] && return 0
        kill -0 "$server_pid" 2>/dev/null || { echo "net_load: the server exited:" >&2; cat "$5" >&2; exit 1; }
        sleep 0.2
    done
    echo "net_load: the server did not answer within 240 s" >&2
    cat "$5" >&2
    exit 1
}

# Peak and sampled resident memory of the server (MiB).
server_hwm() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$server_pid/status"; }
start_sampler() {
    (while kill -0 "$server_pid" 2>/dev/null; do
        awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status" 2>/dev/null
        sleep 0.5
    done) > "$1" &
    sampler_pid=$!
}

stop_server() {
    [ -n "$sampler_pid" ] && { kill "$sampler_pid" 2>/dev/null || true; sampler_pid=; }
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# The LoRA run's frozen base: `loom server` makes gpt2-124m from its seed and checks clients' hash of it.
base_flag=(--base-model gpt2-124m --base-seed 1)
[ "$use_cli" = 0 ] && base_flag=()
[ -n "${BASE_SHA256:-}" ] && base_flag=(--base-sha256 "$BASE_SHA256")

# ---------------------------------------------------------------- 1. N clients, LoRA-sized updates
if [ "${SKIP_LORA:-0}" != 1 ]; then
    state=$tmp/lora
    cat > "$tmp/lora.json" <<EOF
{
  "model": "gpt2-124m",
  "peft": "lora",
  "lora-r": 8,
  "lora-alpha": 16,
  "target-modules": "c_attn",
  "strategy": "fedavg",
  "rounds": 1000,
  "sample": $sample,
  "local-steps": 1,
  "lr": 0.001,
  "seed": 1,
  "eval-every": 0
}
EOF
    echo "net_load: registering $n clients, starting the server"
    t0=$SECONDS
    serve "$state" "$n" "$tmp/lora-tokens.txt" "$tmp/lora.json" "$tmp/lora-server.log" 294912 "$sample" 1000
    echo "net_load: registered and serving in $((SECONDS - t0)) s"
    start_sampler "$tmp/lora-rss.txt"
    echo "net_load: $n clients for $duration s against $url (sample $sample a round, poll every $retry ms)"
    "$loadgen" --url "$url" --ca-cert "$tmp/cert.pem" --clients "$tmp/lora-tokens.txt" --n "$n" \
        --retry-ms "$retry" --duration "$duration" "${base_flag[@]}" | tee "$tmp/lora-loadgen.txt"
    hwm=$(server_hwm)
    rss_max=$(sort -n "$tmp/lora-rss.txt" | tail -1)
    echo "server: peak RSS (VmHWM) $hwm MiB; largest sampled VmRSS $((rss_max / 1024)) MiB"
    grep -q "dim 294912" "$tmp/lora-loadgen.txt" || echo "net_load: warning: the server's dim is not 294912" >&2
    stop_server
fi

# ---------------------------------------------------------------- 2. one 124M full update: loom vs curl
if [ "${SKIP_FULL:-0}" != 1 ]; then
    state=$tmp/full
    cat > "$tmp/full.json" <<EOF
{
  "model": "gpt2-124m",
  "strategy": "fedavg",
  "rounds": 1,
  "sample": 2,
  "local-steps": 1,
  "lr": 0.001,
  "seed": 1,
  "eval-every": 0
}
EOF
    serve "$state" 2 "$tmp/full-tokens.txt" "$tmp/full.json" "$tmp/full-server.log" 124439808 2 1
    # Round 1 opens once both clients said hello. The second client's update is written by loadgen (not sent) and
    # sent by curl afterwards; the first uploads through libcurl as `loom client` does.
    sed -n 2p "$tmp/full-tokens.txt" > "$tmp/full-t1.txt"
    sed -n 1p "$tmp/full-tokens.txt" > "$tmp/full-t0.txt"
    "$loadgen" --url "$url" --ca-cert "$tmp/cert.pem" --clients "$tmp/full-t1.txt" --n 1 --duration 300 \
        --write-body "$tmp/full-body.bin" > "$tmp/full-write.txt" &
    writer=$!
    sleep 1
    "$loadgen" --url "$url" --ca-cert "$tmp/cert.pem" --clients "$tmp/full-t0.txt" --n 1 --duration 300 \
        --uploads 1 | tee "$tmp/full-loadgen.txt"
    wait "$writer"
    cat "$tmp/full-write.txt"
    key=$(sed -n 's/.*key \([0-9a-f]*\).*/\1/p' "$tmp/full-write.txt")
    token1=$(awk '{print $2}' "$tmp/full-t1.txt")
    bytes=$(stat -c %s "$tmp/full-body.bin")
    curl -s -o "$tmp/curl-answer.json" --cacert "$tmp/cert.pem" -H "Authorization: Bearer $token1" \
        -H "Content-Type: application/octet-stream" -H "Idempotency-Key: $key" -H "X-Loom-SHA256: $key" \
        --data-binary "@$tmp/full-body.bin" \
        -w 'curl: %{http_code}, %{size_upload} bytes in %{time_total} s, %{speed_upload} B/s\n' \
        "$url/v1/update" | tee "$tmp/curl.txt"
    echo "curl answer: $(cat "$tmp/curl-answer.json")"
    curl_mbs=$(awk '{for (i = 1; i <= NF; i++) if ($(i) == "B/s") printf "%.1f", $(i-1) / 1e6}' "$tmp/curl.txt")
    loom_mbs=$(sed -n 's/^  upload throughput.*: \([0-9.]*\) MB\/s/\1/p' "$tmp/full-loadgen.txt" | head -1)
    echo "full update ($bytes bytes): loadgen (libcurl) $loom_mbs MB/s, curl $curl_mbs MB/s; server peak RSS $(server_hwm) MiB"
    echo "cipher alone (openssl speed, AES-128-GCM, 16 KiB records, one core):"
    openssl speed -evp aes-128-gcm -seconds 1 -bytes 16384 2>/dev/null | tail -1
    stop_server
fi
