#!/usr/bin/env bash
# test_store.sh: end-to-end tests of the store commands (init, add, list,
# show, rm, tag, export, verify, gc, stats): issue 3's acceptance 1 (add then
# export gives identical tensors for every fixture; show --json reports the
# right facts), 6 (a flipped byte is reported by verify and export), the
# catalogue operations, hostile names and paths, a store from a newer schema,
# and where the default store lives.
#
# Every expectation is computed here from the fixture files (a small python3
# reader of the safetensors format and adapter_config.json) or from the store
# directory itself (pack files and their sizes), never from another run of
# adapterctl. Every store is a fresh directory under mktemp, given with
# --store, except in the checks of ADAPTERCTL_STORE / XDG_DATA_HOME / HOME.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures
TMP=$(mktemp -d)
# The interpreter itself, not a version manager's shim: ~100 python runs here.
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0

# ---- helpers ---------------------------------------------------------------

PYSCRIPT=$TMP/st.py
. tests/cli/lib/common.sh

cat >"$TMP/st.py" <<'PYEOF'
import hashlib, json, os, re, sqlite3, struct, sys

SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
PREFIX = "base_model.model."

def safetensors(path):
    """{name: (dtype, shape, bytes)} and the metadata, read by the format's rules:
    8-byte little-endian header length, JSON header, data_offsets from the data start."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n])
    meta = h.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, e in h.items():
        a, b = e["data_offsets"]
        out[k] = (e["dtype"], e["shape"], data[base + a:base + b])
    return out, meta

def modules(tensors, kind):
    """The adapted modules' names, from the tensor keys (DESIGN.md 3)."""
    mark = {"lora": r"\.(lora_A\.weight|lora_embedding_A)", "road": r"\.road_theta",
            "bottleneck": r"\.adapter_down\.weight", "mos": r"\.mos_index_A"}[kind]
    names = set()
    for k in tensors:
        m = re.fullmatch(re.escape(PREFIX) + r"(.*)" + mark, k)
        if m:
            names.add(m.group(1))
    return sorted(names)

def pack_path(store, digest):
    return os.path.join(store, "objects", digest[:2], digest)

def pack_files(store):
    """Pack files under objects/<2 hex>/<64 hex> (temporary files excluded)."""
    out = []
    top = os.path.join(store, "objects")
    for d in sorted(os.listdir(top)):
        if re.fullmatch(r"[0-9a-f]{2}", d):
            for f in sorted(os.listdir(os.path.join(top, d))):
                if re.fullmatch(r"[0-9a-f]{64}", f) and f.startswith(d):
                    out.append(f)
    return out

def all_files(store):
    out = []
    for root, _, files in os.walk(os.path.join(store, "objects")):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)

def load(path):
    with open(path) as f:
        return json.load(f)

def cmd_export(src, exp):
    """An exported directory against the one that was added."""
    a, _ = safetensors(os.path.join(src, "adapter_model.safetensors"))
    b, meta = safetensors(os.path.join(exp, "adapter_model.safetensors"))
    if sorted(a) != sorted(b):
        print("tensor names differ:", sorted(set(a) ^ set(b))[:5])
    for k in a:
        if k in b and a[k] != b[k]:
            print("tensor %s differs: %s %s vs %s %s" % (k, a[k][0], a[k][1], b[k][0], b[k][1]))
    if meta != {"format": "pt"}:
        print("metadata", meta)
    ca = load(os.path.join(src, "adapter_config.json"))
    cb = load(os.path.join(exp, "adapter_config.json"))
    if ca != cb:
        print("configs differ in", sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)))
    extra = sorted(set(os.listdir(exp)) - {"adapter_config.json", "adapter_model.safetensors"})
    if extra:
        print("unexpected files", extra)

