#!/usr/bin/env bash
# loom report on finished runs: the plots' points and the summary's numbers recomputed here from
# metrics.jsonl with awk (through the chart geometry plot.h documents), a DP run's epsilon, a
# hand-written run directory in the server's layout (attack success, refused updates, a partial last
# row), and the errors for what is not a run.
set -u
. "$(dirname "$0")/testlib.sh"
export LOOM_SHARED=$SHARED
cat > "$tmp/cfg.json" <<'JSON'
{"model": "tiny", "rounds": 4, "sample": 4, "local-steps": 2, "batch": 2, "seq": 32, "eval-every": 2,
 "eval-clients": 5, "sample-len": 0, "seed": 3}
JSON
"$LOOM" sim --config "$tmp/cfg.json" --out "$tmp/run" > /dev/null 2>&1
check "sim exits 0" test $? -eq 0
"$LOOM" report "$tmp/run" --out "$tmp/rep" > "$tmp/rep.out" 2> "$tmp/rep.err"
check "report exits 0" test $? -eq 0
for f in report.html summary.md loss.svg accuracy.svg perplexity.svg clients.svg bytes.svg; do
    check "wrote $f" test -s "$tmp/rep/$f"
done
check "no epsilon plot without DP" test ! -e "$tmp/rep/epsilon.svg"
check "no attack plot without attacks" test ! -e "$tmp/rep/attack.svg"
check "the page embeds the five plots" test "$(grep -c '<svg ' "$tmp/rep/report.html")" -eq 5
check "the page links the files" grep -q 'href="bytes.svg"' "$tmp/rep/report.html"
for f in loss accuracy perplexity clients bytes; do check "$f.svg is well-formed XML" xmllint --noout "$tmp/rep/$f.svg"; done

M="$tmp/run/metrics.jsonl"
# field KEY: the value of "KEY": in a row ("" when absent or null)
AWKLIB='function field(key,   m) { if (match($0, "\"" key "\":[-0-9.eE+]+")) return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3); return "" }
function px(x) { return 70 + (x - x0) / (x1 - x0) * 500 }
function py(y) { return 390 - (y - y0) / (y1 - y0) * 350 }
function range(   d) { if (y1 <= y0) { d = y0 != 0 ? 0.05 * (y0 < 0 ? -y0 : y0) : 0.5; y0 -= d; y1 += d } d = 0.05 * (y1 - y0); y0 -= d; y1 += d }'
# points KEY [log]: the polyline points of the round rows' KEY as plot.h maps them, over the range of
# the keys in RANGE_KEYS (the chart's other series)
points() {
    awk -v key="$1" -v keys="$2" -v logy="${3:-0}" "$AWKLIB"'
    /"type":"round"/ { r = field("round"); n = split(keys, k, " ")
        for (i = 1; i <= n; i++) { v = field(k[i]); if (v == "" || (logy && v <= 0)) continue
            if (logy) v = log(v) / log(10)
            if (!seen++) { x0 = x1 = r; y0 = y1 = v }
            if (r < x0) x0 = r; if (r > x1) x1 = r; if (v < y0) y0 = v; if (v > y1) y1 = v }
        v = field(key); if (v != "") { rr[++m] = r; vv[m] = logy ? log(v) / log(10) : v } }
    END { range(); for (i = 1; i <= m; i++) printf "%.1f,%.1f ", px(rr[i]), py(vv[i]); printf "\n" }' "$M"
}
# polyline FILE N: the points of the Nth polyline of an SVG
polyline() { grep -o '<polyline[^>]*points="[^"]*"' "$1" | sed -n "${2}p" | sed 's/.*points="//; s/"$//'; echo; }
# same A B: the two point lists agree within 0.11 (one rounding step of %.1f)
same() {
    awk -v a="$1" -v b="$2" 'BEGIN { gsub(/^ +| +$/, "", a); gsub(/^ +| +$/, "", b); na = split(a, p, /[ ,]+/); nb = split(b, q, /[ ,]+/)
        if (na != nb || na < 3) { print "points: " a " | " b > "/dev/stderr"; exit 1 }
        for (i = 1; i <= na; i++) if (p[i] != "" && (p[i] - q[i] > 0.11 || q[i] - p[i] > 0.11)) { print "point " i ": " a " | " b > "/dev/stderr"; exit 1 } }'
}
check "loss.svg: train loss points" same "$(polyline "$tmp/rep/loss.svg" 1)" "$(points train_loss 'train_loss eval_loss')"
check "loss.svg: eval loss points" same "$(polyline "$tmp/rep/loss.svg" 2)" "$(points eval_loss 'train_loss eval_loss')"
check "accuracy.svg: points" same "$(polyline "$tmp/rep/accuracy.svg" 1)" "$(points eval_acc eval_acc)"
check "perplexity.svg: log-axis points" same "$(polyline "$tmp/rep/perplexity.svg" 1)" "$(points perplexity perplexity 1)"
# the clients' spread: per round the min and max of the accepted clients' losses (the band's top edge
# runs along the maxima), over a range that also holds eval mean +- std
awk "$AWKLIB"'
    /"type":"round"/ { r = field("round"); order[++nr] = r; mu = field("eval_loss_mean"); sd = field("eval_loss_std")
        if (mu != "") { add(mu - sd); add(mu + sd) } }
    /"type":"client"/ && /"status":"accepted"/ { r = field("round"); l = field("loss") + 0
        if (!(r in lo) || l < lo[r]) lo[r] = l; if (!(r in hi) || l > hi[r]) hi[r] = l; add(l) }
    function add(v) { if (!seen++) { y0 = y1 = v } if (v < y0) y0 = v; if (v > y1) y1 = v }
    END { x0 = order[1]; x1 = order[nr]; range()
        for (i = 1; i <= nr; i++) printf "%.1f,%.1f ", px(order[i]), py(hi[order[i]])
        for (i = nr; i >= 1; i--) printf "%.1f,%.1f ", px(order[i]), py(lo[order[i]]); printf "\n" }' "$M" > "$tmp/band.want"
