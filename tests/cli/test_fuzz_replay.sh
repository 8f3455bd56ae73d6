#!/usr/bin/env bash
# test_fuzz_replay.sh: every fuzz harness (tests/fuzz), built with
# tests/fuzz/replay.c instead of libFuzzer, runs over its seed corpus and
# every input that once crashed it (tests/fuzz/regress/NAME/): each must
# pass without a crash, a sanitizer report or a leak. The harnesses check
# their own invariants (a codec round trip gives its bytes back, a loaded
# tokenizer gives ids in range, ...). Run from the repository root;
# ADAPTERCTL names the binary, whose directory holds replay/.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
BUILD=$(dirname "$BIN")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -d ../shared/data ] || echo "SKIP: ../shared/data absent: seeds from real tokenizers left out"
ADAPTERCTL=$BIN python3 tests/fuzz/seeds.py "$TMP" >/dev/null || { echo "FAIL: seeds.py"; exit 1; }
fail=0 n=0
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    r=$BUILD/replay/$name
    [ -x "$r" ] || { echo "FAIL: $r not built"; fail=1; continue; }
    [ -d "$TMP/$name" ] || { echo "FAIL: no seeds for $name"; fail=1; continue; }
    if out=$("$r" "$TMP/$name" 2>&1); then
        echo "ok: $name: $(echo "$out" | tail -1)"
        n=$((n + 1))
    else
        echo "FAIL: $name"; echo "$out" | tail -30; fail=1
    fi
done
echo "$n harnesses replayed"
exit $fail
