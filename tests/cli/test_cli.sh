#!/usr/bin/env bash
# test_cli.sh: end-to-end tests of the adapterctl binary: global options,
# help, exit codes, and `inspect` on every fixture kind, the broken files and
# the reference checkpoint in ../shared/data.
#
# Numbers are checked against what this script computes itself from the
# fixture files (python3 reads adapter_config.json and the safetensors
# headers), never against another run of the binary.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
FIX=fixtures
SHARED=../shared/data
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0

# ---- helpers ---------------------------------------------------------------

pass() { npass=$((npass + 1)); }
fail() {
    nfail=$((nfail + 1))
    printf 'FAIL: %s\n' "$1"
    shift
    for line in "$@"; do printf '  %s\n' "$line"; done
}

# run ARGS...: runs the binary; sets rc, out (stdout) and err (stderr). The
# stdout also stays in $TMP/out for python3 to read. A sanitizer report (SAN=1
# build) fails the run whatever its exit status, so error paths are covered too.
run() {
    "$BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    out=$(cat "$TMP/out")
    err=$(cat "$TMP/err")
    case "$err" in
    *Sanitizer*) fail "adapterctl $* runs clean under the sanitizers" "${err:0:2000}" ;;
    esac
}

# check NAME EXPECTED GOT
check() {
    if [ "$2" == "$3" ]; then pass; else fail "$1" "expected: $2" "got:      $3"; fi
}

# check_rc NAME WANT: the last run's exit status.
check_rc() {
    if [ "$rc" -eq "$2" ]; then pass; else
        fail "$1" "expected exit $2, got $rc" "stderr: ${err:0:400}"; fi
}

# check_has NAME NEEDLE TEXT: TEXT contains NEEDLE.
check_has() {
    case "$3" in
    *"$2"*) pass ;;
    *) fail "$1" "expected to contain: $2" "got: ${3:0:400}" ;;
    esac
}

# check_py NAME SCRIPT ARGS...: runs a python3 check; it prints nothing on
# success and one line per problem otherwise. $TMP/out is the last stdout.
check_py() {
    local name=$1 script=$2 msg
    shift 2
    msg=$(python3 -c "$script" "$TMP/out" "$@" 2>&1)
    if [ -z "$msg" ]; then pass; else fail "$name" "$msg"; fi
}

# Shared python: an independent reader of safetensors headers.
PYLIB='
import json, math, re, struct, sys
SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    meta = h.pop("__metadata__", {})
    return h, meta
def numel(shape):
    p = 1
    for d in shape:
        p *= d
    return p
def doc():
    return json.load(open(sys.argv[1]))
'

# ---- global options and help ----------------------------------------------

run --help
check_rc "--help exits 0" 0
check_has "--help prints the usage" "usage: adapterctl" "$out"
check_has "--help lists inspect" "inspect" "$out"
check "--help writes nothing on stderr" "" "$err"

run -h
check_rc "-h exits 0" 0
check_has "-h prints the usage" "usage: adapterctl" "$out"

run
check_rc "no command exits 2" 2
check_has "no command prints the usage on stderr" "usage: adapterctl" "$err"
check "no command prints nothing on stdout" "" "$out"

version=$(sed -n 's/^#define ACTL_VERSION_STRING "\(.*\)"$/\1/p' lib/adapterctl.h)
run --version
check_rc "--version exits 0" 0
check "--version matches ACTL_VERSION_STRING" "adapterctl $version" "$out"

run inspect --help
check_rc "inspect --help exits 0" 0
check_has "inspect --help prints its usage" "usage: adapterctl inspect PATH" "$out"
inspect_help=$out
run inspect -h
check "inspect -h is inspect --help" "$inspect_help" "$out"
run help inspect
check_rc "help inspect exits 0" 0
check "help inspect is inspect --help" "$inspect_help" "$out"
run help
check_rc "help exits 0" 0
check_has "help lists inspect" "inspect" "$out"
run help frobnicate
check_rc "help of an unknown command exits 2" 2