grep -o '<polygon[^>]*points="[^"]*"' "$tmp/rep/clients.svg" | head -1 | sed 's/.*points="//; s/"$//' > "$tmp/band.got"
check "clients.svg: min-max band of the client rows" same "$(cat "$tmp/band.got")" "$(cat "$tmp/band.want")"
# bytes: one bar per round and direction, titled with the value in MiB
awk "$AWKLIB"'/"type":"round"/ { printf "up (updates), x = %s: %.6g\n", field("round"), field("bytes_up") / 1048576 }' "$M" > "$tmp/bytes.want"
grep -o '<title>up (updates)[^<]*' "$tmp/rep/bytes.svg" | sed 's/<title>//' > "$tmp/bytes.got"
check "bytes.svg: a bar per round with its MiB" cmp -s "$tmp/bytes.want" "$tmp/bytes.got"
check "bytes.svg: the down bars too" test "$(grep -c '<title>down (global model)' "$tmp/rep/bytes.svg")" -eq 4
# summary.md: the numbers from the rows
S="$tmp/rep/summary.md"
want=$(awk "$AWKLIB"'/"type":"round"/ { n++; t = field("train_loss"); if (t != "") last = t
    u += field("bytes_up"); e = field("eval_loss"); if (e != "" && (best == "" || e < best)) { best = e; br = field("round") } }
    END { printf "| rounds | %d (last round 4) |\n| final train loss | %.4f |\n| best eval loss | %.4f (round %d) |\n| bytes up | %.0f (%.2f MiB) |\n", n, last, best, br, u, u / 1048576 }' "$M")
while IFS= read -r line; do check "summary.md has: $line" grep -qxF "$line" "$S"; done <<< "$want"
acc=$(awk "$AWKLIB"'/"type":"round"/ { a = field("eval_acc"); if (a != "") last = a } END { printf "%.4f", last }' "$M")
check "summary.md: final accuracy" grep -qxF "| final accuracy | $acc |" "$S"
check "summary.md: the run's settings" grep -qxF "| strategy | fedavg |" "$S"
check "report.html: the same table" grep -qF "<tr><th>final accuracy</th><td>$acc</td></tr>" "$tmp/rep/report.html"
# --format md writes only the summary; the default --out is RUN_DIR/report
"$LOOM" report "$tmp/run" --format md > /dev/null 2>&1
check "--format md: summary only" test -s "$tmp/run/report/summary.md" -a ! -e "$tmp/run/report/report.html" -a ! -e "$tmp/run/report/loss.svg"

# a DP run: epsilon per round, as the rows give it
"$LOOM" sim --config "$tmp/cfg.json" --dp central --dp-clip 0.5 --dp-noise 0.8 --out "$tmp/dp" > /dev/null 2>&1
"$LOOM" report "$tmp/dp" --out "$tmp/dprep" > /dev/null 2>&1
check "epsilon.svg written" test -s "$tmp/dprep/epsilon.svg"
M="$tmp/dp/metrics.jsonl"
check "epsilon.svg: points" same "$(polyline "$tmp/dprep/epsilon.svg" 1)" "$(points epsilon epsilon)"
eps=$(awk "$AWKLIB"'/"type":"round"/ { e = field("epsilon") } END { printf "%.4g", e }' "$M")
check "summary.md: final epsilon" grep -qxF "| epsilon (final) | $eps |" "$tmp/dprep/summary.md"

