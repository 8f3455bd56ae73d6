#!/usr/bin/env bash
# test_compose.sh: end-to-end tests of `adapterctl compose` (issue 5, the compose half of
# acceptance 3 and the compose refusals of 5): every method on the base-tiny fixtures, inputs
# named from the store and as directories, the result exported and checked against the
# inputs with plain python3 loops (deltas summed; the SVD error recomputed and compared with
# the optimal one from a Jacobi eigensolver written here; RoAd applied to a vector A then B),
# lineage in show, PEFT-loadable configs (use_rslora false, lora_alpha = r), DARE seeds, and
# every refusal leaving the store as it was.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh sets it); default
# build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
F=$PWD/fixtures/adapters/base-tiny
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0

PYSCRIPT=$TMP/compose.py
. tests/cli/lib/common.sh

cat >"$PYSCRIPT" <<'PYEOF'
import json, math, os, random, re, struct, sys
sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
import st_reader

PREFIX = "base_model.model."

def floats(dtype, shape, raw):
    n = 1
    for d in shape:
        n *= d
    if dtype == "F32":
        return list(struct.unpack("<%df" % n, raw))
    if dtype == "F16":
        return list(struct.unpack("<%de" % n, raw))
    if dtype == "BF16":
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0]
                for h in struct.unpack("<%dH" % n, raw)]
    raise SystemExit("dtype " + dtype)

def load(d):
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    ts = st_reader.tensors(os.path.join(d, "adapter_model.safetensors"))
    return cfg, {k: (v[1], floats(*v)) for k, v in ts.items() if v[0] in ("F32", "F16", "BF16")}

def pattern(pats, name):
    """PEFT's get_pattern_key: the first key K with re.match(r"(.*\\.)?(K)$", name)."""
    for k, v in (pats or {}).items():
        if re.match(r"(.*\.)?(%s)$" % k, name):
            return v
    return None

def pattern_old(pats, name):
    """Older PEFT releases' rule: the first key K with re.match(r".*\\.K$", name), which needs a
    dot before the key."""
    for k, v in (pats or {}).items():
        if re.match(r".*\.%s$" % k, name):
            return v
    return None

def lora(d):
    """{module: (out, in, r, scale, A, B)} of a LoRA directory, scale from the config rules."""
    cfg, ts = load(d)
    out = {}
    for k in ts:
        m = re.fullmatch(re.escape(PREFIX) + r"(.*)\.(lora_A\.weight|lora_embedding_A)", k)
        if not m:
            continue
        name, emb = m.group(1), m.group(2) == "lora_embedding_A"
        (r, n_in), A = ts[k]
        (n_out, _), B = ts[PREFIX + name + (".lora_embedding_B" if emb else ".lora_B.weight")]
        alpha = pattern(cfg.get("alpha_pattern"), name)
        alpha = cfg.get("lora_alpha", 8) if alpha is None else alpha
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[name] = (n_out, n_in, r, s, A, B)
    return out

def delta(mod, c):
    n_out, n_in, r, s, A, B = mod
    return [c * s * sum(B[o * r + k] * A[k * n_in + i] for k in range(r))
            for o in range(n_out) for i in range(n_in)]

def weighted_sum(args):
    """{module: sum of w s B A} over (dir, weight) pairs."""
    want = {}
    for i in range(0, len(args), 2):
        for name, mod in lora(args[i]).items():
            d = delta(mod, float(args[i + 1]))
            want[name] = [x + y for x, y in zip(want[name], d)] if name in want else d
    return want

def fro(x):
    return math.sqrt(sum(v * v for v in x))

def sum_check(out_dir, tol, *args):
    """The result's B A (scale 1) equals the weighted sum of the inputs' deltas."""
    want, got = weighted_sum(args), lora(out_dir)
    if sorted(want) != sorted(got):
        print("modules differ:", sorted(want), sorted(got))
        return
    for name in want:
        d = delta(got[name], 1.0)
        e = fro([a - b for a, b in zip(d, want[name])]) / max(fro(want[name]), 1e-300)
        if got[name][3] != 1.0:
            print(name, "scale", got[name][3], "is not 1")
        if e > float(tol):
            print(name, "relative difference", e, ">", tol)

