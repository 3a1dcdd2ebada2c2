#!/usr/bin/env bash
# loom tokenize / detokenize / bench tokenize from the shell.
set -u
LOOM=${LOOM_BIN:?LOOM_BIN not set}
SHARED=${LOOM_SHARED:-../shared}
GPT2=$SHARED/reference/tokenizer/encoder.json
LLAMA2=$SHARED/data/llama2-tokenizer/tokenizer.bin
TEXT=$SHARED/data/tinyshakespeare/input.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
check() { # name, then a command that must succeed
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $name" >&2; fi
}

# ids from the reference README: "Hello world" -> [15496, 995] (GPT-2), [15043, 3186] (Llama 2), BOS = 1
check "gpt2 ids" test "$(printf 'Hello world' | "$LOOM" tokenize --tokenizer "$GPT2")" = "15496 995"
check "llama2 ids with --bos" test "$(printf 'Hello world' | "$LOOM" tokenize --tokenizer "$LLAMA2" --bos)" = "1 15043 3186"
check "empty input" test "$(printf '' | "$LOOM" tokenize --tokenizer "$GPT2")" = ""

# round trips of the whole of tinyshakespeare
for tok in "$GPT2" "$LLAMA2" "$SHARED/data/stories260K/tok512.bin" "$SHARED/data/mistral-tokenizer" "$SHARED/data/llama3-tokenizer"; do
    "$LOOM" tokenize --tokenizer "$tok" < "$TEXT" > "$TMP/ids"
    "$LOOM" detokenize --tokenizer "$tok" < "$TMP/ids" > "$TMP/back"
    check "round trip through $tok" cmp -s "$TEXT" "$TMP/back"
done
check "ids are one line" test "$(wc -l < "$TMP/ids")" -eq 1

# errors: exit status and a message, never a crash
printf 'bad \xff byte' | "$LOOM" tokenize --tokenizer "$GPT2" > /dev/null 2> "$TMP/err"
check "invalid UTF-8 fails" test $? -eq 1
check "invalid UTF-8 message" grep -q "UTF-8" "$TMP/err"
printf 'x' | "$LOOM" tokenize > /dev/null 2>&1
check "missing --tokenizer is a usage error" test $? -eq 2
printf 'x' | "$LOOM" tokenize --tokenizer "$TMP/nope" > /dev/null 2> "$TMP/err"
check "missing file fails" test $? -eq 1
check "missing file message" grep -q "nope" "$TMP/err"
printf '15496 hello' | "$LOOM" detokenize --tokenizer "$GPT2" > /dev/null 2>&1
check "non-numeric id fails" test $? -eq 1
printf '99999999' | "$LOOM" detokenize --tokenizer "$GPT2" > /dev/null 2>&1
check "out-of-range id fails" test $? -eq 1
check "detokenize" test "$(printf '15496  995\n' | "$LOOM" detokenize --tokenizer "$GPT2")" = "Hello world"

for cmd in tokenize detokenize "bench tokenize"; do
    check "$cmd --help" "$LOOM" $cmd --help > /dev/null
done
check "bench prints MB/s" bash -c "'$LOOM' bench tokenize --reps 1 --file '$SHARED/data/tinyshakespeare/SOURCE.md' | grep -q 'MB/s'"

echo "$pass passed, $fail failed"
test "$fail" -eq 0
