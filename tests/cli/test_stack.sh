#!/usr/bin/env bash
# test_stack.sh: end-to-end tests of stacks and lineage in the store commands
# (issue 5): `compose --method stack` records a recipe; list and show present
# it (kind, members, lineage block, --json with the lineage as an object and
# a null pack); export writes one PEFT directory per member plus stack.json
# and says so; rm of the member adapters leaves the stack whole, gc keeps
# their packs, verify re-hashes them; stats counts each pack once; rm of the
# stack lets gc take them; a stack of a stack is flat; a failed compose
# writes nothing; show prints any entry's lineage.
#
# Expectations come from the fixture files (a safetensors reader written
# here), the pack files on disk (their names are their SHA-256) and SQL on
# the catalogue, never from another run of adapterctl.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures/adapters/base-tiny
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0

PYSCRIPT=$TMP/stack.py
. tests/cli/lib/common.sh

cat >"$PYSCRIPT" <<'PYEOF'
import hashlib, json, os, re, sqlite3, sys
sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
import st_reader

PREFIX = "base_model.model."
MARK = {"lora": r"\.(lora_A\.weight|lora_embedding_A)", "road": r"\.road_theta",
        "bottleneck": r"\.adapter_down\.weight", "mos": r"\.mos_index_A"}

def kind_of(src):
    with open(os.path.join(src, "adapter_config.json")) as f:
        return json.load(f)["peft_type"].lower()

def tensors(src):
    return st_reader.tensors(os.path.join(src, "adapter_model.safetensors"))

def modules(src):
    names = set()
    for k in tensors(src):
        m = re.fullmatch(re.escape(PREFIX) + r"(.*)" + MARK[kind_of(src)], k)
        if m:
            names.add(m.group(1))
    return names

def packs(store):
    """{digest: size} of the pack files objects/<2 hex>/<64 hex>."""
    out = {}
    top = os.path.join(store, "objects")
    for d in os.listdir(top):
        if re.fullmatch(r"[0-9a-f]{2}", d):
            for f in os.listdir(os.path.join(top, d)):
                if re.fullmatch(r"[0-9a-f]{64}", f):
                    out[f] = os.path.getsize(os.path.join(top, d, f))
    return out

def cmd_packs(store):
    print(" ".join(sorted(packs(store))))

def cmd_newpack(store, before):
    """The one pack file that is not in `before` (space-separated digests)."""
    new = sorted(set(packs(store)) - set(before.split()))
    print(new[0] if len(new) == 1 else "?%d new packs" % len(new))

def cmd_sha_ok(store):
    for d, _ in packs(store).items():
        p = os.path.join(store, "objects", d[:2], d)
        with open(p, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != d:
                print("pack %s: its SHA-256 is not its name" % d)

def cmd_entry(doc, store, name, version, members):
    """show --json of a stack against its members, given as
    "src|ref|weight|pack;..." (src: the fixture directory)."""
    with open(doc) as f:
        e = json.load(f)
    ms = [m.split("|") for m in members.split(";")]
    want_inputs = [{"kind": kind_of(src), "pack": pack, "ref": ref, "weight": float(w)}
                   for src, ref, w, pack in ms]
    sizes = packs(store)
    want = {
        "name": name, "version": int(version), "kind": "stack", "rank": 0, "variant": None,
        "group_size": 0, "pack": None, "base_model": "adapterctl/base-tiny",
        "target_modules": sorted(set().union(*[modules(m[0]) for m in ms])),
        "raw_bytes": sum(sum(len(t[2]) for t in tensors(m[0]).values()) for m in ms),
        "stored_bytes": sum(sizes.get(m[3], -10**9) for m in ms),
        "config": {"members": want_inputs},
        "lineage": {"method": "stack", "inputs": want_inputs},
    }
    for k, v in want.items():
        got = e.get(k)
        if k == "target_modules" and isinstance(got, list):
            got = sorted(got)
        if got != v:
            print("%s: got %r, want %r" % (k, got, v))

def cmd_export(out, members):
    """An exported stack directory against its members "src|ref|weight|pack|dir;..."."""
    ms = [m.split("|") for m in members.split(";")]
    want_dirs = sorted([m[4] for m in ms] + ["stack.json"])
    if sorted(os.listdir(out)) != want_dirs:
        print("entries", sorted(os.listdir(out)), "want", want_dirs)
        return
    for src, ref, w, pack, sub in ms:
        a, b = tensors(src), tensors(os.path.join(out, sub))
        if a != b:
            print("%s: tensors differ from %s" % (sub, src))
        with open(os.path.join(src, "adapter_config.json")) as f:
            ca = json.load(f)
        with open(os.path.join(out, sub, "adapter_config.json")) as f:
            cb = json.load(f)
        if ca != cb:
            print("%s: config differs" % sub)
    with open(os.path.join(out, "stack.json")) as f:
        doc = json.load(f)
    want = {"format": 1, "kind": "stack", "base_model": "adapterctl/base-tiny",
            "members": [{"position": i + 1, "dir": m[4], "ref": m[1], "kind": kind_of(m[0]),
                         "weight": float(m[2]), "pack": m[3]} for i, m in enumerate(ms)]}
    for k, v in want.items():
        if doc.get(k) != v:
            print("stack.json %s: got %r, want %r" % (k, doc.get(k), v))

def cmd_get(doc, *path):
    with open(doc) as f:
        v = json.load(f)
    for p in path:
        v = v[int(p)] if isinstance(v, list) else v[p]
    print(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) or v is None else v)