run frobnicate
check_rc "unknown command exits 2" 2
check_has "unknown command is named" "adapterctl: 'frobnicate' is not a command" "$err"
check "unknown command prints nothing on stdout" "" "$out"

run --frobnicate inspect x
check_rc "unknown global option exits 2" 2
check_has "unknown global option is named" "unknown option '--frobnicate'" "$err"

run inspect --frobnicate "$FIX/broken/valid.safetensors"
check_rc "unknown inspect option exits 2" 2
check_has "unknown inspect option is named" "unknown option '--frobnicate'" "$err"

run inspect -z "$FIX/broken/valid.safetensors"
check_rc "unknown short option exits 2" 2

run inspect --json=yes "$FIX/broken/valid.safetensors"
check_rc "a value given to a flag exits 2" 2

run inspect
check_rc "inspect without PATH exits 2" 2
check_has "inspect without PATH says so" "adapterctl: missing PATH" "$err"

run inspect a b
check_rc "inspect with two paths exits 2" 2

run --store
check_rc "--store without a value exits 2" 2
check_has "--store without a value says so" "option '--store' needs a value" "$err"

# --store is accepted (for the store commands to come) and creates nothing.
run --store "$TMP/store" inspect "$FIX/broken/valid.safetensors"
check_rc "--store DIR is accepted" 0
run --store="$TMP/store" -q inspect "$FIX/broken/valid.safetensors"
check_rc "--store=DIR and -q are accepted" 0
if [ -e "$TMP/store" ]; then fail "inspect creates no store" "found $TMP/store"; else pass; fi

# --json before and after the command name, and in --json=... form elsewhere.
run --json inspect "$FIX/broken/valid.safetensors"
check_rc "global --json exits 0" 0
json_before=$out
run inspect "$FIX/broken/valid.safetensors" --json
check_rc "--json after the path exits 0" 0
check "--json before and after the command agree" "$json_before" "$out"
run inspect -- "$FIX/broken/valid.safetensors"
check_rc "-- ends the options" 0

# ---- inspect: safetensors files ---------------------------------------------