def sym_eigvals(M):
    """Eigenvalues of a symmetric matrix by cyclic Jacobi rotations, largest first."""
    n = len(M)
    A = [row[:] for row in M]
    for _ in range(60):
        off = sum(A[i][j] ** 2 for i in range(n) for j in range(n) if i != j)
        if off <= 1e-26 * sum(A[i][i] ** 2 for i in range(n)):
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                if A[p][q] == 0:
                    continue
                th = (A[q][q] - A[p][p]) / (2 * A[p][q])
                t = (1 if th >= 0 else -1) / (abs(th) + math.sqrt(th * th + 1))
                c = 1 / math.sqrt(t * t + 1)
                s = t * c
                for k in range(n):
                    a, b = A[k][p], A[k][q]
                    A[k][p], A[k][q] = c * a - s * b, s * a + c * b
                for k in range(n):
                    a, b = A[p][k], A[q][k]
                    A[p][k], A[q][k] = c * a - s * b, s * a + c * b
    return sorted((A[i][i] for i in range(n)), reverse=True)

def trunc_check(out_dir, json_path, rank, *args):
    """The reported error per module equals the result's actual error against the weighted
    sum, and both equal the optimal sqrt(sum of discarded s^2)/||D|| (Jacobi on D D^T)."""
    rep = json.load(open(json_path))["error"]
    want, got = weighted_sum(args), lora(out_dir)
    k = int(rank)
    tot_d = tot_n = 0.0
    for name, D in want.items():
        n_out, n_in = got[name][0], got[name][1]
        actual = fro([a - b for a, b in zip(delta(got[name], 1.0), D)]) / fro(D)
        rows = [D[o * n_in:(o + 1) * n_in] for o in range(n_out)]
        if n_out > n_in:
            rows = [list(col) for col in zip(*rows)]
        G = [[sum(x * y for x, y in zip(a, b)) for b in rows] for a in rows]
        lam = [max(v, 0.0) for v in sym_eigvals(G)]
        opt = math.sqrt(sum(lam[k:]) / sum(lam))
        tot_d += sum(lam[k:])
        tot_n += sum(lam)
        r = rep["modules"].get(name)
        if r is None or abs(r - opt) > 1e-4 or abs(actual - opt) > 1e-4:
            print(name, "reported", r, "actual", actual, "optimal", opt)
    if abs(rep["overall"] - math.sqrt(tot_d / tot_n)) > 1e-4:
        print("overall reported", rep["overall"], "optimal", math.sqrt(tot_d / tot_n))

def config_check(d):
    """A composed LoRA: use_rslora false, lora_alpha = r, every module's alpha = its rank."""
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    if cfg.get("use_rslora") is not False:
        print("use_rslora is", cfg.get("use_rslora"))
    if cfg.get("lora_alpha") != cfg.get("r"):
        print("lora_alpha", cfg.get("lora_alpha"), "r", cfg.get("r"))
    if cfg.get("use_dora") not in (False, None):
        print("use_dora is", cfg.get("use_dora"))
    mods = lora(d)
    for name, (_, _, r, s, _, _) in mods.items():
        rp = pattern(cfg.get("rank_pattern"), name)
        if (cfg["r"] if rp is None else rp) != r:
            print(name, "rank", r, "but the config gives", rp, cfg["r"])
        old = pattern_old(cfg.get("rank_pattern"), name)
        if (cfg["r"] if old is None else old) != r:
            print(name, "rank", r, "but older PEFT reads", old, cfg["r"])
    # each key selects exactly one module, under both rules
    for k in (cfg.get("rank_pattern") or {}):
        for rule in (r"(.*\.)?(%s)$", r".*\.%s$"):
            hits = [n for n in mods if re.match(rule % k, n)]
            if len(hits) != 1:
                print("key", k, "under", rule, "matches", hits)
        if s != 1.0:
            print(name, "scale", s)
    if sorted(cfg.get("target_modules", [])) != sorted(mods):
        print("target_modules", cfg.get("target_modules"), "modules", sorted(mods))