def cmd_entry(doc, src, store, name, version, tags, desc, t0, t1):
    """An entry object against the fixture directory it was added from."""
    e = load(doc)
    if isinstance(e, list):
        print("expected one object, got a list")
        return
    keys = ["name", "version", "kind", "base_model", "rank", "variant", "group_size",
            "target_modules", "config", "raw_bytes", "stored_bytes", "pack", "source",
            "description", "created", "created_unix", "lineage", "tags"]
    if list(e) != keys:
        print("keys", list(e))
    cfg = load(os.path.join(src, "adapter_config.json"))
    ts, _ = safetensors(os.path.join(src, "adapter_model.safetensors"))
    kind = cfg["peft_type"].lower()
    want = {
        "name": name, "version": int(version), "kind": kind,
        "base_model": cfg.get("base_model_name_or_path"),
        "rank": {"lora": cfg.get("r"), "mos": cfg.get("r"), "road": 0,
                 "bottleneck": cfg.get("bottleneck_size")}[kind],
        "variant": cfg.get("variant", "road_1") if kind == "road" else None,
        "group_size": cfg.get("group_size", 64) if kind == "road" else 0,
        "target_modules": modules(ts, kind),
        "config": cfg,
        "raw_bytes": sum(len(t[2]) for t in ts.values()),
        "source": os.path.realpath(src),
        "description": desc or None,
        "lineage": None,
        "tags": json.loads(tags),
    }
    for k, v in want.items():
        got = e.get(k)
        if k == "target_modules" and isinstance(got, list):
            got = sorted(got)
        if got != v:
            print("%s: got %r, want %r" % (k, got, v) if k != "config" else "config differs")
    p = pack_path(store, e.get("pack") or "x")
    if not re.fullmatch(r"[0-9a-f]{64}", e.get("pack") or ""):
        print("pack", e.get("pack"))
    elif not os.path.isfile(p):
        print("pack file absent:", p)
    else:
        if e["stored_bytes"] != os.path.getsize(p):
            print("stored_bytes", e["stored_bytes"], "pack file size", os.path.getsize(p))
        with open(p, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != e["pack"]:
                print("the pack file's SHA-256 is not its name")
    if not (int(t0) <= e.get("created_unix", 0) <= int(t1)):
        print("created_unix", e.get("created_unix"), "not in", t0, t1)
    import time
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.get("created_unix", 0)))
    if e.get("created") != iso:
        print("created", e.get("created"), "want", iso)

def cmd_fixture(added, shown, exp, src, *rest):
    """cmd_entry on add's and show's output, cmd_export on the export; each
    problem line says which."""
    import contextlib, io
    for what, fn, args in (("add --json", cmd_entry, (added, src) + rest),
                           ("show --json", cmd_entry, (shown, src) + rest),
                           ("export", cmd_export, (src, exp))):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            fn(*args)
        for line in buf.getvalue().splitlines():
            print(what + ": " + line)

def cmd_refs(doc):
    """name@version of each entry of a list --json array, one line each."""
    for e in load(doc):
        print("%s@%d" % (e["name"], e["version"]))

def cmd_get(doc, *path):
    v = load(doc)
    for p in path:
        v = v[int(p)] if isinstance(v, list) else v[p]
    print(json.dumps(v) if isinstance(v, (dict, list)) or v is None else v)

def cmd_npacks(store):
    print(len(pack_files(store)))

def cmd_nfiles(store):
    print(len(all_files(store)))

def cmd_stats(doc, listdoc, store):
    """stats --json against the catalogue's rows (list --all-versions --json) and
    the pack files on disk."""
    s, rows = load(doc), load(listdoc)
    packs = {}
    for e in rows:
        packs[e["pack"]] = e["raw_bytes"]
    want = {
        "adapters": len({e["name"] for e in rows}),
        "versions": len(rows),
        "packs": len(packs),
        "raw_bytes": sum(packs.values()),
        "stored_bytes": sum(os.path.getsize(pack_path(store, p)) for p in packs),
    }
    for k, v in want.items():
        if s.get(k) != v:
            print("%s: got %r, want %r" % (k, s.get(k), v))
    r = want["raw_bytes"] / want["stored_bytes"] if want["stored_bytes"] else None
    if (s.get("ratio") is None) != (r is None) or (r is not None and abs(s["ratio"] - r) > 1e-12):
        print("ratio", s.get("ratio"), "want", r)
    if os.path.realpath(s.get("path", "")) != os.path.realpath(store):
        print("path", s.get("path"))

def cmd_flip(path, where):
    """Flips one byte of a pack: `where` is a fraction of the frames section."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        data = f.read()
        hlen = struct.unpack("<Q", data[16:24])[0]
        start = 24 + hlen
        off = start + int((len(data) - start) * float(where))
        f.seek(off)
        f.write(bytes([data[off] ^ 0x5A]))
    print(off)

def cmd_tree(path):
    """A digest of a directory's names and contents."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(fh.read())
    print(h.hexdigest())

