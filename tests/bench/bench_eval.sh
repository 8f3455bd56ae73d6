#!/usr/bin/env bash
# bench_eval.sh: adapterctl eval's throughput with continuous batching
# (issue 7, acceptance 3). Usage: bench_eval.sh BINARY (make bench passes it).
#
# The model: bench_decode's generated 110M LLaMA-shaped F32 model in
# ${TMPDIR:-/tmp}/adapterctl-bench-decode (build/bench/bench_decode makes it
# when absent). Generated once into ${TMPDIR:-/tmp}/adapterctl-bench-eval:
# 16 PEFT adapters on q_proj and v_proj of every layer, 8 RoAd road_1 (group
# 64) and 8 LoRA r8 (F32), values from python's seeded random, and 256
# requests (8 random prompt ids, max_tokens 16, adapter i % 16).
#
# Runs eval at --batch 32 over the 256 requests and at --batch 1 over the
# first 32 of them (at batch 1 the whole set would take minutes; throughput
# per token does not depend on how many requests follow), best of 2 each,
# and prints completion tokens/s for both and their ratio (goal >= 6).
# Nothing is asserted.
set -eu
BIN=${1:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
MODEL=${TMPDIR:-/tmp}/adapterctl-bench-decode
CACHE=${TMPDIR:-/tmp}/adapterctl-bench-eval
WORK=$(mktemp -d "${TMPDIR:-/tmp}/adapterctl-bench-eval-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "generating the 110M model with build/bench/bench_decode (once)..."
    make --no-print-directory build/bench/bench_decode >/dev/null
    build/bench/bench_decode >/dev/null
fi
if [ ! -f "$CACHE/done" ]; then
    echo "generating 16 adapters and 256 requests in $CACHE (once)..."
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    python3 - "$CACHE" <<'PYEOF'
import json, os, random, struct, sys

root = sys.argv[1]
D, L, V = 768, 12, 32000
r = random.Random(11)

def write_st(path, tensors):
    hdr, parts, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (shape, vals) in sorted(tensors.items()):
        raw = struct.pack("<%df" % len(vals), *vals)
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        parts.append(raw)
        off += len(raw)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(parts))

def key(l, m, s):
    return "base_model.model.model.layers.%d.self_attn.%s.%s" % (l, m, s)

for a in range(16):
    d = os.path.join(root, "ad%02d" % a)
    os.makedirs(d)
    t = {}
    if a % 2 == 0:
        cfg = {"peft_type": "ROAD", "variant": "road_1", "group_size": 64}
        for l in range(L):
            for m in ("q_proj", "v_proj"):
                t[key(l, m, "road_theta")] = ([D // 2], [r.gauss(0, 0.05) for _ in range(D // 2)])
                t[key(l, m, "road_alpha")] = ([D // 2], [1 + r.gauss(0, 0.02) for _ in range(D // 2)])
    else:
        cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16}
        for l in range(L):
            for m in ("q_proj", "v_proj"):
                t[key(l, m, "lora_A.weight")] = ([8, D], [r.gauss(0, 0.02) for _ in range(8 * D)])
                t[key(l, m, "lora_B.weight")] = ([D, 8], [r.gauss(0, 0.02) for _ in range(8 * D)])
    cfg.update(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
               base_model_name_or_path="adapterctl-bench-decode", inference_mode=True)
    json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"))
    write_st(os.path.join(d, "adapter_model.safetensors"), t)
with open(os.path.join(root, "requests.jsonl"), "w") as f:
    for i in range(256):
        f.write(json.dumps({"id": "r%03d" % i, "adapter": os.path.join(root, "ad%02d" % (i % 16)),
                            "prompt_ids": [1] + [r.randrange(3, V) for _ in range(7)],
                            "max_tokens": 16}) + "\n")
PYEOF
    touch "$CACHE/done"
fi

# run BATCH LIMIT: completion tokens/s of one eval run, from its --json summary
run() {
    "$BIN" eval --model "$MODEL" --requests "$CACHE/requests.jsonl" --batch "$1" \
        --limit "$2" --out "$WORK/out-$1.jsonl" --force --json -q >"$WORK/sum.json"
    rm -f "$WORK/out-$1.jsonl"
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("%.2f" % (sum(r["completion_tokens"] for r in d["summary"]) / d["seconds"]))' "$WORK/sum.json"
}
best() { printf '%s\n%s\n' "$1" "$2" | sort -g | tail -1; }

echo "eval: 16 adapters (8 RoAd road_1, 8 LoRA r8, q/v of 12 layers) on the 110M model,"
echo "      8-id prompts, 16 new tokens each, best of 2"
b32=$(best "$(run 32 256)" "$(run 32 256)")
echo "  batch 32, 256 requests: $b32 completion tokens/s"
b1=$(best "$(run 1 32)" "$(run 1 32)")
echo "  batch  1,  32 requests: $b1 completion tokens/s"
python3 -c 'import sys; print("  batch 32 / batch 1: %.2fx (goal >= 6)" % (float(sys.argv[1]) / float(sys.argv[2])))' "$b32" "$b1"
