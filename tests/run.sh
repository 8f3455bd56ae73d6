#!/usr/bin/env bash
# Runs every cmocka binary given as arguments, then every tests/cli/*.sh with
# ADAPTERCTL pointing at the built binary, and prints one closing line
# "N passed, N failed, N skipped" counting test cases.
# Run from the repository root. ACTL_BUILD names the build directory.
set -u
BUILD=${ACTL_BUILD:-build}
export ADAPTERCTL="$PWD/$BUILD/adapterctl" GEN_FIXTURES="$PWD/$BUILD/gen-fixtures"
export CMOCKA_MESSAGE_OUTPUT=STDOUT
passed=0 failed=0 skipped=0 failures=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for t in "$@"; do
  echo "== $t"
  "$t" >"$log" 2>&1
  rc=$?
  cat "$log"
  p=$(grep -c '^\[       OK \]' "$log")
  f=$(grep -E '^\[  FAILED  \] [A-Za-z_]' "$log" | sort -u | wc -l)
  s=$(grep -E '^\[  SKIPPED \] [A-Za-z_]' "$log" | sort -u | wc -l)
  passed=$((passed + p)); skipped=$((skipped + s)); failed=$((failed + f))
  if [ $rc -ne 0 ] && [ $f -eq 0 ]; then failed=$((failed + 1)); failures+=("$t (exit $rc)"); fi
  [ $f -gt 0 ] && failures+=("$t")
done

for t in tests/cli/*.sh; do
  [ -e "$t" ] || continue
  echo "== $t"
  bash "$t" >"$log" 2>&1
  rc=$?
  cat "$log"
  s=$(grep -c '^SKIP' "$log")
  if [ $rc -eq 0 ]; then passed=$((passed + 1)); skipped=$((skipped + s));
  else failed=$((failed + 1)); failures+=("$t"); fi
done

echo
for f in "${failures[@]+"${failures[@]}"}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