def road(d):
    """{module: (variant, g, out, alpha, theta)}"""
    cfg, ts = load(d)
    v = int(cfg.get("variant", "road_1")[-1])
    g = cfg.get("group_size", 64)
    out = {}
    for k, (shape, th) in ts.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.*)\.road_theta", k)
        if m:
            al = ts[PREFIX + m.group(1) + ".road_alpha"][1]
            n = shape[0]
            out[m.group(1)] = (v, g, 2 * n if v == 1 else n if v == 2 else n // 2, al, th)
    return out

def road_apply(mod, w, x):
    """DESIGN.md 3.2 per pair, with theta*w and alpha^w."""
    v, g, n, al, th = mod
    h = g // 2
    c, s = [0.0] * n, [0.0] * n
    for p in range(n):
        k, o = divmod(p, g)
        j = o % h
        ic, is_ = (k * h + j,) * 2 if v == 1 else (p, p) if v == 2 else (2 * g * k + o, 2 * g * k + g + o)
        ac = al[ic] if w == 1 else al[ic] ** w
        as_ = al[is_] if w == 1 else al[is_] ** w
        c[p], s[p] = ac * math.cos(w * th[ic]), as_ * math.sin(w * th[is_])
    y = x[:]
    for b in range(0, n, g):
        for j in range(h):
            p, q = b + j, b + j + h
            y[p] = c[p] * x[p] - s[p] * x[q]
            y[q] = s[q] * x[p] + c[q] * x[q]
    return y

def road_seq_check(out_dir, variant, *args):
    """The result applied to a vector equals the inputs applied in order (first innermost)."""
    res = road(out_dir)
    ins = [(road(args[i]), float(args[i + 1])) for i in range(0, len(args), 2)]
    names = sorted(set(n for m, _ in ins for n in m))
    if sorted(res) != names:
        print("modules", sorted(res), "want", names)
        return
    rnd = random.Random(5)
    for name in names:
        n = res[name][2]
        x = [rnd.uniform(-1, 1) for _ in range(n)]
        y = x[:]
        for m, w in ins:
            if name in m:
                y = road_apply(m[name], w, y)
        z = road_apply(res[name], 1.0, x)
        for a, b in zip(y, z):
            if abs(a - b) > 1e-5 * (1 + abs(a)):
                print(name, "in order", a, "composed", b)
                break
        if res[name][0] != int(variant):
            print(name, "variant", res[name][0], "want", variant)

def same(d1, d2):
    c1, t1 = load(d1)
    c2, t2 = load(d2)
    if c1 != c2:
        print("configs differ")
    if t1 != t2:
        print("tensors differ")

def field(path, *keys):
    v = json.load(open(path))
    for k in keys:
        v = v[int(k)] if isinstance(v, list) else v[k]
    print(json.dumps(v) if not isinstance(v, str) else v)

def close(d1, d2, tol):
    """Two merged checkpoints (single-file, F32) hold the same tensors within tol, relative
    Frobenius per tensor."""
    t1 = st_reader.tensors(os.path.join(d1, "model.safetensors"))
    t2 = st_reader.tensors(os.path.join(d2, "model.safetensors"))
    if sorted(t1) != sorted(t2):
        print("tensor names differ")
        return
    for k in t1:
        a, b = floats(*t1[k]), floats(*t2[k])
        e = fro([x - y for x, y in zip(a, b)]) / max(fro(b), 1e-300)
        if e > float(tol):
            print(k, "relative difference", e)

def count(path):
    print(len(json.load(open(path))))

globals()[sys.argv[1]](*sys.argv[2:])
PYEOF

S=$TMP/store
# rows (every version) and pack files: what a refused compose must not change
state() {
    "$BIN" --store "$S" --json list --all-versions >"$TMP/list.json" 2>/dev/null
    echo "$(py count "$TMP/list.json") $(find "$S/objects" -type f 2>/dev/null | wc -l)"
}
# refuse NAME WANT_RC NEEDLE ARGS...: compose fails with WANT_RC and NEEDLE, the store as it was
refuse() {
    local name=$1 want=$2 needle=$3 before after
    shift 3
    before=$(state)
    st compose "$@"
    check_rc "refused: $name (exit $want)" "$want"
    check_has "refused: $name: says why" "$needle" "$err"
    after=$(state)
    check "refused: $name: nothing added" "$before" "$after"
}

# ---- store inputs -----------------------------------------------------------------
for fx in lora lora-bf16 lora-patterns road-1 road-4; do
    st add "$F/$fx" --name "$fx"
    check_rc "add $fx" 0
done

# ---- cat: exact, store refs and directories mixed, weights ---------------------------
st --json compose --method cat --out mix lora@1:0.5 "$F/lora-patterns:-1.5" lora-bf16:2
check_rc "cat: exit 0" 0
cp "$TMP/out" "$TMP/cat.json"
check "cat: kind lora" "lora" "$(py field "$TMP/cat.json" kind)"
check "cat: source compose" "compose" "$(py field "$TMP/cat.json" source)"
check "cat: lineage method" "cat" "$(py field "$TMP/cat.json" lineage method)"
check "cat: lineage first input is the resolved store ref" "lora@1" \
    "$(py field "$TMP/cat.json" lineage inputs 0 ref)"
check "cat: lineage first input's pack" "$(py field "$TMP/cat.json" lineage inputs 0 pack | tr -d '"')" \
    "$("$BIN" --store "$S" --json show lora@1 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["pack"])')"
