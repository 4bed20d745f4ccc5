# Shared by the shell tests (cli.sh, build.sh, train.sh): a temporary folder,
# checks that count passes and failures, and the closing line. Sourcing it sets
# tmp, pass and fail, and removes tmp on exit.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Each test starts with an empty kernel cache of its own (kiln build --target=cuda).
export KILN_CACHE_DIR=$tmp/kiln-cache
pass=0
fail=0

# expect NAME STATUS COMMAND...: runs COMMAND, keeping its output in $tmp/stdout
# and $tmp/stderr, and checks its exit status.
expect() {
  local name=$1 want=$2
  shift 2
  "$@" >"$tmp/stdout" 2>"$tmp/stderr"
  local got=$?
  if [ "$got" -eq "$want" ]; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $name: exit $got, expected $want"; head -20 "$tmp/stderr"; fi
}
# has NAME FILE TEXT: FILE contains TEXT.
has() {
  if grep -qF -- "$3" "$2"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $1: '$3' not in $2:"; head -20 "$2"; fi
}
# same NAME A B: files A and B are byte for byte equal.
same() {
  if cmp -s "$2" "$3"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $1: $2 and $3 differ"; diff "$2" "$3" | head; fi
}
# check NAME COMMAND...: passes when the command succeeds.
check() {
  local name=$1
  shift
  if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $name"; fi
}
# finish NAME: the closing line, and the status.
finish() {
  echo "$1: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}