# Every file in fixtures/broken breaks one rule, except the valid control.
nbroken=0
for f in "$FIX"/broken/*.safetensors; do
    [ -e "$f" ] || continue
    base=$(basename "$f")
    run inspect "$f"
    if [ "$base" = valid.safetensors ]; then
        check_rc "inspect $base exits 0" 0
        continue
    fi
    nbroken=$((nbroken + 1))
    check_rc "inspect broken $base exits 1" 1
    check_has "inspect broken $base names the file" "$base" "$err"
    check_has "inspect broken $base reports as adapterctl" "adapterctl: " "$err"
    check "inspect broken $base prints nothing on stdout" "" "$out"
    run --json inspect "$f"
    check_rc "inspect --json broken $base exits 1" 1
done
if [ "$nbroken" -gt 0 ]; then pass; else fail "fixtures/broken has broken files" "found none"; fi

# A safetensors file's listing against its header, read here.
ST_CHECK=$PYLIB'
d = doc()
h, meta = header(sys.argv[2])
want = sorted(h, key=lambda k: h[k]["data_offsets"][0])
if d.get("type") != "safetensors": print("type", d.get("type"))
if [t["name"] for t in d["tensors"]] != want: print("names", [t["name"] for t in d["tensors"]], want)
for t in d["tensors"]:
    e = h.get(t["name"], {})
    if t["dtype"] != e.get("dtype") or t["shape"] != e.get("shape"): print("tensor", t, e)
    if t["bytes"] != numel(e.get("shape", [])) * SIZE.get(e.get("dtype"), 0): print("bytes", t)
if d["params"] != sum(numel(e["shape"]) for e in h.values()): print("params", d["params"])
if d["bytes"] != sum(e["data_offsets"][1] - e["data_offsets"][0] for e in h.values()): print("bytes", d["bytes"])
if d["metadata"] != meta: print("metadata", d["metadata"], meta)
if d["path"] != sys.argv[3]: print("path", d["path"])
'

run inspect --json "$FIX/broken/valid.safetensors"
check_rc "inspect --json valid.safetensors exits 0" 0
check_py "inspect --json valid.safetensors matches its header" "$ST_CHECK" \
    "$FIX/broken/valid.safetensors" "$FIX/broken/valid.safetensors"
check_py "inspect --json valid.safetensors is not an adapter" \
    'import json,sys; d=json.load(open(sys.argv[1])); d["looks_like_adapter"] is False or print(d["looks_like_adapter"])'

run inspect /nonexistent/adapterctl-test.safetensors
check_rc "inspect of a missing file exits 1" 1
check_has "inspect of a missing file names it" "/nonexistent/adapterctl-test.safetensors" "$err"
run inspect "$TMP/no-such-dir"
check_rc "inspect of a missing path exits 1" 1
check_has "inspect of a missing path names it" "$TMP/no-such-dir" "$err"

# ---- inspect: PEFT directories ---------------------------------------------

# Checks an inspect --json document of a PEFT directory against the
# directory's own files: kind, tensor count, params and bytes from the
# header, module names from the tensor keys, and for LoRA every module's
# rank, alpha and scale by PEFT's rules, computed here.
PEFT_CHECK=$PYLIB'
d = doc()
dir = sys.argv[2]
cfg = json.load(open(dir + "/adapter_config.json"))
h, meta = header(dir + "/adapter_model.safetensors")
kind = cfg["peft_type"].lower()
if d.get("type") != "peft": print("type", d.get("type"))
if d.get("kind") != kind: print("kind", d.get("kind"), "want", kind)
if d.get("base_model") != cfg.get("base_model_name_or_path"): print("base_model", d.get("base_model"))
if d.get("config", {}).get("peft_type") != cfg["peft_type"]: print("config.peft_type", d.get("config"))
if d["tensors"] != len(h): print("tensors", d["tensors"], "want", len(h))
if d["params"] != sum(numel(e["shape"]) for e in h.values()): print("params", d["params"])
if d["bytes"] != sum(e["data_offsets"][1] - e["data_offsets"][0] for e in h.values()): print("bytes", d["bytes"])
mods = {m["name"]: m for m in d["modules"]}
if [m["name"] for m in d["modules"]] != sorted(mods): print("modules not sorted by name")
if sum(m["bytes"] for m in d["modules"]) > d["bytes"]: print("module bytes exceed the total")
keys = ["name", "rank", "alpha", "scale", "in_features", "out_features", "dora", "bias",
        "embedding", "learned_scale", "placement", "dtype", "params", "bytes"]
for m in d["modules"]:
    if list(m) != keys: print("module keys", list(m))

# PEFT: the first key of a pattern that matches the module name wins.
def pattern(pat, name):
    for key, v in (pat or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return v
    return None

prefix = "base_model.model."
if kind == "lora":
    want = {}
    for k, e in h.items():
        m = re.fullmatch(re.escape(prefix) + r"(.*)\.(lora_A\.weight|lora_embedding_A)", k)
        if m: want[m.group(1)] = (m.group(2) != "lora_A.weight", e["shape"])
    if sorted(mods) != sorted(want): print("modules", sorted(mods), "want", sorted(want))
    for name, (emb, ashape) in want.items():
        m = mods.get(name)
        if not m: continue
        r = ashape[0]
        rp = pattern(cfg.get("rank_pattern"), name)
        if r != (rp if rp is not None else cfg["r"]): print(name, "A has", r, "rows, the config says", rp, cfg["r"])
        alpha = pattern(cfg.get("alpha_pattern"), name)
        alpha = cfg["lora_alpha"] if alpha is None else alpha
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        if m["rank"] != r: print(name, "rank", m["rank"], "want", r)
        if m["alpha"] != alpha: print(name, "alpha", m["alpha"], "want", alpha)
        if m["scale"] != scale: print(name, "scale %r want %r" % (m["scale"], scale))
        bkey = prefix + name + (".lora_embedding_B" if emb else ".lora_B.weight")
        if m["in_features"] != ashape[1] or m["out_features"] != h[bkey]["shape"][0]:
            print(name, "in/out", m["in_features"], m["out_features"])
        if m["embedding"] != emb: print(name, "embedding", m["embedding"])
        if m["dora"] != (prefix + name + ".lora_magnitude_vector" in h): print(name, "dora", m["dora"])
        if m["bias"] != (prefix + name + ".lora_B.bias" in h): print(name, "bias", m["bias"])
        if m["placement"] is not None: print(name, "placement", m["placement"])
elif kind == "road":
    want = sorted(re.fullmatch(re.escape(prefix) + r"(.*)\.road_theta", k).group(1)
                  for k in h if k.endswith(".road_theta"))
    if sorted(mods) != want: print("modules", sorted(mods), "want", want)
    per = {"road_1": 0.5, "road_2": 1, "road_4": 2}[cfg.get("variant", "road_1")]
    for name, m in mods.items():
        n = h[prefix + name + ".road_theta"]["shape"][0]
        if m["out_features"] != n / per: print(name, "out", m["out_features"], "theta length", n)
        if m["in_features"] is not None: print(name, "in", m["in_features"], "want null")
        if m["scale"] != 1: print(name, "scale", m["scale"])
elif kind == "bottleneck":
    want = sorted(re.fullmatch(re.escape(prefix) + r"(.*)\.adapter_down\.weight", k).group(1)
                  for k in h if k.endswith(".adapter_down.weight"))
    if sorted(mods) != want: print("modules", sorted(mods), "want", want)
    for name, m in mods.items():
        down = h[prefix + name + ".adapter_down.weight"]["shape"]
        up = h[prefix + name + ".adapter_up.weight"]["shape"]
        if m["rank"] != down[0]: print(name, "size", m["rank"], "want", down[0])
        # Widths the tensors imply (DESIGN.md 3.3): D [b, n], U [m, b]; null for the other.
        want_io = {"input": (down[1], None), "output": (None, down[1]),
                   "parallel": (down[1], up[0])}.get(m["placement"])
        if want_io and (m["in_features"], m["out_features"]) != want_io:
            print(name, "in/out", m["in_features"], m["out_features"], "want", want_io)
        if m["placement"] not in ("input", "output", "parallel"): print(name, "placement", m["placement"])
        if cfg.get("use_parallel_adapter") and m["placement"] != "parallel": print(name, "not parallel")
        learned = prefix + name + ".adapter_scaling" in h
        if m["learned_scale"] != learned: print(name, "learned_scale", m["learned_scale"])
        scaling = cfg.get("scaling", 1.0)
        if not learned and isinstance(scaling, (int, float)) and m["scale"] != scaling:
            print(name, "scale", m["scale"], "want", scaling)
elif kind == "mos":
    want = sorted(re.fullmatch(re.escape(prefix) + r"(.*)\.mos_index_A", k).group(1)
                  for k in h if k.endswith(".mos_index_A"))
    if sorted(mods) != want: print("modules", sorted(mods), "want", want)
    l = cfg["mos_shards"]
    for name, m in mods.items():
        n = h[prefix + name + ".mos_index_A"]["shape"][0]
        if m["rank"] * l != n: print(name, "rank", m["rank"], "index length", n)
        if m["scale"] != cfg["lora_alpha"] / cfg["r"]: print(name, "scale", m["scale"])
'

adapters=()
for d in "$FIX"/adapters/*/*/; do
    [ -f "$d/adapter_config.json" ] && adapters+=("${d%/}")
