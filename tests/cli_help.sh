#!/usr/bin/env bash
# Help texts are complete: every command of src/cli/main.c's table is in `loom --help`; for every
# command and subcommand, each flag its parser accepts (the parse table, dumped by the hidden
# --list-flags) has a line in its --help, numeric flags with their default (or "required"), and the
# default shown is the table's; a wrong flag's error names the flag and points to --help.
set -u
. "$(dirname "$0")/testlib.sh"

# the commands, from the source of the dispatch table
grep -o '^    {"[a-z-]*", cmd_[a-z_]*,' "$SRC/src/cli/main.c" | sed 's/^    {"\([a-z-]*\)".*/\1/' | sort > "$tmp/cmds.src"
"$LOOM" --help | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }' | sort > "$tmp/cmds.help"
check "main.c's commands found" test "$(wc -l < "$tmp/cmds.src")" -ge 15
check "loom --help lists exactly main.c's commands" cmp -s "$tmp/cmds.src" "$tmp/cmds.help"

# the subcommands each command's usage lines name ("loom CMD SUB ..." or "loom CMD <a|b|c>")
subs() {
    "$LOOM" "$1" --help 2>/dev/null | awk -v c="$1" '
        /^usage:/ { on = 1 } /^$/ { on = 0 } !on { next }
        { for (i = 1; i < NF; i++) if ($i == "loom" && $(i + 1) == c) {
            w = $(i + 2)
            if (w ~ /^<[a-z|-]+>$/) { gsub(/[<>]/, "", w); n = split(w, a, "|"); for (k = 1; k <= n; k++) print a[k] }
            else if (w ~ /^[a-z][a-z-]*$/) print w } }' | sort -u
}

checked=0
# check_flags WHAT ARGS...: the flags of `loom ARGS --list-flags` against `loom ARGS --help`
check_flags() {
    local what=$1
    shift
    "$LOOM" "$@" --list-flags > "$tmp/flags" 2> /dev/null || return 1
    grep -q '^--help' "$tmp/flags" || return 1
    "$LOOM" "$@" --help > "$tmp/help" 2>&1
    # one awk pass: the help lines by flag, then each listed flag against its line
    local bad n
    n=$(awk -F'\t' -v what="$what" '
        FNR == NR { if (match($0, /^  --[a-z0-9-]+/)) { f = substr($0, 3, RLENGTH - 2); if (!(f in line)) line[f] = $0 } next }
        { name = $1; type = $2; def = $3; n++
          if (!(name in line)) { print "  " what ": " name " has no help line" > "/dev/stderr"; bad = 1; next }
          l = line[name]
          if (def != "-" && type != "flag") { if (index(l, "(default " def ")") == 0) { print "  " what ": " name ": (default " def ") not in: " l > "/dev/stderr"; bad = 1 } }
          else if (type ~ /^(int|long|float|double)$/ && tolower(l) !~ /default|required/) { print "  " what ": " name ": no default in: " l > "/dev/stderr"; bad = 1 } }
        END { print (bad ? -n : n) }' "$tmp/help" "$tmp/flags")
    bad=0
    [ "$n" -gt 0 ] || bad=1
    [ "$n" -gt 0 ] && checked=$((checked + n))
    check "$what: every flag in --help with its default" test $bad -eq 0
    # a wrong flag: exit 2, the flag named, --help suggested
    "$LOOM" "$@" --no-such-flag > /dev/null 2> "$tmp/err"
    local st=$?
    check "$what: a wrong flag exits 2 (got $st)" test $st -eq 2
    check "$what: the error names the flag and --help" grep -q -- '--no-such-flag.*--help' "$tmp/err"
    return 0
}

n_cmds=0
while read -r c <&3; do
    n_cmds=$((n_cmds + 1))
    found=0
    check_flags "$c" "$c" && found=1
    for s in $(subs "$c"); do
        check "$c $s: --list-flags answers" check_flags "$c $s" "$c" "$s"
        found=1
    done
    check "$c: has a parse table or subcommands" test $found -eq 1
    # an unknown subcommand or word is refused naming it, pointing to --help
    if [ -n "$(subs "$c")" ] && [ "$c" != server ]; then
        refuse "$c: an unknown subcommand" 2 "'bogus'" '--help' -- "$LOOM" "$c" bogus
    fi
done 3< "$tmp/cmds.src"
check "flags checked ($checked)" test "$checked" -ge 300
refuse "an unknown command" 2 "'bogus'" '--help' -- "$LOOM" bogus

# --list-flags shows the value the parser starts from: sim's --rounds as cli_run_init sets it
want=$(sed -n 's/^    r->rounds = \([0-9]*\);/\1/p' "$SRC/src/cli/runspec.c")
check "sim lists --rounds with its default ($want)" grep -qxF -- "--rounds	int	$want" <("$LOOM" sim --list-flags)
check "--list-flags is not shown in the help" bash -c "! '$LOOM' sim --help | grep -q -- --list-flags"
finish