def cmd_user_version(db, n):
    c = sqlite3.connect(db)
    c.execute("PRAGMA user_version = %d" % int(n))
    c.commit()
    c.close()

def cmd_sql(db, stmt):
    c = sqlite3.connect(db)
    c.execute(stmt)
    c.commit()
    c.close()

def cmd_table(doc):
    """list's text table: a header, one row per entry, and every column
    starting at the same place in every line (the header gives the places)."""
    lines = open(doc).read().rstrip("\n").split("\n")
    head = lines[0]
    cols = ["name", "version", "kind", "rank/variant", "base", "size", "tags"]
    if head.split() != cols:
        print("header", head)
        return
    for col in ["kind", "rank/variant", "base", "tags"]:
        p = head.index(col)
        for l in lines[1:]:
            if p > 0 and l[p - 1] != " " or l[p] == " ":
                print("column %s is not aligned in %r" % (col, l))

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PYEOF

# ---- help and usage errors --------------------------------------------------

commands="init add list show rm tag export verify gc stats"
run --help
for c in $commands; do check_has "--help lists $c" "  $c " "$out"; done
for c in $commands; do
    run "$c" --help
    check_rc "$c --help exits 0" 0
    check_has "$c --help prints its usage" "usage: adapterctl $c" "$out"
    run help "$c"
    check_rc "help $c exits 0" 0
done

S=$TMP/usage-store
st add
check_rc "add without PATH exits 2" 2
check_has "add without PATH says so" "missing PATH" "$err"
st add "$FIX/adapters/hf-tiny/lora" --version 0
check_rc "add --version 0 exits 2" 2
st add "$FIX/adapters/hf-tiny/lora" --version 1x
check_rc "add --version 1x exits 2" 2
st add "$FIX/adapters/hf-tiny/lora" --tag novalue
check_rc "add --tag without = exits 2" 2
check_has "add --tag without = names it" "'novalue'" "$err"
st add "$FIX/adapters/hf-tiny/lora" --tag =v
check_rc "add --tag with an empty key exits 2" 2
st list --limit x
check_rc "list --limit x exits 2" 2
st list --limit 0
check_rc "list --limit 0 exits 2" 2
st list --offset -1
check_rc "list --offset -1 exits 2" 2
st list --kind frob
check_rc "list --kind frob exits 2" 2
check_has "list --kind frob lists the kinds" "lora, road, bottleneck, mos" "$err"
st list extra
check_rc "list with an argument exits 2" 2
st show
check_rc "show without NAME exits 2" 2
st show 'bad name!'
check_rc "show of an invalid name exits 2" 2
st show a@0
check_rc "show NAME@0 exits 2" 2
st export a
check_rc "export without DIR exits 2" 2
st tag a
check_rc "tag without K=V or --unset exits 2" 2
st tag a x
check_rc "tag with a K=V lacking = exits 2" 2
st tag a --unset k=v
check_rc "tag --unset K=V exits 2" 2
st verify extra
check_rc "verify with an argument exits 2" 2
st gc extra
check_rc "gc with an argument exits 2" 2
st stats extra
check_rc "stats with an argument exits 2" 2
st init extra
check_rc "init with an argument exits 2" 2

# ---- init, empty store ------------------------------------------------------

S=$TMP/s-init
st init
check_rc "init exits 0" 0
check_has "init names the store" "$S" "$out"
if [ -f "$S/catalog.db" ] && [ -d "$S/objects" ]; then pass "init creates catalog.db and objects/"
else fail "init creates catalog.db and objects/" "$(ls -la "$S" 2>&1)"; fi
st init
check_rc "init of an existing store exits 0" 0
st --json init
check_rc "init --json exits 0" 0
check "init --json path" "$S" "$(py get "$TMP/out" path)"
st --json list
check_rc "list --json of an empty store exits 0" 0
check "list --json of an empty store is []" "[]" "$(py get "$TMP/out")"
st list
check_rc "list of an empty store exits 0" 0
check "list of an empty store prints no table" "" "$out"
st verify
check_rc "verify of an empty store exits 0" 0
check_has "verify of an empty store says ok" "ok: 0 adapters" "$out"
st --json stats
check_rc "stats --json of an empty store exits 0" 0
check "stats of an empty store: ratio null" "null" "$(py get "$TMP/out" ratio)"
check "stats of an empty store: 0 versions" "0" "$(py get "$TMP/out" versions)"
# Every store command creates the store on first use.
S=$TMP/s-auto
st stats
check_rc "stats on a missing store exits 0" 0
if [ -f "$S/catalog.db" ]; then pass "stats creates the store on first use"
else fail "stats creates the store on first use" "no $S/catalog.db"; fi

