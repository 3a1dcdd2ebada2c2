#!/usr/bin/env bash
# loom data split / loom data shakespeare end to end: shards, manifest, plot, determinism, errors.
set -u
. "$(dirname "$0")/testlib.sh"
DATA=$SHARED/data
TMP=$tmp
lines() { cat "$@" 2>/dev/null | wc -l | tr -d ' '; }
json_int() { # json_int FILE KEY: first integer value of "KEY" in a JSON file
    grep -o "\"$2\": *[0-9]*" "$1" | head -1 | grep -o '[0-9]*$'
}

# 1. Alpaca JSONL, IID, per-client test split: the shards hold the input lines, each once.
for i in $(seq 1 30); do
    printf '{"instruction": "Task %d", "input": "", "output": "Answer %d"}\n' "$i" "$i"
done > "$TMP/alpaca.jsonl"
check "alpaca split runs" "$LOOM" data split --data "$TMP/alpaca.jsonl" --format alpaca --partition iid --clients 3 \
    --test-frac 0.2 --seed 1 --out "$TMP/a" > "$TMP/a.out"
check "3 train shards" test "$(ls "$TMP"/a | grep "^client_.*\.jsonl$" | grep -vc "\.test\.")" = 3
check "30 records in the shards" test "$(lines "$TMP"/a/client_*.jsonl)" = 30
check "records are the input lines" test "$(cat "$TMP"/a/client_*.jsonl | sort | md5sum)" = "$(sort "$TMP/alpaca.jsonl" | md5sum)"
check "20% test: 2 per client" test "$(lines "$TMP"/a/client_0001.test.jsonl)" = 2
check "manifest client count" test "$(json_int "$TMP/a/manifest.json" n_clients)" = 3
check "table row per client" test "$(grep -c '^client_000' "$TMP/a.out")" = 3

# 2. AG News (CSV, numbered columns, no header), Dirichlet with a plot; same seed -> same split.
ag() { "$LOOM" data split --data "$DATA/ag-news/test.csv" --format csv --text-col 2,3 --label-col 1 \
    --labels 1=World,2=Sports,3=Business,4=Sci/Tech --partition dirichlet --alpha 0.1 --clients 8 "$@"; }
check "ag news dirichlet runs" ag --seed 3 --out "$TMP/ag1" --plot "$TMP/ag1.svg" > "$TMP/ag1.out"
check "7,600 rows in the shards (SOURCE.md)" test "$(lines "$TMP"/ag1/client_*.csv)" = 7600
check "ag news manifest examples" test "$(json_int "$TMP/ag1/manifest.json" examples)" = 7600
check "label names in the table" grep -q 'Sci/Tech:' "$TMP/ag1.out"
check "plot is an SVG document" grep -q '</svg>' "$TMP/ag1.svg"
check "plot is well-formed XML" xmllint --noout "$TMP/ag1.svg"
check "8 bars' worth of labels on the x axis" test "$(grep -c 'rotate(-60)' "$TMP/ag1.svg")" = 8
check "same seed again" ag --seed 3 --out "$TMP/ag2" > /dev/null
check "same seed, same shards" cmp -s "$TMP/ag1/manifest.json" "$TMP/ag2/manifest.json"
check "another seed" ag --seed 4 --out "$TMP/ag3" > /dev/null
check "another seed, other shards" bash -c "! cmp -s '$TMP/ag1/manifest.json' '$TMP/ag3/manifest.json'"

# 3. Brown corpus, natural by genre: 15 clients (SOURCE.md), 500 documents; a shard loads again.
check "brown natural runs" "$LOOM" data split --data "$DATA/brown-corpus" --format brown --partition natural \
    --out "$TMP/brown" > "$TMP/brown.out"
check "15 genre clients" test "$(json_int "$TMP/brown/manifest.json" n_clients)" = 15
check "500 documents" test "$(lines "$TMP"/brown/client_*.jsonl)" = 500
news=$(grep -l '"genre":"news"' "$TMP"/brown/client_*.jsonl)
check "news shard has the 44 news files" test "$(lines $news)" = 44
check "a shard reloads (jsonl, key genre)" "$LOOM" data split --data "$news" --format jsonl --key genre \
    --partition natural --out "$TMP/brown2" > "$TMP/brown2.out"
check "one genre in that shard" test "$(json_int "$TMP/brown2/manifest.json" n_clients)" = 1

# 4. SST-2 dev (TSV with a header), quantity skew with a minimum.
check "sst2 quantity runs" "$LOOM" data split --data "$DATA/sst2/dev.tsv" --format tsv --text-col sentence \
    --label-col label --partition quantity --clients 5 --min-examples 50 --seed 2 --out "$TMP/sst" > /dev/null
# every shard: header + >= 50 rows; 872 rows in all (SOURCE.md)
check "sst2 rows" test "$(( $(lines "$TMP"/sst/client_*.tsv) - 5 ))" = 872
for f in "$TMP"/sst/client_*.tsv; do check "min 50 rows in $f" test "$(lines "$f")" -ge 51; done

# 5. Malformed input: a clear error naming file and line, exit status 1.
printf 'text,label\na,1\nb,2,3\n' > "$TMP/bad.csv"
refuse "ragged csv" 1 'bad\.csv:3' '3 fields' -- "$LOOM" data split --data "$TMP/bad.csv" --format csv --label-col label \
    --partition iid --clients 2 --out "$TMP/bad"
printf '{"text": "a", "label": 1}\n{"text": "b", "label": 2\n' > "$TMP/bad.jsonl"
refuse "bad json" 1 'bad\.jsonl:2' 'json' -- "$LOOM" data split --data "$TMP/bad.jsonl" --format jsonl-cls --partition iid \
    --clients 2 --out "$TMP/bad"
refuse "unknown partition is a usage error" 2 'bogus' 'partition' -- "$LOOM" data split --data "$TMP/alpaca.jsonl" \
    --format alpaca --partition bogus --clients 2 --out "$TMP/bad"
refuse "missing data file" 1 'no-such\.jsonl' -- "$LOOM" data split --data "$TMP/no-such.jsonl" --format alpaca \
    --partition iid --clients 2 --out "$TMP/bad"

# 6. Federated Shakespeare: client count against an awk reading of input.txt (speakers with >= 64 lines).
want=$(awk 'BEGIN { prev = 1 }
    $0 == "" { prev = 1; cur = ""; next }
    prev && /^[A-Z][A-Za-z\047 ,.&-]*:$/ { cur = substr($0, 1, length($0) - 1); prev = 0; next }
    { prev = 0; if (cur != "") n[cur]++ }
    END { for (k in n) if (n[k] >= 64) c++; print c }' "$DATA/tinyshakespeare/input.txt")
check "shakespeare runs" "$LOOM" data shakespeare --data "$DATA/tinyshakespeare/input.txt" --out "$TMP/shk" > "$TMP/shk.out"
check "shakespeare client count $want" grep -q "clients (speakers with >= 64 lines): $want\$" "$TMP/shk.out"
check "shakespeare train files" test "$(ls "$TMP"/shk | grep "^client_.*\.txt$" | grep -vc "\.test\.")" = "$want"
total=$(sed -n 's/^lines: \([0-9]*\) .*/\1/p' "$TMP/shk.out")
check "shard lines = lines reported ($total)" test "$(lines "$TMP"/shk/client_*.txt)" = "$total"
check "size summary" grep -q '^lines per client: min [0-9]*, median [0-9.]*, max [0-9]*, mean [0-9.]*$' "$TMP/shk.out"
check "histogram" grep -q '^ *64-127 ' "$TMP/shk.out"

finish