def cmd_sql(db, q):
    c = sqlite3.connect(db)
    rows = c.execute(q).fetchall()
    c.commit()
    c.close()
    for r in rows:
        print("|".join("" if x is None else str(x) for x in r))

def cmd_flip(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 1
        f.seek(0)
        f.write(data)

getattr(sys.modules[__name__], "cmd_" + sys.argv[1])(*sys.argv[2:])
PYEOF

S=$TMP/store

if ! "$BIN" help compose >/dev/null 2>&1; then
    echo "SKIP: this adapterctl has no compose command"
    echo "test_stack.sh: $npass passed, $nfail failed"
    exit 0
fi

# ---- the members, each pack known from the files it adds --------------------

st add "$FIX/lora" --name a
check_rc "add a exits 0" 0
PA=$(py packs "$S")
st add "$FIX/road-2" --name b
check_rc "add b exits 0" 0
PB=$(py newpack "$S" "$PA")
st add "$FIX/bottleneck-series" --name c
check_rc "add c exits 0" 0
PC=$(py newpack "$S" "$PA $PB")
BEFORE=$(py packs "$S")

# ---- compose --method stack ------------------------------------------------

st compose --method stack --out mix a:0.5 b@1 "$FIX/lora-f16:-1"
check_rc "compose --method stack exits 0" 0
PF=$(py newpack "$S" "$BEFORE")
case "$PF" in
[0-9a-f]*) pass "the directory member got one pack of its own" ;;
*) fail "the directory member got one pack of its own" "$PF" ;;
esac
check_py "every pack file's SHA-256 is its name" sha_ok "$S"
MEMBERS="$FIX/lora|a@1|0.5|$PA;$FIX/road-2|b@1|1|$PB;$FIX/lora-f16|$FIX/lora-f16|-1|$PF"
check "one row per member" "3" "$(py sql "$S/catalog.db" "SELECT count(*) FROM stack_members")"

# ---- list and show -----------------------------------------------------------

st list
check_rc "list exits 0" 0
check "list shows the stack's kind, and no rank" "mix 1 stack -" \
    "$(printf '%s\n' "$out" | awk '$1 == "mix" {print $1, $2, $3, $4}')"
st list --kind stack
check "list --kind stack lists the stack only" "mix" "$(printf '%s\n' "$out" | awk 'NR > 1 {print $1}')"
st --json show mix
check_rc "show --json mix exits 0" 0
check_py "show --json: kind, members, sizes, modules, recipe and lineage object" \
    entry "$TMP/out" "$S" mix 1 "$MEMBERS"
st show mix
check_rc "show mix exits 0" 0
check_has "show: the kind" "$(printf '%-14sstack' kind)" "$out"
check_has "show: the member count" "$(printf '%-14s3' members)" "$out"
check_has "show: no pack" "$(printf '%-14s-' pack)" "$out"
check_has "show: a lineage block with its method" "lineage
  method      stack" "$out"
check_has "show: member 1 with its weight and pack" "  inputs      1. a@1 (lora), weight 0.5, pack ${PA:0:12}" "$out"
check_has "show: member 2" "              2. b@1 (road), weight 1, pack ${PB:0:12}" "$out"
check_has "show: member 3, a directory" "              3. $FIX/lora-f16 (lora), weight -1, pack ${PF:0:12}" "$out"

# ---- export ------------------------------------------------------------------

EXPORT_MEMBERS="$FIX/lora|a@1|0.5|$PA|01-a;$FIX/road-2|b@1|1|$PB|02-b;$FIX/lora-f16|$FIX/lora-f16|-1|$PF|03-lora-f16"
st export mix "$TMP/exp"
check_rc "export of a stack exits 0" 0
check_has "export says what it wrote" "'mix@1' is a stack: wrote 3 member directories plus stack.json" "$err"
check_py "export: one PEFT directory per member, tensors and configs as added, and stack.json" \
    export "$TMP/exp" "$EXPORT_MEMBERS"
st export mix "$TMP/exp-q" -q
check_rc "export -q exits 0" 0
check "export -q says nothing" "" "$err"
st --json export mix "$TMP/exp-json"
check "export --json counts the member directories" "3" "$(py get "$TMP/out" members)"
st export mix "$TMP/exp"
check_rc "export into a non-empty directory exits 1" 1
check_has "and says why" "already exists and is not an empty directory" "$err"
check_py "and leaves it as it was" export "$TMP/exp" "$EXPORT_MEMBERS"
if ls "$TMP" | grep -q '\.tmp\.'; then fail "no temporary directory is left" "$(ls "$TMP")"
else pass "no temporary directory is left"; fi

