#!/usr/bin/env bash
# The committed fixtures are exactly what the deterministic generator writes,
# and together stay under 2 MB.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
gen=${GEN_FIXTURES:-$root/build/gen-fixtures}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

"$gen" "$tmp/out" >"$tmp/log" 2>&1 || { cat "$tmp/log"; echo "FAIL: generator exited non-zero"; exit 1; }
for d in "$tmp"/out/*; do
  name=$(basename "$d")
  if diff -r "$d" "$root/fixtures/$name" >"$tmp/diff" 2>&1; then
    echo "ok: fixtures/$name regenerates byte for byte"
  else
    echo "FAIL: fixtures/$name differs from a fresh generation:"; head -20 "$tmp/diff"; fail=1
  fi
done
# Nothing under fixtures/ that the generator no longer writes (besides sources).
for f in "$root"/fixtures/*; do
  name=$(basename "$f")
  case "$name" in *.c|*.h|README*) continue ;; esac
  [ -e "$tmp/out/$name" ] || { echo "FAIL: fixtures/$name is not written by the generator"; fail=1; }
done
size=$(du -sb "$root/fixtures" | cut -f1)
if [ "$size" -lt 2000000 ]; then echo "ok: fixtures/ is $size bytes (< 2 MB)"; else echo "FAIL: fixtures/ is $size bytes"; fail=1; fi
exit $fail
