# loom dp: the accountant from the command line, against ../shared/reference/dp (the classic MNIST
# case and Opacus's unit test, read from the reference file), the inverse, and the refusals.
. "$(dirname "$0")/testlib.sh"
ref="$SHARED/reference/dp/rdp_reference.json"
flat=$(tr -d '\n ' < "$ref")
want=$(grep -o '"opacus_default_alphas":{[^}]*}' <<< "$flat")
want_eps=$(sed 's/.*"epsilon":\([0-9.e+-]*\).*/\1/' <<< "$want")
want_alpha=$(sed 's/.*"alpha":\([0-9.e+-]*\).*/\1/' <<< "$want")
q=$(grep -o '"classic":{[^}]*' <<< "$flat" | grep -o '"q":[0-9.e+-]*' | cut -d: -f2)
check "reference values read ($want_eps at $want_alpha, q $q)" test -n "$want_eps" -a -n "$want_alpha" -a -n "$q"
out=$("$LOOM" dp epsilon --q "$q" --sigma 1.1 --steps 14063 --delta 1e-5 --json)
check "classic case: epsilon and order as the reference ($out)" test "$out" = "{\"epsilon\": $want_eps, \"order\": $want_alpha}"
ou=$(grep -o '"opacus_unit_test":{[^}]*}' <<< "$flat")
ou_eps=$(sed 's/.*"epsilon":\([0-9.e+-]*\).*/\1/' <<< "$ou")
out=$("$LOOM" dp epsilon --q 0.04 --sigma 1.5 --steps 2250 --delta 1e-5 --json)
check "Opacus's unit test ($out)" test "$out" = "{\"epsilon\": $ou_eps, \"order\": 3.9}"
out=$("$LOOM" dp sigma --q "$q" --steps 14063 --delta 1e-5 --epsilon "$want_eps" --json)
sig=$(sed 's/.*"sigma": \([0-9.e+-]*\).*/\1/' <<< "$out")
check "the inverse gives back sigma 1.1 ($sig)" awk -v s="$sig" 'BEGIN { exit !(s > 1.0999999 && s < 1.1000001) }'
check "plain output names epsilon and the order" bash -c "'$LOOM' dp epsilon --q 0.01 --sigma 1 --steps 100 | grep -q 'epsilon .* (RDP order'"
refuse "q above 1" 12 '--q' -- "$LOOM" dp epsilon --q 2 --sigma 1 --steps 10
refuse "no sigma" 12 '--sigma' -- "$LOOM" dp epsilon --q 0.1 --steps 10
refuse "no target" 12 '--epsilon' -- "$LOOM" dp sigma --q 0.1 --steps 10
refuse "unreachable target" 12 'noise multiplier' -- "$LOOM" dp sigma --q 1 --steps 1000000000 --epsilon 0.001
refuse "unknown subcommand" 12 'usage' -- "$LOOM" dp budget
check "dp --help" "$LOOM" dp --help > /dev/null
finish
