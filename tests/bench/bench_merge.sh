#!/usr/bin/env bash
# bench_merge.sh: adapterctl merge against `cp -r` of the same base (issue 5,
# acceptance 4). Usage: bench_merge.sh BINARY (make bench passes it).
#
# Generates once, cached under ${TMPDIR:-/tmp}/adapterctl-bench-merge, a BF16
# Llama-shaped base (hidden 2048, intermediate 5632, 16 layers, 32 heads, 4
# key/value heads, vocab 32000: about 1.67 GB in two shards with an index,
# as transformers shards it) and two adapters on all seven projections of
# every layer: a rank-16 LoRA (F32) and a road_1 RoAd (group 64). Values
# come from os.urandom with their exponents held to what trained weights
# have (|x| in [2^-9, 2^-4)); never NaN or Inf.
#
# Then, best of 3 runs taken in turns with a warm page cache (dropping the
# cache needs root and would measure the disk, not us), each started after a
# `sync` so that the previous run's writeback does not land on it: `cp -r`
# of the base,
# `cp -r` followed by `sync` of the copied files (merge syncs what it writes,
# so this is the like-for-like baseline), merge with the LoRA, merge with the
# RoAd adapter. Prints seconds, MB/s, the ratio merge/cp and merge/(cp+sync),
# and the merge's peak resident memory beside the base's size. The goal
# (issue 5): merge <= 1.3 x cp, peak RSS < 1/4 of the base. Nothing is asserted.
set -eu
BIN=${1:?usage: bench_merge.sh BINARY}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
CACHE=${TMPDIR:-/tmp}/adapterctl-bench-merge
WORK=$(mktemp -d "${TMPDIR:-/tmp}/adapterctl-bench-merge-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=python3

if [ ! -f "$CACHE/done" ]; then
    echo "generating the base and adapters in $CACHE (once)..."
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    "$PY" - "$CACHE" <<'PYEOF'
import json, math, os, struct, sys

root = sys.argv[1]
H, I, L, HEADS, KV, V = 2048, 5632, 16, 32, 4, 32000
HD = H // HEADS
MAX_SHARD = 1 << 30  # transformers' max_shard_size="1GB" style split

def scaled_table(word_bytes):
    """A byte map for the top byte of a little-endian float: random sign,
    exponent's top bits picked so that |x| lands in [2^-9, 2^-4)."""
    if word_bytes == 2:  # bfloat16: top byte = sign | exponent >> 1
        tops = [118 >> 1, 120 >> 1, 122 >> 1]
    else:                # float32: the same exponents
        tops = [118 >> 1, 120 >> 1, 122 >> 1]
    return bytes((r & 0x80) | tops[r % 3] for r in range(256))

T16, T32 = scaled_table(2), scaled_table(4)

def rand_bf16(n):
    raw = bytearray(os.urandom(2 * n))
    raw[1::2] = raw[1::2].translate(T16)
    return raw

def rand_f32(n):
    raw = bytearray(os.urandom(4 * n))
    raw[3::4] = raw[3::4].translate(T32)
    return raw

def write_st(path, tensors):
    """tensors: list of (name, dtype, shape, nbytes, producer); written in name order."""
    tensors = sorted(tensors, key=lambda t: t[0])
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, nb, _ in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, _, _, make in tensors:
            f.write(make())

# ---- the base, in state-dict order, split into shards as transformers does
shapes = [("model.embed_tokens.weight", [V, H])]
for l in range(L):
    p = "model.layers.%d." % l
    shapes += [(p + "self_attn.q_proj.weight", [HEADS * HD, H]),
               (p + "self_attn.k_proj.weight", [KV * HD, H]),
               (p + "self_attn.v_proj.weight", [KV * HD, H]),
               (p + "self_attn.o_proj.weight", [H, HEADS * HD]),
               (p + "mlp.gate_proj.weight", [I, H]),
               (p + "mlp.up_proj.weight", [I, H]),
               (p + "mlp.down_proj.weight", [H, I]),
               (p + "input_layernorm.weight", [H]),
               (p + "post_attention_layernorm.weight", [H])]
shapes += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
shards, cur, size = [], [], 0
for name, shape in shapes:
    nb = 2 * math.prod(shape)
    if cur and size + nb > MAX_SHARD:
        shards.append(cur)
        cur, size = [], 0
    cur.append((name, shape, nb))
    size += nb
shards.append(cur)
base = os.path.join(root, "base")
os.makedirs(base)
weight_map, total = {}, 0
for i, part in enumerate(shards):
    fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
    ts = [(n, "BF16", s, nb, (lambda nb=nb: rand_bf16(nb // 2))) for n, s, nb in part]
    write_st(os.path.join(base, fname), ts)
    for n, s, nb in part:
        weight_map[n] = fname
        total += nb
with open(os.path.join(base, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
              sort_keys=True)
    f.write("\n")
config = {"_name_or_path": "bench/llama-2048", "architectures": ["LlamaForCausalLM"],
          "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
          "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HD,
          "vocab_size": V, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05,
          "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
          "model_type": "llama", "hidden_act": "silu", "attention_bias": False}
with open(os.path.join(base, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
with open(os.path.join(base, "tokenizer.json"), "w") as f:
    f.write('{"model": {"type": "BPE", "vocab": {}, "merges": []}, "version": "1.0"}\n')

# ---- the adapters: all seven projections of every layer
proj = {"self_attn.q_proj": (HEADS * HD, H), "self_attn.k_proj": (KV * HD, H),
        "self_attn.v_proj": (KV * HD, H), "self_attn.o_proj": (H, HEADS * HD),
        "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 16
lora = os.path.join(root, "lora-r16")
os.makedirs(lora)
ts = []
for l in range(L):
    for m, (out, inp) in proj.items():
        k = "base_model.model.model.layers.%d.%s" % (l, m)
        ts.append((k + ".lora_A.weight", "F32", [R, inp], 4 * R * inp,
                   (lambda n=R * inp: rand_f32(n))))
        ts.append((k + ".lora_B.weight", "F32", [out, R], 4 * R * out,
                   (lambda n=R * out: rand_f32(n))))
write_st(os.path.join(lora, "adapter_model.safetensors"), ts)
with open(os.path.join(lora, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": R, "lora_alpha": 32, "target_modules": targets,
               "base_model_name_or_path": "bench/llama-2048", "bias": "none",
               "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}, f, indent=2, sort_keys=True)

road = os.path.join(root, "road1-g64")
os.makedirs(road)
ts = []
def road_values(n, kind):
    r = os.urandom(2 * n)
    vals = []
    for i in range(n):
        u = (r[2 * i] | r[2 * i + 1] << 8) / 65536.0 - 0.5
        vals.append(0.4 * u if kind == "theta" else 1.0 + 0.2 * u)
    return bytearray(struct.pack("<%df" % n, *vals))
for l in range(L):
    for m, (out, inp) in proj.items():
        k = "base_model.model.model.layers.%d.%s" % (l, m)
        n = out // 2
        ts.append((k + ".road_theta", "F32", [n], 4 * n, (lambda n=n: road_values(n, "theta"))))
        ts.append((k + ".road_alpha", "F32", [n], 4 * n, (lambda n=n: road_values(n, "alpha"))))
write_st(os.path.join(road, "adapter_model.safetensors"), ts)
with open(os.path.join(road, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "ROAD", "variant": "road_1", "group_size": 64,
               "target_modules": targets, "base_model_name_or_path": "bench/llama-2048",
               "task_type": "CAUSAL_LM"}, f, indent=2, sort_keys=True)
PYEOF
    touch "$CACHE/done"
fi

BASE=$CACHE/base
BYTES=$(du -sb "$BASE" | cut -f1)

# measure LABEL CMD...: runs CMD under a fresh python3 that reports the wall
# time and the child's peak RSS (ru_maxrss of the one child it waited for).
measure() {
    local label=$1
    shift
    "$PY" - "$@" <<'PYEOF'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
if r.returncode:
    sys.exit("failed: %s (exit %d)" % (" ".join(sys.argv[1:]), r.returncode))
print("%.4f %d" % (dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
PYEOF
}

best() { # best NAME SECONDS RSS: keeps the smallest time (and that run's RSS)
    local n=$1 t=$2 r=$3 cur
    cur=$(eval echo "\${T_$n:-}")
    if [ -z "$cur" ] || "$PY" -c "import sys; sys.exit(0 if $t < $cur else 1)"; then
        eval "T_$n=$t R_$n=$r"
    fi
}

echo "base: $BASE ($BYTES bytes, $(ls "$BASE"/*.safetensors | wc -l) shards)"
# a first pass to make the page cache warm for everyone
cat "$BASE"/* "$CACHE"/lora-r16/* "$CACHE"/road1-g64/* >/dev/null
quiet() { rm -rf "$WORK/out"; sync; }
for run in 1 2 3; do
    quiet
    read -r t r < <(measure cp cp -r "$BASE" "$WORK/out")
    best cp "$t" "$r"
    quiet
    read -r t r < <(measure cpsync bash -c 'cp -r "$1" "$2" && sync "$2"/*' _ "$BASE" "$WORK/out")
    best cpsync "$t" "$r"
    quiet
    read -r t r < <(measure lora "$BIN" -q merge --base "$BASE" --out "$WORK/out" "$CACHE/lora-r16")
    best lora "$t" "$r"
    quiet
    read -r t r < <(measure road "$BIN" -q merge --base "$BASE" --out "$WORK/out" "$CACHE/road1-g64")
    best road "$t" "$r"
    rm -rf "$WORK/out"
done

"$PY" - "$BYTES" "$T_cp" "$T_cpsync" "$T_lora" "$R_lora" "$T_road" "$R_road" <<'PYEOF'
import sys
b = int(sys.argv[1])
cp, cps, tl, rl, tr, rr = map(float, sys.argv[2:])
mb = b / 1e6
print("%-28s %8s %10s %9s %11s %12s" % ("best of 3", "seconds", "MB/s", "x cp", "x cp+sync",
                                         "peak RSS"))
print("%-28s %8.2f %10.0f" % ("cp -r", cp, mb / cp))
print("%-28s %8.2f %10.0f" % ("cp -r + sync", cps, mb / cps))
for name, t, r in (("merge LoRA r16 (7 proj)", tl, rl), ("merge road_1 (7 proj)", tr, rr)):
    print("%-28s %8.2f %10.0f %9.2f %11.2f %8.0f MB (%.1f%% of the base)"
          % (name, t, mb / t, t / cp, t / cps, r / 1e6, 100 * r / b))
print("goal: <= 1.30 x cp, peak RSS < 25% of the base")
PYEOF