check "cat: lineage weight" "-1.5" "$(py field "$TMP/cat.json" lineage inputs 1 weight)"
check "cat: lineage exact" "true" "$(py field "$TMP/cat.json" lineage exact)"
check_lacks "cat: no error object" '"error"' "$(cat "$TMP/cat.json")"
st export mix "$TMP/cat"
check_rc "cat: export" 0
check_py "cat: B A equals the inputs' deltas summed with their weights" sum_check "$TMP/cat" 1e-5 \
    "$F/lora" 0.5 "$F/lora-patterns" -1.5 "$F/lora-bf16" 2
check_py "cat: export is a PEFT LoRA with use_rslora false and lora_alpha = r" config_check "$TMP/cat"
check "cat: lineage options are empty (cat takes none)" "{}" \
    "$(py field "$TMP/cat.json" lineage options)"
check_has "cat: the export has rank patterns (the check above covers them)" "rank_pattern" \
    "$(cat "$TMP/cat/adapter_config.json")"

st show mix
check_rc "show mix" 0
check_has "show displays the lineage" "lineage" "$out"
check_has "show names the method" "cat" "$out"
check_has "show names the inputs" "lora@1" "$out"
check_has "show names directory inputs" "lora-patterns" "$out"

# ---- svd: full rank exact, lower rank with the optimal error --------------------------
st --json compose --method svd --out full lora:0.5 "$F/lora-patterns:-1.5"
check_rc "svd: exit 0" 0
cp "$TMP/out" "$TMP/svd.json"
check "svd full rank: lineage exact" "true" "$(py field "$TMP/svd.json" lineage exact)"
check_has "svd: --json has the error object" '"overall"' "$(cat "$TMP/svd.json")"
st export full "$TMP/svd"
check_py "svd at full rank equals the sum" sum_check "$TMP/svd" 1e-4 "$F/lora" 0.5 \
    "$F/lora-patterns" -1.5
check_py "svd: config" config_check "$TMP/svd"
# the largest: layers.1 q_proj, rank 8 in lora plus 6 in lora-patterns (its first matching key)
check "svd default rank: lineage records the result's largest rank" \
    '{"rank": 14, "rank_default": true}' "$(py field "$TMP/svd.json" lineage options)"
st compose --method svd --out fulltext lora:0.5 "$F/lora-patterns:-1.5"
check_has "svd at full rank: text output says exact" "svd of 2 inputs: exact," "$out"

st --json compose --method svd --rank 2 --out low lora:0.5 "$F/lora-patterns:-1.5"
check_rc "svd --rank 2: exit 0" 0
cp "$TMP/out" "$TMP/low.json"
check "svd --rank 2: lineage options are the rank only" '{"rank": 2}' \
    "$(py field "$TMP/low.json" lineage options)"
check "svd --rank 2: lineage exact" "false" "$(py field "$TMP/low.json" lineage exact)"
st export low "$TMP/low"
check_py "svd --rank 2: reported error = actual error = optimal (Jacobi) per module and overall" \
    trunc_check "$TMP/low" "$TMP/low.json" 2 "$F/lora" 0.5 "$F/lora-patterns" -1.5
check_py "svd --rank 2: config" config_check "$TMP/low"
st compose --method svd --rank 2 --out lowtext lora:0.5 "$F/lora-patterns:-1.5"
check_has "svd text output gives the overall error" "relative error" "$out"
check_has "svd --rank 2: text output says inexact" "svd of 2 inputs: inexact," "$out"