done
if [ ${#adapters[@]} -gt 0 ]; then pass; else fail "fixtures/adapters holds adapters" "found none"; fi

kinds_seen=""
for d in "${adapters[@]+"${adapters[@]}"}"; do
    kind=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["peft_type"].lower())' \
        "$d/adapter_config.json")
    kinds_seen="$kinds_seen $kind"
    run inspect "$d"
    check_rc "inspect $d exits 0" 0
    check_has "inspect $d shows the kind" "$kind" "$out"
    check_has "inspect $d shows the totals" " modules, " "$out"
    run inspect --json "$d"
    check_rc "inspect --json $d exits 0" 0
    check_py "inspect --json $d matches the directory's files" "$PEFT_CHECK" "$d"
done
for k in lora road bottleneck mos; do
    check_has "a $k fixture is inspected" " $k" "$kinds_seen"
done

# lora-patterns: rank_pattern and alpha_pattern, with literal expectations
# from its config (r 4, lora_alpha 8, ...), beside the computed ones above.
LP=$FIX/adapters/hf-tiny/lora-patterns
run inspect --json "$LP"
check_rc "inspect --json lora-patterns exits 0" 0
check_py "inspect --json lora-patterns: per-module scales by PEFT rules" "$PEFT_CHECK" "$LP"
# Its config: r 4, lora_alpha 8, use_rslora; rank_pattern q_proj 2, layer 1 q_proj 6,
# gate/up 3; alpha_pattern down_proj 2.5, "self_attn\.(k|v)_proj" 16 listed before
# v_proj 32; the keys "proj" never match (they must follow a dot).
check_py "inspect --json lora-patterns: literal ranks, alphas and scales" '
import json, math, sys
d = json.load(open(sys.argv[1]))
mods = {m["name"]: m for m in d["modules"]}
want = {
    "model.layers.0.self_attn.q_proj": (2, 8.0, 5.65685424949238),    # 8/sqrt(2)
    "model.layers.1.self_attn.q_proj": (6, 8.0, 3.2659863237109046),  # 8/sqrt(6)
    "model.layers.0.self_attn.k_proj": (4, 16.0, 8.0),
    "model.layers.1.self_attn.v_proj": (4, 16.0, 8.0),                # first match wins, not 32
    "model.layers.0.self_attn.o_proj": (4, 8.0, 4.0),                 # "proj" does not match
    "model.layers.0.mlp.gate_proj": (3, 8.0, 4.618802153517007),      # 8/sqrt(3)
    "model.layers.1.mlp.up_proj": (3, 8.0, 4.618802153517007),
    "model.layers.1.mlp.down_proj": (4, 2.5, 1.25),
}
if len(mods) != 14: print("modules", len(mods), "want 14")
if d["tensors"] != 28: print("tensors", d["tensors"], "want 28")
if mods["model.layers.0.self_attn.q_proj"]["scale"] != 8 / math.sqrt(2): print("scale is not 8/sqrt(2) exactly")
for name, (r, alpha, scale) in want.items():
    m = mods.get(name)
    if m is None: print("missing", name); continue
    if (m["rank"], m["alpha"], m["scale"]) != (r, alpha, scale):
        print(name, (m["rank"], m["alpha"], m["scale"]), "want", (r, alpha, scale))
'

# The safetensors file of an adapter, without its directory: listed only.
run inspect --json "$LP/adapter_model.safetensors"
check_rc "inspect --json of an adapter's safetensors exits 0" 0
check_py "inspect --json of an adapter's safetensors lists its header" "$ST_CHECK" \
    "$LP/adapter_model.safetensors" "$LP/adapter_model.safetensors"
check_py "inspect --json of an adapter's safetensors says it looks like one" \
    'import json,sys; d=json.load(open(sys.argv[1])); d["looks_like_adapter"] is True or print(d["looks_like_adapter"])'
run inspect "$LP/adapter_model.safetensors"
check_rc "inspect of an adapter's safetensors exits 0" 0
check_has "inspect of an adapter's safetensors lists lora_A" "lora_A.weight" "$out"
check_has "inspect of an adapter's safetensors notes the missing config" "adapter_config.json" "$err"
run -q inspect "$LP/adapter_model.safetensors"
check "-q silences the note" "" "$err"

# Pickles are refused, whether or not a config is beside them.
mkdir -p "$TMP/bin-only" "$TMP/bin-config"
printf '\x80\x02}q\x00.' >"$TMP/bin-only/adapter_model.bin"
cp "$TMP/bin-only/adapter_model.bin" "$TMP/bin-config/"
printf '{"peft_type": "BOTTLENECK", "bottleneck_size": 4, "target_modules": ["down_proj"]}\n' \
    >"$TMP/bin-config/adapter_config.json"
for d in bin-only bin-config; do
    run inspect "$TMP/$d"
    check_rc "inspect of an adapter_model.bin directory ($d) exits 1" 1
    check_has "inspect of an adapter_model.bin directory ($d) mentions pickle" "pickle" \
        "$(tr 'A-Z' 'a-z' <<<"$err")"
done

run inspect "$TMP"
check_rc "inspect of a directory without an adapter exits 1" 1

# ---- inspect: checkpoints -------------------------------------------------

CKPT_CHECK=$PYLIB'
import os
d = doc()
path = sys.argv[2]
files = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
h = {}
for f in files:
    for k, e in header(os.path.join(path, f))[0].items():
        h[k] = dict(e, shard=f)
if d.get("type") != "checkpoint": print("type", d.get("type"))
if [t["name"] for t in d["tensors"]] != sorted(h): print("names", [t["name"] for t in d["tensors"]])
for t in d["tensors"]:
    e = h.get(t["name"], {})
    if (t["dtype"], t["shape"], t["shard"]) != (e.get("dtype"), e.get("shape"), e.get("shard")): print("tensor", t, e)
if d["params"] != sum(numel(e["shape"]) for e in h.values()): print("params", d["params"])
if d["shards"] != files: print("shards", d["shards"], "want", files)
'

for b in base-tiny base-tiny-sharded; do
    if [ ! -d "$FIX/$b" ]; then
        fail "fixtures/$b exists" "it is absent"
        continue
    fi
    run inspect "$FIX/$b"
    check_rc "inspect $b exits 0" 0
    check_has "inspect $b says checkpoint" "checkpoint" "$out"
    run inspect --json "$FIX/$b"
    check_rc "inspect --json $b exits 0" 0
    check_py "inspect --json $b matches its headers" "$CKPT_CHECK" "$FIX/$b"
done
run inspect --json "$FIX/base-tiny-sharded"
check_py "inspect --json base-tiny-sharded has two shards" \
    'import json,sys; d=json.load(open(sys.argv[1])); len(d["shards"]) == 2 or print(d["shards"])'

HF=$SHARED/hf-tiny-random-llama-2
if [ -f "$HF/model.safetensors" ]; then
    run inspect --json "$HF/model.safetensors"
    check_rc "inspect --json hf-tiny model.safetensors exits 0" 0
    check_py "inspect --json hf-tiny model.safetensors matches its header" "$ST_CHECK" \
        "$HF/model.safetensors" "$HF/model.safetensors"
    # Literal facts of stas/tiny-random-llama-2: 21 BF16 tensors, vocab 3000, hidden 16.
    check_py "hf-tiny: 21 BF16 tensors, embedding [3000, 16]" '
import json, sys
d = json.load(open(sys.argv[1]))
t = {x["name"]: x for x in d["tensors"]}
if len(t) != 21: print("tensors", len(t))
if {x["dtype"] for x in t.values()} != {"BF16"}: print("dtypes", {x["dtype"] for x in t.values()})
if t["model.embed_tokens.weight"]["shape"] != [3000, 16]: print("embed", t["model.embed_tokens.weight"])
if d["bytes"] != 2 * d["params"]: print("bytes", d["bytes"], "params", d["params"])'
    run inspect "$HF"
    check_rc "inspect of the hf-tiny directory exits 0" 0
    check_has "inspect of the hf-tiny directory says checkpoint" "checkpoint" "$out"
else
    echo "SKIP: $HF/model.safetensors is absent (../shared/data not beside the repo)"
fi

echo "test_cli.sh: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