# a run directory in the server's layout, written by hand: three rounds, a refused update, a backdoor's
# success rate, and a last row cut short by a crash
mkdir -p "$tmp/srv"
cat > "$tmp/srv/metrics.jsonl" <<'ROWS'
{"type":"round","round":1,"sampled":2,"accepted":2,"rejected":0,"train_loss":2,"eval_loss":1.5,"eval_acc":0.25,"perplexity":4.48168907,"attack_success":0.5,"bytes_down":2048,"bytes_up":1024,"seconds":1.5,"clients":[0,1]}
{"type":"client","round":1,"client":0,"name":"a","examples":5,"tokens":10,"loss":1,"update_norm":1,"bytes_up":512,"status":"accepted"}
{"type":"client","round":1,"client":1,"name":"b","examples":5,"tokens":10,"loss":3,"update_norm":1,"bytes_up":512,"status":"accepted"}
{"type":"round","round":2,"sampled":2,"accepted":1,"rejected":1,"train_loss":1,"eval_loss":1,"eval_acc":0.5,"perplexity":2.71828183,"attack_success":0.75,"bytes_down":2048,"bytes_up":512,"seconds":2.5,"clients":[0,1]}
{"type":"client","round":2,"client":0,"name":"a","examples":5,"tokens":10,"loss":1,"update_norm":1,"bytes_up":512,"status":"accepted"}
{"type":"client","round":2,"client":1,"name":"b","examples":0,"tokens":0,"loss":9,"update_norm":0,"bytes_up":0,"status":"late"}
{"type":"round","round":3,"sampled":2,"accepted":2,"rejected":0,"train_loss":0.5,"eval_loss":1.25,"eval_acc":0.4,"perplexity":3.49034296,"attack_success":0.25,"bytes_down":2048,"bytes_up":1024,"seconds":1,"clients":[0,1]}
{"type":"round","round":4,"sampled":2,"acc
ROWS
"$LOOM" report "$tmp/srv" --title "hand run" > "$tmp/srv.out" 2> "$tmp/srv.err"
check "hand-written run: exit 0" test $? -eq 0
check "the cut row is said to be skipped" grep -q 'metrics.jsonl:8: an incomplete last row was skipped' "$tmp/srv.err"
S="$tmp/srv/report/summary.md"
check "title" grep -qxF "# hand run" "$S"
check "rounds" grep -qxF "| rounds | 3 (last round 3) |" "$S"
check "clients seen" grep -qxF "| clients seen | 2 (4 client rows) |" "$S"
check "best train loss" grep -qxF "| best train loss | 0.5000 (round 3) |" "$S"
check "best accuracy" grep -qxF "| best accuracy | 0.5000 (round 2) |" "$S"
check "final perplexity" grep -qxF "| final perplexity | 3.49 |" "$S"
check "accepted / refused" grep -qxF "| updates accepted / refused | 5 / 1 |" "$S"
check "bytes down" grep -qxF "| bytes down | 6144 (0.01 MiB) |" "$S"
check "attack success" grep -qxF "| attack success (highest) | 0.7500 (round 2) |" "$S"
check "wall time" grep -qxF "| wall time | 5.0 s (sum of the rounds' seconds) |" "$S"
check "no settings without a checkpoint" test "$(grep -c 'setting' "$S")" -eq 0
# attack.svg: 0.5, 0.75, 0.25 over rounds 1..3 -> range [0.225, 0.775]: y 390 - (v - 0.225) / 0.55 * 350
check "attack.svg: points by hand" same "$(polyline "$tmp/srv/report/attack.svg" 1)" "70.0,215.0 320.0,55.9 570.0,374.1"
# the band: round 1 spans the losses 1..3, round 2 has one accepted loss (1; the late 9 is left out), round 3
# no client rows (no point: the x axis spans rounds 1..2); range [1, 3] padded to [0.9, 3.1]
check "clients.svg: band by hand" same "$(grep -o '<polygon[^>]*points="[^"]*"' "$tmp/srv/report/clients.svg" | sed 's/.*points="//; s/"$//')" \
    "70.0,55.9 570.0,374.1 570.0,374.1 70.0,374.1"
check "bytes.svg: KiB for small runs" grep -q 'KiB per round' "$tmp/srv/report/bytes.svg"
check "bytes.svg: round 2's upload, 512 bytes" grep -qF '<title>up (updates), x = 2: 0.5</title>' "$tmp/srv/report/bytes.svg"
check "bytes.svg: round 2's download, 2048 bytes" grep -qF '<title>down (global model), x = 2: 2</title>' "$tmp/srv/report/bytes.svg"
check "bytes up" grep -qxF "| bytes up | 2560 (0.00 MiB) |" "$S"

# errors: each names the path or flag at fault
mkdir -p "$tmp/empty"
refuse "a directory without metrics" 1 "$tmp/empty" 'no metrics.jsonl' -- "$LOOM" report "$tmp/empty"
refuse "a missing directory" 1 "$tmp/nope" 'no such file' -- "$LOOM" report "$tmp/nope"
refuse "no run directory given" 2 'give the run directory' -- "$LOOM" report
refuse "an unknown format" 2 '--format' "'png'" -- "$LOOM" report "$tmp/run" --format html,png
mkdir -p "$tmp/bad"
printf '{"type":"round","round":1}\nnot json\n{"type":"round","round":2}\n' > "$tmp/bad/metrics.jsonl"
refuse "a broken row" 1 'metrics.jsonl:2' 'not a JSON object' -- "$LOOM" report "$tmp/bad"
printf '{"type":"client","round":1,"client":0}\n' > "$tmp/bad/metrics.jsonl"
refuse "no round rows" 1 'metrics.jsonl' 'no round rows' -- "$LOOM" report "$tmp/bad"
: > "$tmp/file"
refuse "--out is a file" 1 '--out' -- "$LOOM" report "$tmp/run" --out "$tmp/file"
finish
