#!/usr/bin/env bash
# test_merge.sh: end-to-end tests of `adapterctl merge` (issue 5): adapters
# named as directories and from the store with weights, --json, --unmerge,
# --dtype, the refusals (each leaving no output), and usage errors.
#
# Numbers are checked against a small python3 computation from the fixture
# files (W + w s B A with s = lora_alpha / r, read by the format's rules),
# never against another run of adapterctl. The thorough numerical tests are
# tests/test_merge.c.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0
S=$TMP/store
PYSCRIPT=$TMP/check.py
. tests/cli/lib/common.sh

cat >"$PYSCRIPT" <<'PYEOF'
import json, os, re, struct, sys
sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
import st_reader

def load(d):
    """{name: (dtype, shape, values)} of a checkpoint directory (one file or shards)."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            for k, (dt, shape, b) in st_reader.tensors(os.path.join(d, f)).items():
                if dt == "F32":
                    v = list(struct.unpack("<%df" % (len(b) // 4), b))
                elif dt == "BF16":
                    v = [struct.unpack("<f", struct.pack("<I", (b[2 * i] | b[2 * i + 1] << 8) << 16))[0]
                         for i in range(len(b) // 2)]
                else:
                    v = None
                out[k] = (dt, shape, v)
    return out

def close(got, want, what):
    """got equals want within 1e-6 of each row's largest value."""
    dt, shape, g = got
    _, _, w = want
    cols = shape[1] if len(shape) == 2 else len(w)
    bad = []
    for r in range(len(w) // cols):
        row = w[r * cols:(r + 1) * cols]
        m = max(abs(x) for x in row)
        for c, x in enumerate(row):
            if abs(g[r * cols + c] - x) > 1e-6 * m:
                bad.append("%s[%d,%d]: %r, expected %r" % (what, r, c, g[r * cols + c], x))
    return bad[:3]

def lora_expect(base, adapter, weight):
    """W + weight * alpha / r * B A for every module of a PEFT LoRA directory."""
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    t = st_reader.tensors(os.path.join(adapter, "adapter_model.safetensors"))
    out = dict(base)
    for k in t:
        m = re.fullmatch(r"base_model\.model\.(.*)\.lora_A\.weight", k)
        if not m:
            continue
        mod = m.group(1)
        _, sa, ba = t[k]
        _, sb, bb = t["base_model.model.%s.lora_B.weight" % mod]
        A = struct.unpack("<%df" % (len(ba) // 4), ba)
        B = struct.unpack("<%df" % (len(bb) // 4), bb)
        r, n_in = sa
        n_out = sb[0]
        s = weight * cfg["lora_alpha"] / r
        dt, shape, W = base[mod + ".weight"]
        W = list(W)
        for o in range(n_out):
            for i in range(n_in):
                W[o * n_in + i] += s * sum(B[o * r + j] * A[j * n_in + i] for j in range(r))
        out[mod + ".weight"] = (dt, shape, W)
    return out

def main():
    cmd = sys.argv[1]
    if cmd == "lora":  # lora OUT BASE ADAPTER WEIGHT
        got, base = load(sys.argv[2]), load(sys.argv[3])
        want = lora_expect(base, sys.argv[4], float(sys.argv[5]))
        bad = []
        for k in want:
            bad += close(got[k], want[k], k)
        print("\n".join(bad[:5]))
    elif cmd == "same":  # same A B: every tensor of A equals B's within 1e-6 of its row
        a, b = load(sys.argv[2]), load(sys.argv[3])
        bad = [] if sorted(a) == sorted(b) else ["tensor names differ"]
        for k in b:
            bad += close(a[k], b[k], k)
        print("\n".join(bad[:5]))
    elif cmd == "dtypes":  # dtypes DIR: the set of dtypes
        print(" ".join(sorted({v[0] for v in load(sys.argv[2]).values()})))
    elif cmd == "json":  # json FILE EXPR
        d = json.load(open(sys.argv[2]))
        print(eval(sys.argv[3], {"d": d}))
    elif cmd == "files":  # files DIR: the regular files, sorted
        print(" ".join(sorted(f for f in os.listdir(sys.argv[2]))))
main()
PYEOF

# nothing NAME DIR: the refused merge left neither DIR nor a temporary sibling
nothing() {
    local parent base left
    parent=$(dirname "$2")
    base=$(basename "$2")
    left=$(ls -a "$parent" | grep -c -- "^\.$base\.tmp-" || true)
    if [ ! -e "$2" ] && [ "$left" -eq 0 ]; then pass "$1"; else
        fail "$1" "output or temporary directory left: $(ls -a "$parent")"; fi
}

A=$FIX/adapters/base-tiny
BASE=$FIX/base-tiny-sharded

# ---- usage ----------------------------------------------------------------------
run merge --out "$TMP/x" "$A/lora"
check_rc "no --base is a usage error" 2
check_has "no --base says so" "missing --base" "$err"
run merge --base "$BASE" "$A/lora"
check_rc "no --out is a usage error" 2
run merge --base "$BASE" --out "$TMP/x"
check_rc "no adapter is a usage error" 2
run merge --base "$BASE" --out "$TMP/x" --dtype f8 "$A/lora"
check_rc "an unknown --dtype is a usage error" 2
check_has "an unknown --dtype is named" "'f8'" "$err"
run merge --base "$BASE" --out "$TMP/x" --threads 0 "$A/lora"
check_rc "--threads 0 is a usage error" 2
run merge --help
check_rc "--help" 0
check_has "--help shows the synopsis" "adapterctl merge --base DIR --out DIR" "$out"

# ---- a directory, --json ----------------------------------------------------------
run --store "$S" --json merge --base "$BASE" --out "$TMP/m1" "$A/lora"
check_rc "merge of a PEFT directory" 0
check "--json tensors_merged" "4" "$(py json "$TMP/out" 'd["tensors_merged"]')"
check "--json tensors_copied" "17" "$(py json "$TMP/out" 'd["tensors_copied"]')"
check "--json bytes (the index's total_size)" "78464" "$(py json "$TMP/out" 'd["bytes"]')"
check "--json inputs" "[('$A/lora', 1.0, None)]" \
    "$(py json "$TMP/out" '[(i["ref"], i["weight"], i["pack"]) for i in d["inputs"]]')"
check "--json out and unmerge" "('$TMP/m1', False, None)" \
    "$(py json "$TMP/out" '(d["out"], d["unmerge"], d["dtype"])')"
check_py "merged tensors are W + s B A" lora "$TMP/m1" "$BASE" "$A/lora" 1
check "the output has the base's files" "$(py files "$BASE")" "$(py files "$TMP/m1")"
if [ -e "$S" ]; then fail "a store is not made when only directories are named" "$S exists"
else pass "a store is not made when only directories are named"; fi

# ---- from the store, with a weight; text output -------------------------------------
run --store "$S" add "$A/lora" --name tiny-lora
check_rc "add to the store" 0
run --store "$S" merge --base "$FIX/base-tiny" --out "$TMP/m2" tiny-lora:0.5
check_rc "merge of a stored adapter with a weight" 0
check_has "the text output says what was done" "merged 1 adapter into $TMP/m2" "$out"
check_py "weight 0.5 halves the delta" lora "$TMP/m2" "$FIX/base-tiny" "$A/lora" 0.5
run --store "$S" --json merge --base "$FIX/base-tiny" --out "$TMP/m3" tiny-lora@1:-1 "$A/road-1"
check_rc "a stored adapter and a directory" 0
check "--json names the resolved version, weight and pack" "tiny-lora@1 -1.0 64" \
    "$(py json "$TMP/out" '"%s %s %d" % (d["inputs"][0]["ref"], d["inputs"][0]["weight"], len(d["inputs"][0]["pack"]))')"

# ---- --unmerge gives the base back ------------------------------------------------
run --store "$S" merge --unmerge --base "$TMP/m3" --out "$TMP/back" tiny-lora@1:-1 "$A/road-1"
check_rc "--unmerge" 0
check_has "the text output says unmerged" "unmerged 2 adapters from $TMP/back" "$out"
check_py "merge then --unmerge gives the base back" same "$TMP/back" "$FIX/base-tiny"

# ---- --dtype ------------------------------------------------------------------------
run --json merge --base "$BASE" --out "$TMP/bf" --dtype bf16 "$A/road-2"
check_rc "--dtype bf16" 0
check "--json dtype" "bf16" "$(py json "$TMP/out" 'd["dtype"]')"
check "every tensor is BF16" "BF16" "$(py dtypes "$TMP/bf")"
check "config.json says bfloat16" "bfloat16" "$(py json "$TMP/bf/config.json" 'd["torch_dtype"]')"
check "the index's total_size is halved" "39232" \
    "$(py json "$TMP/bf/model.safetensors.index.json" 'd["metadata"]["total_size"]')"

# ---- refusals leave nothing ---------------------------------------------------------------
run merge --base "$BASE" --out "$TMP/r1" "$A/bottleneck-series"
check_rc "a bottleneck adapter is refused" 1
check_has "the refusal says why" "non-linear" "$err"
nothing "a refused bottleneck merge writes nothing" "$TMP/r1"

mkdir "$TMP/exists"
run merge --base "$BASE" --out "$TMP/exists" "$A/lora"
check_rc "an existing --out is refused" 1
check_has "an existing --out is named" "already exists" "$err"
check "the existing directory is untouched" "" "$(ls -A "$TMP/exists")"

mkdir "$TMP/other"
cp "$FIX/base-tiny/model.safetensors" "$TMP/other/"
sed 's|"adapterctl/base-tiny"|"someone/else"|' "$FIX/base-tiny/config.json" >"$TMP/other/config.json"
run merge --base "$TMP/other" --out "$TMP/r2" "$A/lora"
check_rc "another base model is refused" 1
check_has "the refusal names the adapter's base" "adapterctl/base-tiny" "$err"
check_has "the refusal names the given base" "someone/else" "$err"
nothing "a refused base mismatch writes nothing" "$TMP/r2"
run merge --force --base "$TMP/other" --out "$TMP/r3" "$A/lora"
check_rc "--force merges into another base model" 0

run merge --unmerge --base "$BASE" --out "$TMP/r4" "$A/lora-dora"
check_rc "unmerging DoRA is refused" 1
check_has "the DoRA refusal says why" "DoRA cannot be unmerged" "$err"
nothing "a refused DoRA unmerge writes nothing" "$TMP/r4"

run --store "$S" merge --base "$BASE" --out "$TMP/r5" "$TMP/no-such-adapter"
check_rc "an unknown adapter fails" 1
nothing "an unknown adapter writes nothing" "$TMP/r5"

# ---- values that would not be finite ----------------------------------------------
run merge --base "$FIX/base-tiny" --out "$TMP/inf1" "$A/lora:1e40"
check_rc "a LoRA weight past the float range is refused" 1
check_has "the refusal says why" "beyond the float range" "$err"
nothing "a refused huge LoRA weight writes nothing" "$TMP/inf1"
run merge --base "$FIX/base-tiny" --out "$TMP/inf2" "$A/road-1:1e308"
check_rc "a RoAd weight that overflows its coefficients is refused" 1
check_has "the RoAd refusal says why" "not finite" "$err"
nothing "a refused huge RoAd weight writes nothing" "$TMP/inf2"

# ---- a stack merges as its members in order ------------------------------------------
st add "$A/road-2" --name st-road
st compose --method stack --out st-mix tiny-lora:0.5 st-road:-0.75 "$A/lora-dora:0.3"
check_rc "compose --method stack" 0
st merge --base "$FIX/base-tiny" --out "$TMP/stack" st-mix:2
check_rc "merge of a stack" 0
st merge --base "$FIX/base-tiny" --out "$TMP/members" tiny-lora:1 st-road:-1.5 "$A/lora-dora:0.6"
check_rc "merge of the stack's members with its weights times 2" 0
check_py "a stack merges as its members, in order, weights multiplied" same "$TMP/stack" "$TMP/members"
st merge --base "$FIX/base-tiny" --out "$TMP/reordered" st-road:-1.5 tiny-lora:1 "$A/lora-dora:0.6"
check_rc "the members in another order" 0
if [ -z "$(py same "$TMP/stack" "$TMP/reordered")" ]; then
    fail "the order of a stack's members matters (RoAd then LoRA differs)" "same output"
else pass "the order of a stack's members matters (RoAd then LoRA differs)"; fi

# ---- SIGTERM, SIGINT, SIGHUP: the merge stops and leaves nothing --------------------------
# A 200 MB base and a rank-256 LoRA on its one weight, generated here: a merge
# on one thread takes a good part of a second. The process is stopped as soon
# as its temporary directory appears, signalled, then resumed, so the signal
# lands mid-merge however fast the machine is.
cat >"$TMP/gen_big.py" <<'PYEOF'
import json, os, struct, sys
def st_write(path, tensors):
    hdr, off = {}, 0
    for k, (shape, b) in sorted(tensors.items()):
        hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for k in sorted(tensors):
            f.write(tensors[k][1])
def pattern(n, seed):
    return struct.pack("<%df" % n, *[(((i + seed) * 7919) % 1000) / 1000.0 - 0.5 for i in range(n)])
d, a = sys.argv[1], sys.argv[2]
rows, cols, r = 12800, 4096, 256  # 200 MiB of F32
os.makedirs(d)
os.makedirs(a)
json.dump({"model_type": "llama", "_name_or_path": "big"}, open(os.path.join(d, "config.json"), "w"))
st_write(os.path.join(d, "model.safetensors"),
         {"model.extra.weight": ([rows, cols], pattern(64 * cols, 0) * (rows // 64))})
json.dump({"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["extra"]},
          open(os.path.join(a, "adapter_config.json"), "w"))
st_write(os.path.join(a, "adapter_model.safetensors"),
         {"base_model.model.model.extra.lora_A.weight": ([r, cols], pattern(r * cols, 1)),
          "base_model.model.model.extra.lora_B.weight": ([rows, r], pattern(rows * r, 2))})
PYEOF
"$PY" "$TMP/gen_big.py" "$TMP/big" "$TMP/big-lora"
for sig in TERM INT HUP; do
    out_dir=$TMP/int-$sig
    # the signal's default action, whatever this script inherited: a background
    # job of a script ignores SIGINT, and one run under nohup ignores SIGHUP
    env --default-signal="$sig" "$BIN" merge --threads 1 --base "$TMP/big" --out "$out_dir" \
        "$TMP/big-lora" >"$TMP/int.out" 2>"$TMP/int.err" &
    pid=$!
    for _ in $(seq 1 2000); do
        compgen -G "$TMP/.int-$sig.tmp-*" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.005
    done
    kill -STOP "$pid" 2>/dev/null
    started=$(compgen -G "$TMP/.int-$sig.tmp-*" >/dev/null && echo yes || echo no)
    kill -"$sig" "$pid" 2>/dev/null
    kill -CONT "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    err=$(cat "$TMP/int.err")
    check "the merge had started writing when SIG$sig came" yes "$started"
    check_rc "SIG$sig stops the merge with exit status 1" 1
    check_has "SIG$sig: the message says it was interrupted" "interrupted" "$err"
    nothing "SIG$sig leaves neither the output nor the temporary directory" "$out_dir"
done
# an ignored signal stays ignored (nohup): the merge completes
(trap '' HUP; exec "$BIN" merge --threads 1 --base "$TMP/big" --out "$TMP/nohup" "$TMP/big-lora" \
    >"$TMP/int.out" 2>"$TMP/int.err") &
pid=$!
for _ in $(seq 1 2000); do
    compgen -G "$TMP/.nohup.tmp-*" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.005
done
kill -HUP "$pid" 2>/dev/null
wait "$pid"
rc=$?
check_rc "an ignored SIGHUP does not stop the merge" 0
if [ -e "$TMP/nohup/model.safetensors" ]; then pass "the merge ignoring SIGHUP completed"
else fail "the merge ignoring SIGHUP completed" "no $TMP/nohup/model.safetensors"; fi
rm -rf "$TMP/nohup" "$TMP/big" "$TMP/big-lora"

echo "$npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