# ---- the members' adapters go; the stack stays whole -------------------------

st rm a
check_rc "rm a (a member) exits 0" 0
st rm b
check_rc "rm b (a member) exits 0" 0
st --json gc
check "gc keeps every pack a stack uses" "0" "$(py get "$TMP/out" packs_removed)"
st verify
check_rc "verify after rm of the members exits 0" 0
st --json stats
check "stats counts each pack once (a, b, c, the directory's)" "4" "$(py get "$TMP/out" packs)"
check "stats counts the stack and c" "2" "$(py get "$TMP/out" versions)"
st export mix "$TMP/exp2" -q
check_rc "the stack still exports" 0
check_py "with the same members" export "$TMP/exp2" "$EXPORT_MEMBERS"

# A member's pack damaged: verify names it and the stack; export refuses.
cp "$S/objects/${PB:0:2}/$PB" "$TMP/pb.saved"
py flip "$S/objects/${PB:0:2}/$PB"
st verify
check_rc "verify with a damaged member pack exits 1" 1
check_has "verify names the pack and the stack using it" "pack $PB (used by 'mix@1' (a stack member))" "$out"
st export mix "$TMP/exp3"
check_rc "export with a damaged member exits 1" 1
check_has "export names the member" "'mix@1' member 2 'b@1'" "$err"
if [ -e "$TMP/exp3" ]; then fail "a failed export writes nothing" "$(ls "$TMP/exp3")"
else pass "a failed export writes nothing"; fi
cp "$TMP/pb.saved" "$S/objects/${PB:0:2}/$PB"

# ---- a stack of a stack is flat; a failed compose writes nothing -------------

st compose --method stack --out mix2 mix:2 c
check_rc "compose of a stack and an adapter exits 0" 0
st --json show mix2
check_py "its members are the stack's, weights doubled, then c" entry "$TMP/out" "$S" mix2 1 \
    "$FIX/lora|a@1|1|$PA;$FIX/road-2|b@1|2|$PB;$FIX/lora-f16|$FIX/lora-f16|-2|$PF;$FIX/bottleneck-series|c@1|1|$PC"
BEFORE=$(py packs "$S")
ROWS=$(py sql "$S/catalog.db" "SELECT count(*) FROM adapters")
st compose --method stack --out bad c nosuch
check_rc "compose with a missing input exits 1" 1
check_has "and names it" "nosuch" "$err"
check "no pack is written" "$BEFORE" "$(py packs "$S")"
check "no row is written" "$ROWS" "$(py sql "$S/catalog.db" "SELECT count(*) FROM adapters")"
# members made for different base models are refused, naming both; nothing is written
st compose --method stack --out bases c "$PWD/fixtures/adapters/hf-tiny/lora"
check_rc "a stack of members for different bases exits 1" 1
check_has "and names both members and bases" "member 1 'c@1' for 'adapterctl/base-tiny', member 2 '$PWD/fixtures/adapters/hf-tiny/lora' for 'stas/tiny-random-llama-2'" "$err"
check "no pack is written for it" "$BEFORE" "$(py packs "$S")"
check "no row is written for it" "$ROWS" "$(py sql "$S/catalog.db" "SELECT count(*) FROM adapters")"

# ---- rm of the stacks lets gc take the packs ---------------------------------

st rm mix2
st rm mix
check_rc "rm of a stack exits 0" 0
check "its member rows go with it" "0" "$(py sql "$S/catalog.db" "SELECT count(*) FROM stack_members")"
st --json gc
check "gc then takes the members' packs (a, b, the directory's)" "3" "$(py get "$TMP/out" packs_removed)"
check "c's pack stays" "$PC" "$(py packs "$S")"
st verify
check_rc "verify after gc exits 0" 0

# ---- show prints any entry's lineage ----------------------------------------

LINEAGE='{"method": "svd", "inputs": [{"ref": "c@1", "pack": null, "weight": 0.5}], "options": {"rank": 4, "density": null, "seed": 7}, "exact": false, "error": {"overall": 0.25, "modules": {"m.q": 0.5, "m.v": 0.125}}, "note": "by hand"}'
py sql "$S/catalog.db" "UPDATE adapters SET lineage = '$LINEAGE' WHERE name = 'c'" >/dev/null
st show c
check_rc "show of an entry with a lineage exits 0" 0
check_has "show: the lineage block" "lineage
  method      svd
  inputs      1. c@1, weight 0.5
  options     rank=4 seed=7
  exact       no
  error       relative 0.25 overall; largest 0.5 in 'm.q' (2 modules)
  note        by hand" "$out"
st --json show c
check "show --json: lineage, not a string" "$(printf '%s' "$LINEAGE" | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))')" \
    "$(py get "$TMP/out" lineage)"
st verify
check_rc "verify accepts an entry with a lineage" 0

echo "test_stack.sh: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