# ---- pruning methods, then SVD -------------------------------------------------------
for m in ties dare_linear dare_ties magnitude_prune; do
    st --json compose --method $m --density 0.4 --out "p-$m" lora "$F/lora-bf16:0.5" "$F/mos"
    check_rc "$m: exit 0 (MoS input materialized)" 0
    cp "$TMP/out" "$TMP/$m.json"
    check "$m: lineage density" "0.4" "$(py field "$TMP/$m.json" lineage options density)"
    check_has "$m: --json has the error object" '"modules"' "$(cat "$TMP/$m.json")"
    st export "p-$m" "$TMP/p-$m"
    check_py "$m: config" config_check "$TMP/p-$m"
done
# at density 1 with one input nothing is pruned: the delta itself
st compose --method ties --density 1 --out t1 lora-bf16:0.75
st export t1 "$TMP/t1"
check_py "ties at density 1 of one input is its delta" sum_check "$TMP/t1" 1e-5 "$F/lora-bf16" 0.75

# DARE: the seed is recorded, and the same seed gives the same adapter (the same pack)
st --json compose --method dare_linear --seed 42 --out d1 lora lora-bf16
check "dare: lineage seed" "42" "$(py field "$TMP/out" lineage options seed)"
p1=$(py field "$TMP/out" pack)
st --json compose --method dare_linear --seed 42 --out d2 lora lora-bf16
p2=$(py field "$TMP/out" pack)
st --json compose --method dare_linear --seed 43 --out d3 lora lora-bf16
p3=$(py field "$TMP/out" pack)
check "dare: the same seed gives the same pack" "$p1" "$p2"
if [ "$p1" != "$p3" ]; then pass "dare: another seed gives another pack"; else
    fail "dare: another seed gives another pack" "$p1"; fi
st --json compose --method dare_ties --out d4 lora lora-bf16
seed=$(py field "$TMP/out" lineage options seed)
p4=$(py field "$TMP/out" pack)
case "$seed" in
[0-9]*) pass "dare without --seed records the seed it drew" ;;
*) fail "dare without --seed records the seed it drew" "$seed" ;;
esac
st --json compose --method dare_ties --seed "$seed" --out d5 lora lora-bf16
check "dare: the recorded seed reproduces the adapter" "$p4" "$(py field "$TMP/out" pack)"

# ---- linear: PEFT's mix, labelled inexact ------------------------------------------------
st compose --method linear --out lin "$F/lora-f16" lora-bf16:0.5
check_rc "linear: exit 0" 0
check_has "linear: warns that it is inexact" "inexact" "$err"
check_lacks "linear: does not claim svd is always exact" "svd are exact" "$err"
check_has "linear: svd is exact at full rank" "svd at full rank" "$err"
st --json show lin
check "linear: lineage exact false" "false" "$(py field "$TMP/out" lineage exact)"
st export lin "$TMP/lin"
check_py "linear: config" config_check "$TMP/lin"

# ---- RoAd --------------------------------------------------------------------------------
st compose --method sequential --out seq1 road-1 "$F/road-1:0.5"
check_rc "sequential road_1: exit 0" 0
st export seq1 "$TMP/seq1"
check_py "sequential of road_1s is road_1 and equals A then B on a vector" road_seq_check \
    "$TMP/seq1" 1 "$F/road-1" 1 "$F/road-1" 0.5
st compose --method sequential --out seq4 road-4:0.5 "$F/road-1"
check_rc "sequential road_4 then road_1: exit 0" 0
st export seq4 "$TMP/seq4"
check_py "sequential road_4 then road_1 is road_2 and equals A then B" road_seq_check \
    "$TMP/seq4" 2 "$F/road-4" 0.5 "$F/road-1" 1
st compose --method sequential --out seq2 "$F/road-2" "$F/road-2:-0.5"
check_rc "sequential road_2: exit 0" 0

st compose --method union --out u1 road-1 "$F/road-4:0.5"
check_rc "union: exit 0" 0
st compose --method union --out u2 "$F/road-4:0.5" road-1
st export u1 "$TMP/u1"
st export u2 "$TMP/u2"
check_py "union of disjoint adapters commutes" same "$TMP/u1" "$TMP/u2"
check_py "union: each module does what its input did" road_seq_check "$TMP/u1" 4 \
    "$F/road-1" 1 "$F/road-4" 0.5

# ---- stack: any kinds, a recipe --------------------------------------------------------
st --json compose --method stack --out stk lora:0.5 road-1
check_rc "stack: exit 0" 0
check "stack: kind" "stack" "$(py field "$TMP/out" kind)"
st show stk
check_has "stack: show gives its lineage" "lineage" "$out"

