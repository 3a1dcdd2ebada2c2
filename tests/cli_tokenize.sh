#!/usr/bin/env bash
# loom tokenize / detokenize / bench tokenize from the shell.
set -u
. "$(dirname "$0")/testlib.sh"
GPT2=$SHARED/reference/tokenizer/encoder.json
LLAMA2=$SHARED/data/llama2-tokenizer/tokenizer.bin
TEXT=$SHARED/data/tinyshakespeare/input.txt
TMP=$tmp

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
printf 'bad \xff byte' > "$TMP/bad.txt"
printf 'x' > "$TMP/x.txt"
refuse "invalid UTF-8" 1 'UTF-8' -- "$LOOM" tokenize --tokenizer "$GPT2" < "$TMP/bad.txt"
refuse "missing --tokenizer is a usage error" 2 '--tokenizer' -- "$LOOM" tokenize < "$TMP/x.txt"
refuse "missing tokenizer file" 1 'nope' -- "$LOOM" tokenize --tokenizer "$TMP/nope" < "$TMP/x.txt"
printf '15496 hello' > "$TMP/ids1"
refuse "non-numeric id" 1 'hello' 'token id' -- "$LOOM" detokenize --tokenizer "$GPT2" < "$TMP/ids1"
printf '99999999' > "$TMP/ids2"
refuse "out-of-range id" 1 '99999999' 'vocabulary|range' -- "$LOOM" detokenize --tokenizer "$GPT2" < "$TMP/ids2"
check "detokenize" test "$(printf '15496  995\n' | "$LOOM" detokenize --tokenizer "$GPT2")" = "Hello world"

for cmd in tokenize detokenize "bench tokenize"; do
    check "$cmd --help" "$LOOM" $cmd --help > /dev/null
done
check "bench prints MB/s" bash -c "'$LOOM' bench tokenize --reps 1 --file '$SHARED/data/tinyshakespeare/SOURCE.md' | grep -q 'MB/s'"

finish