# ---- acceptance 1: add then export, every fixture ---------------------------

S=$TMP/s-fixtures
mkdir -p "$TMP/exp"
fixtures=()
for d in "$FIX"/adapters/*/*/; do
    [ -f "$d/adapter_config.json" ] && fixtures+=("${d%/}")
done
if [ ${#fixtures[@]} -ge 10 ]; then pass "fixtures/adapters holds adapters (${#fixtures[@]})"
else fail "fixtures/adapters holds adapters" "found ${#fixtures[@]}"; fi

kinds_seen=""
for d in "${fixtures[@]}"; do
    fx=$(basename "$d")
    grp=$(basename "$(dirname "$d")")
    name="$grp.$fx"
    kinds_seen="$kinds_seen $(grep -o '"peft_type": *"[A-Z]*"' "$d/adapter_config.json")"
    t0=$(date +%s)
    st add "$d" --name "$name" --tag "fixture=$fx" --tag "group=$grp" --desc "fixture $grp/$fx" --json
    t1=$(date +%s)
    check_rc "add $grp/$fx exits 0" 0
    [ "$rc" -eq 0 ] || continue
    cp "$TMP/out" "$TMP/added.json"
    st show "$name" --json
    check_rc "show $name exits 0" 0
    cp "$TMP/out" "$TMP/shown.json"
    check "show --json and add --json agree for $grp/$fx" "$(cat "$TMP/added.json")" "$out"
    st export "$name" "$TMP/exp/$name"
    check_rc "export $grp/$fx exits 0" 0
    # One python run for the three checks (python's start-up is most of this test's time).
    check_py "$grp/$fx: add --json and show --json give kind, rank/variant, modules, sizes, tags; export gives identical tensors and an equal config" \
        fixture "$TMP/added.json" "$TMP/shown.json" "$TMP/exp/$name" "$d" "$S" "$name" 1 \
        "{\"fixture\": \"$fx\", \"group\": \"$grp\"}" "fixture $grp/$fx" "$t0" "$t1"
done
for k in LORA ROAD BOTTLENECK MOS; do check_has "a $k fixture was added" "\"$k\"" "$kinds_seen"; done

st verify
check_rc "verify after adding every fixture exits 0" 0
check_has "verify counts the fixtures" "ok: ${#fixtures[@]} adapters" "$out"
st --json verify
check_rc "verify --json exits 0" 0
check "verify --json is clean" '{"problems": [], "ok": true}' \
    "$("$PY" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$TMP/out")"

# show in text: key/value lines, module count, sizes with the ratio, tags.
d=$FIX/adapters/hf-tiny/lora-patterns
st show hf-tiny.lora-patterns
check_rc "show (text) exits 0" 0
check_has "show (text) names the adapter" "hf-tiny.lora-patterns" "$out"
check_has "show (text) gives the module count" \
    "$(printf '%-14s%s' modules 14)" "$out"
check_has "show (text) gives the ratio" "ratio " "$out"
check_has "show (text) lists the tags" "fixture=lora-patterns" "$out"
check_has "show (text) lists the second tag" "group=hf-tiny" "$out"
st show hf-tiny.road-1
check_has "show (text) of RoAd gives the variant" "$(printf '%-14s%s' variant road_1)" "$out"

# ---- versions, names, duplicates --------------------------------------------

S=$TMP/s-versions
L=$FIX/adapters/hf-tiny/lora
st --json add "$L"
check_rc "add without --name exits 0" 0
check "the name defaults to the directory's name" "lora@1" \
    "$(py get "$TMP/out" name)@$(py get "$TMP/out" version)"
st add "$L" --name a
check_rc "add a exits 0" 0
check_has "add (text) says what it added" "added a@1" "$out"
st --json add "$L" --name a
check "versions count up" "2" "$(py get "$TMP/out" version)"
st --json add "$L" --name a --version 7
check "--version is kept" "7" "$(py get "$TMP/out" version)"
st --json add "$L" --name a
check "the next version follows the highest" "8" "$(py get "$TMP/out" version)"
st add "$L" --name a --version 7
check_rc "a duplicate name@version exits 1" 1
check_has "a duplicate is named as name@version" "a@7" "$err"
check_has "a duplicate is reported as adapterctl" "adapterctl: " "$err"
st --json show a
check "NAME alone is the newest version" "8" "$(py get "$TMP/out" version)"
st --json show a@2
check "NAME@V is that version" "2" "$(py get "$TMP/out" version)"
st show a@5
check_rc "show of an absent version exits 1" 1
check_has "show of an absent version names it" "a@5" "$err"
st show nope
check_rc "show of an absent name exits 1" 1
check_has "show of an absent name names it" "nope" "$err"
check "identical adds share one pack" "1" "$(py npacks "$S")"
st --json list --all-versions
check "list --all-versions lists every version" "a@1 a@2 a@7 a@8 lora@1" \
    "$(py refs "$TMP/out" | tr '\n' ' ' | sed 's/ $//')"
st --json list
check "list lists the newest version of each name" "a@8 lora@1" \
    "$(py refs "$TMP/out" | tr '\n' ' ' | sed 's/ $//')"

# NAME@V is never reused: after rm of the newest, the next add counts on.
st rm a@8
check_rc "rm a@8 exits 0" 0
st --json add "$L" --name a
check "a removed version is not given again" "9" "$(py get "$TMP/out" version)"
st --json add "$L" --name a --version 8
check "a removed version can be given explicitly" "8" "$(py get "$TMP/out" version)"

# A directory whose name is not a valid adapter name needs --name.
mkdir -p "$TMP/bad name"
cp "$L"/* "$TMP/bad name/"
st add "$TMP/bad name"
check_rc "add of a directory with an invalid name and no --name exits 2" 2
check_has "the message asks for --name" "--name" "$err"

# ---- list filters, tag, rm, gc, stats ---------------------------------------

S=$TMP/s-list
A=$FIX/adapters
st add "$A/hf-tiny/lora" --name l1 --tag task=math --tag user=alice
st add "$A/base-tiny/lora-dora" --name l2 --tag task=code --tag user=alice
st add "$A/hf-tiny/road-1" --name r1 --tag task=math --tag user=bob
st add "$A/hf-tiny/bottleneck-series" --name b1 --tag task=math --base custom/base
st add "$A/hf-tiny/mos" --name m1 --tag user=alice
check_rc "five adds into one store exit 0" 0

# list_is NAME WANT ARGS...: the names@versions list --json gives.
list_is() {
    local name=$1 want=$2
    shift 2
    st --json list "$@"
    if [ "$rc" -ne 0 ]; then fail "$name" "list $* exited $rc: ${err:0:300}"; return; fi
    check "$name" "$want" "$(py refs "$TMP/out" | tr '\n' ' ' | sed 's/ $//')"
}
list_is "list orders by name" "b1@1 l1@1 l2@1 m1@1 r1@1"
list_is "list --kind lora" "l1@1 l2@1" --kind lora
list_is "list --kind road" "r1@1" --kind road
list_is "list --kind bottleneck" "b1@1" --kind bottleneck
list_is "list --kind mos" "m1@1" --kind mos
list_is "list --base custom/base" "b1@1" --base custom/base
list_is "list --base of the fixtures' base" "l1@1 m1@1 r1@1" --base stas/tiny-random-llama-2
list_is "list --tag task=math" "b1@1 l1@1 r1@1" --tag task=math
list_is "list: several --tag are ANDed" "l1@1" --tag task=math --tag user=alice
list_is "list: --tag and --kind combine" "l1@1 l2@1" --tag user=alice --kind lora
list_is "list --tag with no match" "" --tag task=none
list_is "list --limit 2" "b1@1 l1@1" --limit 2
list_is "list --offset 2 --limit 2" "l2@1 m1@1" --offset 2 --limit 2
list_is "list --offset past the end" "" --offset 9
list_is "list --json after the command" "b1@1 l1@1 l2@1 m1@1 r1@1" --json

st list
check_rc "list (text) exits 0" 0
check "list (text): a header and five rows" "6" "$(printf '%s\n' "$out" | wc -l | tr -d ' ')"
check_py "list (text) is an aligned table" table "$TMP/out"
check_has "list (text) shows a RoAd variant" "road_1" "$out"
check_has "list (text) shows tags" "task=math,user=alice" "$out"

st add "$A/hf-tiny/lora" --name l1 --tag task=math
list_is "a new version replaces the old in list" "b1@1 l1@2 l2@1 m1@1 r1@1"
list_is "--all-versions keeps both" "b1@1 l1@1 l1@2 l2@1 m1@1 r1@1" --all-versions
list_is "filters see the newest version's tags only" "" --tag user=alice --kind lora --tag task=math

st tag l2 env=prod task=review --unset user
check_rc "tag exits 0" 0
check_has "tag prints the tags" "env=prod,task=review" "$out"
st --json show l2
check "tag sets, replaces and unsets" '{"env": "prod", "task": "review"}' \
    "$(py get "$TMP/out" tags)"
st tag l2 --unset absent
check_rc "unsetting an absent key exits 0" 0
st tag l1@1 old=yes
st --json show l1@1
check "tag NAME@V tags that version" '{"old": "yes", "task": "math", "user": "alice"}' \
    "$(py get "$TMP/out" tags)"
st --json show l1
check "tag NAME@V leaves the newest alone" '{"task": "math"}' "$(py get "$TMP/out" tags)"
st tag nope k=v
check_rc "tag of an absent adapter exits 1" 1
check_has "tag of an absent adapter names it" "nope" "$err"

st --json list --all-versions
cp "$TMP/out" "$TMP/rows.json"
st --json stats
check_rc "stats --json exits 0" 0
check_py "stats --json: counts, bytes and ratio from the rows and pack files" stats \
    "$TMP/out" "$TMP/rows.json" "$S"
ratio=$("$PY" -c 'import json,sys; print("%.2fx" % json.load(open(sys.argv[1]))["ratio"])' "$TMP/out")
st stats
check_rc "stats (text) exits 0" 0
check_has "stats (text) gives the ratio" "$(printf '%-14s%s' ratio "$ratio")" "$out"
check_has "stats (text) gives the versions" "$(printf '%-14s%s' versions 6)" "$out"

npacks=$(py npacks "$S")
check "five distinct adapters, five packs" "5" "$npacks"
st rm r1
check_rc "rm exits 0" 0
check "rm says what it removed" "removed r1@1" "$out"
list_is "rm removes from list" "b1@1 l1@2 l2@1 m1@1"
st show r1
check_rc "show after rm exits 1" 1
st rm r1
check_rc "rm of an absent adapter exits 1" 1
check "rm leaves the pack for gc" "$npacks" "$(py npacks "$S")"
st rm l1
check "rm NAME removes the newest version" "removed l1@2" "$out"
list_is "the older version remains" "b1@1 l1@1 l2@1 m1@1"
st --json gc
check_rc "gc exits 0" 0
check "gc removes the one unreferenced pack" "1" "$(py get "$TMP/out" packs_removed)"
check "gc removes the pack file" "$((npacks - 1))" "$(py npacks "$S")"
st gc
check_rc "gc (text) exits 0" 0
check_has "a second gc removes nothing" "removed 0 packs" "$out"
st --json list --all-versions
cp "$TMP/out" "$TMP/rows.json"
st --json stats
check_py "stats after rm and gc" stats "$TMP/out" "$TMP/rows.json" "$S"
st verify
check_rc "verify after rm and gc exits 0" 0

# ---- acceptance 6: a flipped byte in a pack ---------------------------------

S=$TMP/s-corrupt
st add "$A/hf-tiny/lora-patterns" --name victim
st add "$A/hf-tiny/lora" --name bystander
st --json show victim
pack=$(py get "$TMP/out" pack)
py flip "$S/objects/${pack:0:2}/$pack" 0.5 >/dev/null
st verify
check_rc "verify of a flipped byte exits 1" 1
check_has "verify names the corrupt pack" "$pack" "$out$err"
check_has "verify names the adapter" "victim" "$out$err"
check_has "verify names a tensor" "lora_" "$out$err"
check_lacks "verify does not blame the intact adapter" "bystander" "$out"
st --json verify
check_rc "verify --json of a flipped byte exits 1" 1
check "verify --json says not ok" "False" "$(py get "$TMP/out" ok)"
st export victim "$TMP/victim-out"
check_rc "export of the corrupt adapter exits 1" 1
check_has "export names the corrupt pack or adapter" "victim" "$err$(printf '%s' "$err" | grep -o "$pack")"
check_has "export reports as adapterctl" "adapterctl: " "$err"
if [ -e "$TMP/victim-out" ]; then fail "export of a corrupt adapter leaves no directory" "$(ls -la "$TMP/victim-out")"
else pass "export of a corrupt adapter leaves no directory"; fi
if [ -z "$(ls -A "$TMP" | grep victim-out)" ]; then pass "export leaves no temporary directory beside DIR"
else fail "export leaves no temporary directory beside DIR" "$(ls -A "$TMP")"; fi
st export bystander "$TMP/bystander-out"
check_rc "the intact adapter still exports" 0

# ---- hostile names and paths ------------------------------------------------

S=$TMP/s-hostile
st add "$L" --name base
st --json stats
before=$(cat "$TMP/out")
files_before=$(py nfiles "$S")
for n in "../x" "a/b" "" "-x" ".hidden" "$(printf 'a%.0s' {1..129})"; do
    st add "$L" --name "$n"
    if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then pass "add --name '${n:0:20}' is refused"
    else fail "add --name '${n:0:20}' is refused" "exit $rc"; fi
    check_has "add --name '${n:0:20}' says why" "adapterctl: " "$err"
done
st --json stats
check "refused names add nothing" "$before" "$(cat "$TMP/out")"
if [ -e "$TMP/x" ] || [ -e "$S/../x" ]; then fail "--name ../x writes nothing outside" "found x"
else pass "--name ../x writes nothing outside"; fi

mkdir -p "$TMP/full"
echo keep >"$TMP/full/file"
tree=$(py tree "$TMP/full")
st export base "$TMP/full"
check_rc "export to a non-empty directory exits 1" 1
check_has "export to a non-empty directory names it" "$TMP/full" "$err"
check "export to a non-empty directory leaves it untouched" "$tree" "$(py tree "$TMP/full")"
mkdir -p "$TMP/empty"
st export base "$TMP/empty"
check_rc "export to an empty directory exits 0" 0
echo x >"$TMP/a-file"
st export base "$TMP/a-file"
check_rc "export onto a file exits 1" 1
st export base "$TMP/no/such/parent/dir"
check_rc "export under a missing parent exits 1" 1

# Broken adapters: a corrupt safetensors under a valid config; a pickle.
mkdir -p "$TMP/broken-st" "$TMP/pickle"
cp "$L/adapter_config.json" "$TMP/broken-st/"
cp "$FIX/broken/overlap.safetensors" "$TMP/broken-st/adapter_model.safetensors"
cp "$L/adapter_config.json" "$TMP/pickle/"
printf '\x80\x02}q\x00.' >"$TMP/pickle/adapter_model.bin"
mkdir -p "$TMP/mismatch"
cp "$A/hf-tiny/road-1/adapter_config.json" "$TMP/mismatch/"
cp "$L/adapter_model.safetensors" "$TMP/mismatch/"
for b in broken-st pickle mismatch no-such-dir; do
    st add "$TMP/$b" --name "$b"
    check_rc "add of a broken adapter ($b) exits 1" 1
    check_has "add of a broken adapter ($b) names it" "$b" "$err"
    st --json stats
    check "add of a broken adapter ($b) leaves the store unchanged" "$before" "$(cat "$TMP/out")"
    check "add of a broken adapter ($b) writes no object" "$files_before" "$(py nfiles "$S")"
done
st add "$TMP/pickle" --name pickle
check_has "add of a pickle says why" "pickle" "$(tr 'A-Z' 'a-z' <<<"$err")"

# Free text: C0 and C1 control characters are refused (C1 CSI moves terminals too).
st add "$L" --name c1 --desc "$(printf 'a\xc2\x9b2Jb')"
if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then pass "a C1 control in --desc is refused"
else fail "a C1 control in --desc is refused" "exit $rc"; fi
check_has "a C1 control in --desc is named" "control character" "$err"
st list --kind bogus
check_rc "list --kind bogus exits 2" 2
check_has "list --kind bogus names the kinds" "unknown kind 'bogus' (lora, road, bottleneck, mos, stack)" "$err"

# A crafted catalogue with a kind this build does not know: list and show
# print "?" (never "(null)" or a crash), verify names the row.
S=$TMP/s-crafted
st add "$L" --name k
py sql "$S/catalog.db" "UPDATE adapters SET kind = 'zzz' WHERE name = 'k'"
st list
check_rc "list with an unknown kind exits 0" 0
check_has "list shows an unknown kind as ?" "k           1  ?     4" "$out"
check_lacks "list never prints (null)" "(null)" "$out"
st show k
check_rc "show with an unknown kind exits 0" 0
check_has "show shows an unknown kind as ?" "$(printf '%-14s?' kind)" "$out"
check_lacks "show never prints (null)" "(null)" "$out"
st verify
check_rc "verify with an unknown kind exits 1" 1
check_has "verify names the row and the kind" "'k@1': unknown kind 'zzz'" "$out$err"

# ---- a store from a newer adapterctl ----------------------------------------

S=$TMP/s-newer
st init
py user_version "$S/catalog.db" 9999
for c in list stats verify init; do
    st "$c"
    check_rc "$c on a store with a newer schema exits 1" 1
    check_has "$c on a store with a newer schema says so" "newer" "$err"
done
st add "$L" --name x
check_rc "add to a store with a newer schema exits 1" 1
check "nothing is written to a store with a newer schema" "0" "$(py nfiles "$S")"

# ---- where the default store lives -------------------------------------------

run_env() {
    env "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    out=$(cat "$TMP/out")
    err=$(cat "$TMP/err")
}
run_env ADAPTERCTL_STORE="$TMP/env-store" XDG_DATA_HOME="$TMP/xdg-unused" \
    HOME="$TMP/home-unused" "$BIN" --json stats
check_rc "ADAPTERCTL_STORE: stats exits 0" 0
check "ADAPTERCTL_STORE names the store" "$TMP/env-store" "$(py get "$TMP/out" path)"
if [ -f "$TMP/env-store/catalog.db" ] && [ ! -e "$TMP/xdg-unused" ]; then
    pass "ADAPTERCTL_STORE wins over XDG_DATA_HOME"
else fail "ADAPTERCTL_STORE wins over XDG_DATA_HOME" "$(ls "$TMP")"; fi
run_env -u ADAPTERCTL_STORE XDG_DATA_HOME="$TMP/xdg" HOME="$TMP/home-unused" "$BIN" init
check_rc "XDG_DATA_HOME: init exits 0" 0
if [ -f "$TMP/xdg/adapterctl/catalog.db" ] && [ ! -e "$TMP/home-unused" ]; then
    pass "XDG_DATA_HOME/adapterctl is the store"
else fail "XDG_DATA_HOME/adapterctl is the store" "$(ls -R "$TMP/xdg" 2>&1 | head)"; fi
run_env -u ADAPTERCTL_STORE -u XDG_DATA_HOME HOME="$TMP/home" "$BIN" init
check_rc "HOME: init exits 0" 0
if [ -f "$TMP/home/.local/share/adapterctl/catalog.db" ]; then
    pass "~/.local/share/adapterctl is the last resort"
else fail "~/.local/share/adapterctl is the last resort" "$(ls -R "$TMP/home" 2>&1 | head)"; fi
run_env ADAPTERCTL_STORE="$TMP/env-store2" "$BIN" --store "$TMP/flag-store" init
if [ -f "$TMP/flag-store/catalog.db" ] && [ ! -e "$TMP/env-store2" ]; then
    pass "--store wins over ADAPTERCTL_STORE"
else fail "--store wins over ADAPTERCTL_STORE" "$(ls "$TMP")"; fi
run_env ADAPTERCTL_STORE="$TMP/env-store3" "$BIN" list --store "$TMP/flag-store2"
if [ -f "$TMP/flag-store2/catalog.db" ] && [ ! -e "$TMP/env-store3" ]; then
    pass "--store after the command name works too"
else fail "--store after the command name works too" "$(ls "$TMP")"; fi

echo "test_store.sh: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
