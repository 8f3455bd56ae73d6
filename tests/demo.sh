#!/usr/bin/env bash
# demo.sh: what `make demo` shows: adapterctl inspecting every fixture
# adapter (one line each), one adapter in full, and the reference checkpoint
# in ../shared/data when it is there. Reads only; uses no store.
#
#   bash tests/demo.sh [path/to/adapterctl]      (from the repository root)
set -euo pipefail
BIN=${1:-build/adapterctl}
SHARED=../shared/data

echo "== $("$BIN" --version): inspecting the fixture adapters"
echo

# One line per adapter from `inspect --json` (schema in README.md).
SUMMARY='
import json, sys
d = json.load(sys.stdin)
c = d["config"]
kind = d["kind"]
if kind in ("lora", "mos"):
    facts = "r=%g alpha=%g" % (c.get("r"), c.get("lora_alpha"))
    if c.get("use_rslora"): facts += " rslora"
    if c.get("use_dora"): facts += " dora"
    if kind == "mos": facts += " shards=%s" % c.get("mos_shards")
elif kind == "road":
    facts = "%s group=%s" % (c.get("variant", "road_1"), c.get("group_size", 64))
else:
    facts = "size=%s %s" % (c.get("bottleneck_size"), c.get("non_linearity", "tanh"))
    if c.get("use_parallel_adapter"): facts += " parallel"
scales = sorted({round(m["scale"], 4) for m in d["modules"]})
print("%-30s %-10s %-26s %3d modules %4d tensors %8.1f KiB  scale %s" % (
    sys.argv[1], kind, facts, len(d["modules"]), d["tensors"], d["bytes"] / 1024,
    ", ".join("%g" % s for s in scales)))
'

n=0
for dir in fixtures/adapters/*/*/; do
    dir=${dir%/}
    [ -f "$dir/adapter_config.json" ] || continue
    "$BIN" --json inspect "$dir" | python3 -c "$SUMMARY" "${dir#fixtures/adapters/}"
    n=$((n + 1))
done
if [ "$n" -eq 0 ]; then
    echo "(no adapters under fixtures/adapters: run 'make fixtures')"
fi

example=fixtures/adapters/hf-tiny/lora-patterns
if [ -d "$example" ]; then
    echo
    echo "== adapterctl inspect $example"
    "$BIN" inspect "$example"
fi

model=$SHARED/hf-tiny-random-llama-2/model.safetensors
echo
if [ -f "$model" ]; then
    echo "== adapterctl inspect $model"
    "$BIN" inspect "$model"
else
    echo "SKIP: $model is absent (../shared/data not beside the repo)"
fi
