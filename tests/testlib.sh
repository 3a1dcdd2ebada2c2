# Shared helpers of the shell-level CLI tests (tests/cli_*.sh source this file).
#
#   check WHAT COMMAND...     COMMAND must succeed.
#   refuse WHAT STATUS PATTERN... -- COMMAND...
#                             COMMAND must fail with exit status STATUS (1, 2, or 12 for either; never
#                             0 and never a signal's 128+n, so a crash cannot pass) and its stderr must
#                             match every PATTERN (extended regex, case-insensitive). Put the flag or
#                             file name in one pattern and the gist in another rather than a whole
#                             sentence. Redirect stdin on the refuse line itself, not through a pipe
#                             (a pipe runs it in a subshell and loses the count).
#   fails WHAT PATTERN COMMAND...
#                             COMMAND must fail with exit status 1 or 2 (not a crash) and its stderr
#                             must contain PATTERN (grep basic regex); stdout and stderr are left in
#                             $tmp/out and $tmp/err for further checks.
#   num_lt A B                A < B as numbers (both must be numbers).
#   st_data FILE              SHA-256 of a safetensors file's tensor bytes, whatever its metadata says.
#   llamacpp_setup            makes $tmp/lc a folder to run tests/llamacpp_gen.mjs in with llama.cpp
#                             (node-llama-cpp; ctest's fixture installs it once into $LOOM_LLAMACPP_DIR,
#                             else it is installed into $tmp), $LC_NODE the node to run it with; fails,
#                             counted and said, when it cannot be.
#   finish                    prints "N passed, M failed" and exits 1 on any failure.
#
# $tmp is a fresh directory under /tmp, removed on exit; tests write nowhere else.
LOOM=${LOOM_BIN:-./loom}
SHARED=${LOOM_SHARED:-../shared}
SRC=${LOOM_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
pass=0
fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/loom_test_XXXXXX")
trap 'rm -rf "$tmp"' EXIT

st_data() {
    local h
    h=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    tail -c +$((9 + h)) "$1" | sha256sum | cut -d' ' -f1
}

check() {
    local what=$1
    shift
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $what" >&2; fi
}

refuse() {
    local what=$1 want=$2
    shift 2
    local pats=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do pats+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    if [ $# -eq 0 ]; then echo "FAIL: $what: refuse without a command" >&2; fail=$((fail + 1)); return; fi
    local err="$tmp/refuse.err" st ok=1 why=""
    "$@" > /dev/null 2> "$err"
    st=$?
    case "$st" in
    1 | 2) case "$want" in *"$st"*) ;; *) ok=0; why="exit status $st, expected $want" ;; esac ;;
    0) ok=0; why="exited 0" ;;
    *) ok=0; why="exit status $st (a crash or a signal)" ;;
    esac
    local p
    for p in "${pats[@]}"; do
        if ! grep -Eqi -- "$p" "$err"; then ok=0; why="${why:+$why; }stderr does not match '$p'"; fi
    done
    if [ $ok = 1 ]; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: $what: $why; stderr was:" >&2
        head -5 "$err" | sed 's/^/    /' >&2
    fi
}

fails() {
    local what=$1 pat=$2
    shift 2
    "$@" > "$tmp/out" 2> "$tmp/err"
    local rc=$?
    if [ $rc -ne 1 ] && [ $rc -ne 2 ]; then fail=$((fail + 1)); echo "FAIL: $what: exit status $rc" >&2; return; fi
    check "$what: message" grep -q -- "$pat" "$tmp/err"
}

num_lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/ && b ~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/ && a + 0 < b + 0) }'; }

llamacpp_setup() {
    local nl=${LOOM_LLAMACPP_DIR:-$tmp/llamacpp}
    if ! bash "$SRC/tests/llamacpp_install.sh" "$nl" > /dev/null; then
        echo "FAIL: llama.cpp is not installed in $nl; llama.cpp checks not run" >&2
        fail=$((fail + 1))
        return 1
    fi
    # the script runs from $tmp/lc, importing the install through a link (another test may use it at once)
    mkdir -p "$tmp/lc" && ln -sfn "$nl/node_modules" "$tmp/lc/node_modules" && cp "$SRC/tests/llamacpp_gen.mjs" "$tmp/lc/"
    LC_NODE="$nl/node" # the node the install chose (>= 20)
}

finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}