# ---- merged results: a composed adapter merged equals its inputs merged in order ---------
BASE=$PWD/fixtures/base-tiny
merged() { # merged NAME ARGS...: merge into $TMP/m-NAME
    local name=$1
    shift
    st merge --base "$BASE" --out "$TMP/m-$name" "$@"
    check_rc "merge $name" 0
}
merged cat mix
merged cat-in lora@1:0.5 "$F/lora-patterns:-1.5" lora-bf16:2
check_py "cat merged equals the inputs merged one after another" close "$TMP/m-cat" "$TMP/m-cat-in" 1e-6
merged svd full
merged svd-in lora:0.5 "$F/lora-patterns:-1.5"
check_py "svd at full rank merged equals the inputs merged" close "$TMP/m-svd" "$TMP/m-svd-in" 1e-6
merged seq seq4
merged seq-in road-4:0.5 "$F/road-1"
check_py "sequential merged equals A then B merged" close "$TMP/m-seq" "$TMP/m-seq-in" 1e-6
merged union u2
merged union-in road-1 "$F/road-4:0.5"
check_py "union merged equals the inputs merged" close "$TMP/m-union" "$TMP/m-union-in" 1e-6

# ---- refusals: each leaves the store as it was ---------------------------------------------
refuse "DoRA input" 1 "DoRA" --method cat --out x lora "$F/lora-dora"
refuse "DoRA input (svd)" 1 "merge it into the base instead" --method svd --out x "$F/lora-dora"
refuse "unequal ranks for linear" 1 "equal ranks" --method linear --out x lora lora-bf16
refuse "bottleneck input for a LoRA method" 1 "bottleneck" --method svd --out x lora \
    "$F/bottleneck-parallel"
refuse "mixed kinds" 1 "RoAd adapter" --method cat --out x lora road-1
refuse "LoRA input for a RoAd method" 1 "takes RoAd inputs" --method sequential --out x road-1 lora
refuse "RoAd group mismatch" 1 "group_size" --method sequential --out x road-1 "$F/road-2"
refuse "overlapping union" 1 "is in both" --method union --out x road-1 "$F/road-1"
refuse "density above 1" 1 "is not in (0, 1]" --method ties --density 1.5 --out x lora
refuse "negative density" 1 "is not in (0, 1]" --method dare_ties --density -0.2 --out x lora
refuse "density 0" 2 "keeps nothing" --method ties --density 0 --out x lora
refuse "density not a number" 2 "not a number" --method ties --density half --out x lora
refuse "rank 0" 2 "--rank '0'" --method svd --rank 0 --out x lora
refuse "negative rank" 2 "--rank '-3'" --method svd --rank -3 --out x lora
refuse "unknown method" 2 "unknown compose method 'mean'" --method mean --out x lora
refuse "missing method" 2 "missing --method" --out x lora
refuse "missing --out" 2 "missing --out" --method cat lora
refuse "invalid --out name" 2 "--out" --method cat --out "../x" lora
refuse "no inputs" 2 "no inputs" --method cat --out x
refuse "--rank with cat" 2 "--rank applies to" --method cat --rank 4 --out x lora
refuse "--seed with svd" 2 "--seed applies to" --method svd --seed 1 --out x lora
refuse "--seed not a number" 2 "--seed" --method dare_linear --seed x1 --out x lora
refuse "seed above 2^63-1" 1 "above 2^63-1" --method dare_linear --seed 18446744073709551615 \
    --out x lora
refuse "unknown input" 1 "nosuch" --method cat --out x nosuch
refuse "different base models" 1 "different base models" --method cat --out x lora \
    "$PWD/fixtures/adapters/hf-tiny/lora"
refuse "weights too large for cat" 1 "the weights are too large" --method cat --out s2 \
    "$F/lora:1e300"
refuse "weights too large for dare_linear (not reported as out of memory)" 1 \
    "the weights are too large" --method dare_linear --out s2 "$F/lora:1e300" "$F/lora-patterns"
check_lacks "weights too large: not called out of memory" "out of memory" "$err"
refuse "weighted input carrying modules_to_save" 1 \
    "has weight 0.5 but carries tensor 'base_model.model.lm_head.weight'" --method cat --out x \
    lora "$F/lora-embedding:0.5"

echo "test_compose.sh: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
