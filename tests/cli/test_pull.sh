#!/usr/bin/env bash
# test_pull.sh: end-to-end tests of `pull` and `publish` against real servers
# on loopback (issue 4): nginx (tests/nginx.sh) serving PEFT directories, a
# hub-like tree and a published store, and the fault-injecting server
# (tests/faultserver.py).
#
#  1. Every fixture pulled as a PEFT URL and from a published store, and
#     every kind (the hf-tiny group) as hf://OWNER/REPO (HF_ENDPOINT at
#     nginx), gives the same adapter as a local add: the same entry facts and
#     pack digest, and an export with the fixture's tensors and config.
#  2. A download cut halfway and pulled again transfers only the remainder
#     (the fault server counts the bytes it served).
#  3. Every fault (drop, short, long, wrong bytes, 500/429 then ok, redirect
#     loop, redirect to ftp:// or file://, trickle, 404) ends in a clear error
#     and exit 1, or in success after retries where retrying is right; after
#     every failure the store is as it was and verify is clean.
#  4. publish on one store, pull into another: every kind round-trips; a
#     second pull downloads no pack; gc removes a failed pull's partial file.
#  And: hf:// revisions and X-Linked-Etag, --sha256, --max-size, ETag
#  revalidation, file:// URLs, hostile URLs and indexes, the progress bar.
#
# Expectations come from the fixture files and the servers' own logs (nginx's
# access log, the fault server's byte counts), read with python3, never from
# another run of adapterctl. Every server started here is stopped on exit.
# No address but 127.0.0.1 is ever contacted: HF_ENDPOINT always points at a
# loopback server (or at a closed loopback port).
#
# When nginx cannot start, the nginx parts print a SKIP line; the file:// and
# fault-server parts still run.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
ROOT=$PWD
FIX=$PWD/fixtures
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
. tests/nginx.sh
FAULT_PID=
SWAP_PID=
cleanup() {
    nginx_stop
    if [ -n "$FAULT_PID" ]; then
        kill "$FAULT_PID" 2>/dev/null
        wait "$FAULT_PID" 2>/dev/null
    fi
    if [ -n "$SWAP_PID" ]; then
        kill "$SWAP_PID" 2>/dev/null
        wait "$SWAP_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
npass=0 nfail=0

# Loopback only, short backoffs: never the public hub, never a proxy.
export HF_ENDPOINT=http://127.0.0.1:9
export ADAPTERCTL_FETCH_BACKOFF_MS=50
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export no_proxy='*' NO_PROXY='*'

# ---- helpers ---------------------------------------------------------------

PYSCRIPT=$TMP/pl.py
. tests/cli/lib/common.sh

# What must not change when a pull fails: the catalogue (stats: names,
# versions, packs, sizes), the pack files. Partial downloads
# (<store>/partial/) may remain.
snapshot() {
    "$BIN" --store "$1" --json stats 2>&1
    (cd "$1" && find objects -path objects/tmp -prune -o -type f -print 2>/dev/null | sort)
}
# expect_failed NAME: the last run failed with exit 1 and a message, and the
# store $S is as $TMP/before says, and verify is clean.
expect_failed() {
    check_rc "$1: exit 1" 1
    case "$err" in
    "adapterctl: "?*) pass "$1: a message" ;;
    *) fail "$1: a message" "stderr: ${err:0:400}" ;;
    esac
    expect_unchanged "$1"
}
# expect_unchanged NAME: the store $S is as $TMP/before says; verify is clean.
expect_unchanged() {
    local after
    after=$(snapshot "$S")
    if [ "$after" == "$(cat "$TMP/before")" ]; then pass "$1: the store is unchanged"
    else fail "$1: the store is unchanged" "before: $(head -c 600 "$TMP/before")" "after: ${after:0:600}"; fi
    "$BIN" --store "$S" verify >/dev/null 2>"$TMP/verify.err"
    if [ $? -eq 0 ]; then pass "$1: verify is clean"
    else fail "$1: verify is clean" "$(head -c 400 "$TMP/verify.err")"; fi
}
before() { snapshot "$S" >"$TMP/before"; }

cat >"$TMP/pl.py" <<'PYEOF'
import hashlib, json, os, re, struct, sys

def load(path):
    with open(path) as f:
        return json.load(f)

sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
from st_reader import tensors

def cmd_sha(path):
    with open(path, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest())

def cmd_size(*paths):
    print(sum(os.path.getsize(p) for p in paths))

def cmd_get(doc, *path):
    v = load(doc)
    for p in path:
        v = v[int(p)] if isinstance(v, list) else v[p]
    print(json.dumps(v) if isinstance(v, (dict, list)) or v is None else
          str(v).lower() if isinstance(v, bool) else v)

def same_adapter(src, exp):
    """An exported directory against the fixture it came from."""
    out = []
    a = tensors(os.path.join(src, "adapter_model.safetensors"))
    b = tensors(os.path.join(exp, "adapter_model.safetensors"))
    if sorted(a) != sorted(b):
        out.append("tensor names differ: %s" % sorted(set(a) ^ set(b))[:4])
    out += ["tensor %s differs" % k for k in a if k in b and a[k] != b[k]][:4]
    if load(os.path.join(src, "adapter_config.json")) != load(os.path.join(exp, "adapter_config.json")):
        out.append("configs differ")
    return out

def cmd_exports(mapfile, expdir):
    """mapfile: 'NAME FIXTURE_DIR' lines; expdir/NAME the export of NAME."""
    for line in open(mapfile):
        name, src = line.split()
        exp = os.path.join(expdir, name)
        if not os.path.isdir(exp):
            print("%s: no export" % name)
            continue
        for p in same_adapter(src, exp):
            print("%s: %s" % (name, p))

FIELDS = ["kind", "rank", "variant", "group_size", "config", "raw_bytes", "pack"]

def cmd_entries(localdoc, pulleddoc, mapfile):
    """Every NAME of mapfile in both list --json documents, with equal facts."""
    local = {e["name"]: e for e in load(localdoc)}
    pulled = {e["name"]: e for e in load(pulleddoc)}
    for line in open(mapfile):
        name = line.split()[0]
        if name not in local or name not in pulled:
            print("%s: missing (local %s, pulled %s)" % (name, name in local, name in pulled))
            continue
        a, b = local[name], pulled[name]
        for k in FIELDS:
            if a.get(k) != b.get(k):
                print("%s: %s differs: %r vs %r" % (name, k, a.get(k), b.get(k)) if k != "config"
                      else "%s: config differs" % name)
        if sorted(a["target_modules"]) != sorted(b["target_modules"]):
            print("%s: modules differ" % name)

def cmd_result(doc, name, version, source, sha, transferred, files, unchanged):
    """pull --json against what it must say ('-' skips a field)."""
    r = load(doc)
    keys = ["name", "version", "source", "pack", "sha256", "bytes_transferred",
            "files_transferred", "unchanged"]
    if list(r) != keys:
        print("keys", list(r))
        return
    want = {"name": name, "version": version, "source": source, "sha256": sha,
            "bytes_transferred": transferred, "files_transferred": files,
            "unchanged": unchanged}
    for k, v in want.items():
        if v == "-":
            continue
        got = r[k]
        got = str(got).lower() if isinstance(got, bool) else str(got)
        if got != v:
            print("%s: got %s, want %s" % (k, got, v))
    if not re.fullmatch(r"[0-9a-f]{64}", r["pack"]):
        print("pack", r["pack"])

def cmd_published(pubdir, store):
    """A published tree: index.json parses; every objects/ file is named by
    the SHA-256 of its bytes and is one of the store's packs; no temporary
    files remain."""
    idx = load(os.path.join(pubdir, "index.json"))
    if not isinstance(idx, (dict, list)):
        print("index.json is not an object")
    objs = os.path.join(pubdir, "objects")
    for root, dirs, files in os.walk(objs):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                d = hashlib.sha256(fh.read()).hexdigest()
            if d != f:
                print("objects file %s has SHA-256 %s" % (os.path.relpath(p, pubdir), d))
            elif not os.path.isfile(os.path.join(store, "objects", d[:2], d)):
                print("objects file %s is not a pack of the store" % f)
    text = open(os.path.join(pubdir, "index.json")).read()
    for d in set(re.findall(r"[0-9a-f]{64}", text)):
        if not any(d in fs for _, _, fs in os.walk(objs)):
            print("the index names %s, absent from objects/" % d)
    left = [f for f in os.listdir(pubdir) if f not in ("index.json", "objects")]
    if left:
        print("unexpected files", left)

def cmd_npub(pubdir):
    """The number of distinct packs the index names."""
    print(len(set(re.findall(r"[0-9a-f]{64}", open(os.path.join(pubdir, "index.json")).read()))))

def cmd_retarget(src, dst, old, new):
    """Copies index.json, every string equal to old replaced by new (a pack
    digest pointed elsewhere, whatever the index's schema)."""
    def walk(v):
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return new if v == old else v
    doc = walk(load(src))
    with open(dst, "w") as f:
        json.dump(doc, f)
    if json.dumps(doc) == json.dumps(load(src)):
        print("digest %s not found in the index" % old, file=sys.stderr)

def cmd_served(log, pattern):
    """Requests in nginx's access log whose path matches pattern: count and body bytes."""
    n = b = 0
    for line in open(log):
        parts = line.split()
        if len(parts) >= 4 and re.search(pattern, parts[3]):
            n += 1
            b += int(parts[1])
    print(n, b)

def cmd_ptyrun(outfile, errfile, *argv):
    """Runs argv with stderr on a pseudo-terminal (stdout to outfile) and
    saves what the terminal received in errfile; exits with argv's status."""
    import pty, subprocess
    master, slave = pty.openpty()
    with open(outfile, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    rc = p.wait()
    with open(errfile, "wb") as f:
        f.write(got)
    sys.exit(rc)

def cmd_has_cr(path):
    data = open(path, "rb").read()
    print("yes" if b"\r" in data and b"/s" in data else "no")

def fault_stats(base):
    import urllib.request
    with urllib.request.urlopen(base + "/_stats", timeout=10) as r:
        return json.load(r)

def cmd_fstats(base, path):
    """'requests bytes' the fault server counted for path."""
    s = fault_stats(base)
    print(s["requests"].get(path, 0), s["bytes"].get(path, 0))

def cmd_fsum(base, pattern):
    """Requests the fault server saw on paths matching pattern."""
    print(sum(n for p, n in fault_stats(base)["requests"].items() if re.search(pattern, p)))

def cmd_fget(url):
    """GET url and hang up after the status line: the fault server counts the
    request (using up one fault of a -K path) without our waiting for a
    dropped or trickled body."""
    import http.client, urllib.parse
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request("GET", u.path)
        c.getresponse()
    except Exception:
        pass
    c.close()

def cmd_sidecar(store, ref):
    """What the ETag sidecar beside the partial download of ref (see
    cmd_partial) holds, or "none"."""
    want = open(ref, "rb").read()
    for p in partial_files(store):
        if not p.endswith(".part"):
            continue
        data = open(p, "rb").read()
        if len(data) < len(want) and want.startswith(data):
            try:
                print(open(p[:-5] + ".etag").read().strip())
            except OSError:
                print("none")
            return
    print("none")

def partial_files(store):
    top = os.path.join(store, "partial")
    return [os.path.join(r, f) for r, _, fs in os.walk(top) for f in fs]

def cmd_partial(store, ref):
    """The size of the largest file under store/partial whose bytes begin ref
    (a download of ref cut short); 0 when there is none."""
    want = open(ref, "rb").read()
    best = 0
    for p in partial_files(store):
        data = open(p, "rb").read()
        if len(data) < len(want) and want.startswith(data):
            best = max(best, len(data))
    print(best)

def cmd_trees(srv, mapfile, locfile, *fixtures):
    import shutil
    with open(mapfile, "w") as m, open(locfile, "w") as loc:
        for d in fixtures:
            fx, grp = os.path.basename(d), os.path.basename(os.path.dirname(d))
            name = grp + "." + fx
            m.write("%s %s\n" % (name, d))
            hub = os.path.join(srv, "hfowner", name, "resolve", "main")
            for dst in (os.path.join(srv, "peft", grp, fx), hub):
                os.makedirs(dst)
                for f in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copy(os.path.join(d, f), dst)
            with open(os.path.join(d, "adapter_model.safetensors"), "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            loc.write('location = /hfowner/%s/resolve/main/adapter_model.safetensors '
                      '{ add_header X-Linked-Etag "\\"%s\\""; }\n' % (name, sha))

def cmd_npartial(store):
    print(len(partial_files(store)))

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PYEOF

# ---- the fixtures and the trees the servers serve ---------------------------

fixtures=()
for d in "$FIX"/adapters/*/*/; do
    [ -f "$d/adapter_config.json" ] && fixtures+=("${d%/}")
done
if [ ${#fixtures[@]} -ge 10 ]; then pass "fixtures/adapters holds adapters (${#fixtures[@]})"
else fail "fixtures/adapters holds adapters" "found ${#fixtures[@]}"; fi

# The trees nginx serves: (a) every fixture as a PEFT directory at
# /peft/GROUP/FIXTURE/; (b) the hub: /hfowner/GROUP.FIXTURE/resolve/main/FILE,
# the large file with its SHA-256 in X-Linked-Etag (quoted, as the hub sends
# it; one location block each in locations.conf). $TMP/map: "NAME DIR" per
# fixture, NAME being GROUP.FIXTURE.
SRV=$TMP/srv
py trees "$SRV" "$TMP/map" "$TMP/locations.conf" "${fixtures[@]}"
HT=$FIX/adapters/hf-tiny
# A repository with two revisions: main is a LoRA, v1 a RoAd.
mkdir -p "$SRV/hfowner/revs/resolve/main" "$SRV/hfowner/revs/resolve/v1"
cp "$HT/lora/"* "$SRV/hfowner/revs/resolve/main/"
cp "$HT/road-1/"* "$SRV/hfowner/revs/resolve/v1/"
# The hub's large-file path: resolve answers 302 to the content store, with
# the digest in X-Linked-Etag on the redirect.
LFS_SHA=$(py sha "$HT/mos/adapter_model.safetensors")
mkdir -p "$SRV/hfowner/lfs/resolve/main" "$SRV/lfs-objects"
cp "$HT/mos/adapter_config.json" "$SRV/hfowner/lfs/resolve/main/"
cp "$HT/mos/adapter_model.safetensors" "$SRV/lfs-objects/$LFS_SHA"
# A repository whose X-Linked-Etag is another file's digest.
mkdir -p "$SRV/hfowner/badlinked/resolve/main"
cp "$HT/lora/"* "$SRV/hfowner/badlinked/resolve/main/"
BAD_SHA=$(py sha "$HT/lora-bf16/adapter_model.safetensors")
cat >>"$TMP/locations.conf" <<EOF
location = /hfowner/lfs/resolve/main/adapter_model.safetensors {
    add_header X-Linked-Etag "\"$LFS_SHA\"";
    return 302 /lfs-objects/$LFS_SHA;
}
location = /hfowner/badlinked/resolve/main/adapter_model.safetensors { add_header X-Linked-Etag "\"$BAD_SHA\""; }
location = /redir/ftp/adapter_config.json { return 302 ftp://127.0.0.1:9/adapter_config.json; }
location = /redir/file/adapter_config.json { return 302 file:///etc/passwd; }
location = /redir/loop/adapter_config.json { return 302 /redir/loop/adapter_config.json; }
EOF

# ---- usage errors -------------------------------------------------------------

S=$TMP/s-usage
for c in pull publish; do
    run "$c" --help
    check_rc "$c --help exits 0" 0
    check_has "$c --help prints its usage" "usage: adapterctl $c" "$out"
done
run --help
check_has "--help lists pull" "  pull " "$out"
check_has "--help lists publish" "  publish " "$out"
st pull
check_rc "pull without URL exits 2" 2
check_has "pull without URL says so" "missing URL" "$err"
st pull http://127.0.0.1:9/a b c
check_rc "pull with three arguments exits 2" 2
st pull ftp://127.0.0.1:9/a
check_rc "pull of an ftp:// URL exits 2" 2
check_has "pull of an ftp:// URL names the schemes" "http://, https://, file:// or hf://" "$err"
st pull 'http://127.0.0.1:9/a b'
check_rc "pull of a URL with a space exits 2" 2
check_has "pull of a URL with a space says so" "space" "$err"
st pull "$(printf 'http://127.0.0.1:9/a\rb')"
check_rc "pull of a URL with a control character exits 2" 2
case "$err" in
*$'\r'*) fail "the message shows no control character" "${err:0:200}" ;;
*) pass "the message shows no control character" ;;
esac
st pull http://
check_rc "pull of a bare scheme exits 2" 2
st pull http://127.0.0.1:9/a --sha256 abc
check_rc "pull --sha256 of 3 digits exits 2" 2
st pull http://127.0.0.1:9/a --sha256 "$(printf 'g%.0s' $(seq 64))"
check_rc "pull --sha256 of 64 non-hex characters exits 2" 2
st pull http://127.0.0.1:9/a --max-size 0
check_rc "pull --max-size 0 exits 2" 2
st pull http://127.0.0.1:9/a --max-size 12Q
check_rc "pull --max-size 12Q exits 2" 2
st pull http://127.0.0.1:9/a --name ../x
check_rc "pull --name ../x exits 2" 2
st pull http://127.0.0.1:9/a --tag novalue
check_rc "pull --tag without = exits 2" 2
st pull http://127.0.0.1:9/a x@0
check_rc "pull URL NAME@0 exits 2" 2
st publish
check_rc "publish without DIR exits 2" 2
st publish "$TMP/p" 'bad name!'
check_rc "publish of an invalid name exits 2" 2
if [ ! -e "$TMP/p" ]; then pass "a usage error publishes nothing"; else fail "a usage error publishes nothing"; fi
if [ ! -e "$S" ]; then pass "usage errors do not create the store"; else fail "usage errors do not create the store"; fi

# ---- the local reference store; publish ---------------------------------------

L=$TMP/s-local
S=$L
while read -r name d; do
    st add "$d" --name "$name"
    [ "$rc" -eq 0 ] || fail "add $name exits 0" "$err"
done <"$TMP/map"
st --json list --all-versions
cp "$TMP/out" "$TMP/local.json"
check "the local store holds every fixture" "${#fixtures[@]}" \
    "$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/local.json")"

PUB=$SRV/store
st publish "$PUB" --json
check_rc "publish exits 0" 0
check "publish --json gives dir and the adapter count" \
    "$(cd "$SRV" && pwd)/store ${#fixtures[@]}" "$(py get "$TMP/out" dir) $(py get "$TMP/out" adapters)"
check_py "publish writes index.json and objects/<sha256> named by their bytes" published "$PUB" "$L"
check "the index names every pack" "$(py npub "$PUB")" \
    "$("$PY" -c 'import json,sys; print(len({e["pack"] for e in json.load(open(sys.argv[1]))}))' "$TMP/local.json")"
st publish "$PUB"
check_rc "publish again into the same directory exits 0" 0
check_has "publish (text) says how many and where" "published ${#fixtures[@]} adapters to" "$out"
check_py "publishing again leaves a valid tree" published "$PUB" "$L"
st publish "$TMP/pub-some" hf-tiny.lora hf-tiny.mos@1 --json
check_rc "publish of two names exits 0" 0
check "publish of two names publishes two" "2" "$(py get "$TMP/out" adapters)"
check "publish of two names writes their two packs" "2" "$(ls "$TMP/pub-some/objects" -R | grep -cE '^[0-9a-f]{64}$')"
st publish "$TMP/pub-none" no-such-adapter
check_rc "publish of an absent name exits 1" 1
check_has "publish of an absent name names it" "no-such-adapter" "$err"
echo x >"$TMP/a-file"
st publish "$TMP/a-file"
check_rc "publish into a regular file exits 1" 1

# ---- file:// (no server) --------------------------------------------------------

S=$TMP/s-file
before
st pull "file://$TMP/no/such/dir" --name nope
expect_failed "pull of an absent file:// directory"
st --json pull "file://$HT/lora-dora" --name fdora
check_rc "pull of a file:// PEFT directory exits 0" 0
check_py "pull file:// --json reports name, source, digest" result "$TMP/out" fdora 1 \
    "file://$HT/lora-dora" "$(py sha "$HT/lora-dora/adapter_model.safetensors")" - - false
st --json pull "file://$PUB" hf-tiny.road-4
check_rc "pull from a file:// published store exits 0" 0
check "pull file:// published: the pack is the published one" \
    "$("$PY" -c 'import json,sys; print([e["pack"] for e in json.load(open(sys.argv[1])) if e["name"]=="hf-tiny.road-4"][0])' "$TMP/local.json")" \
    "$(py get "$TMP/out" pack)"
mkdir -p "$TMP/exp-file"
st export fdora "$TMP/exp-file/hf-tiny.lora-dora"
st export hf-tiny.road-4 "$TMP/exp-file/hf-tiny.road-4"
grep -E '^hf-tiny\.(lora-dora|road-4) ' "$TMP/map" >"$TMP/map-file"
check_py "file:// pulls export the fixtures' tensors and configs" exports "$TMP/map-file" "$TMP/exp-file"
st verify
check_rc "verify after file:// pulls exits 0" 0

# ---- the fault server: resume (acceptance 2) and faults (acceptance 3) -----------

"$PY" tests/faultserver.py --port 0 --root "$SRV" --portfile "$TMP/fport" --timeout 300 \
    >"$TMP/fault.log" 2>&1 &
FAULT_PID=$!
for i in $(seq 100); do
    [ -s "$TMP/fport" ] && break
    sleep 0.05
done
if [ ! -s "$TMP/fport" ]; then
    fail "the fault server starts" "$(cat "$TMP/fault.log")"
else
    F=http://127.0.0.1:$(cat "$TMP/fport")
    pass "the fault server listens on $F"
    # served PATH: "requests bytes" the fault server counted for PATH.
    served_f() { py fstats "$F" "$1"; }
    E=$HT/lora-embedding # the largest fixture: 128 KiB
    ESZ=$(py size "$E/adapter_model.safetensors")
    CSZ=$(py size "$E/adapter_config.json")
    S=$TMP/s-fault
    st add "$HT/lora" --name keep

    # -- acceptance 2 in one pull: the body is cut at half; the retry asks
    # for the rest only --
    P=/drop-half-1/peft/hf-tiny/lora-embedding
    st --json pull "$F$P" --name cut1
    check_rc "a pull whose download is cut halfway once exits 0" 0
    check "the cut file cost the server its size once: half, then the rest (requests bytes)" \
        "2 $ESZ" "$(served_f "$P/adapter_model.safetensors")"
    check_py "--json counts every byte received once" result "$TMP/out" cut1 1 "$F$P" - \
        "$((ESZ + CSZ))" 2 false

    # -- acceptance 2 across pulls: the first pull fails with part of the
    # file held; the second transfers exactly the rest --
    P=/drop-half-5/peft/hf-tiny/lora-embedding
    for i in 1 2 3 4 5; do py fget "$F$P/adapter_config.json"; done # its faults used up
    before
    st pull "$F$P" --name cut2
    expect_failed "a pull whose download is cut every time"
    read -r _ b1 <<<"$(served_f "$P/adapter_model.safetensors")"
    part=$(py partial "$S" "$E/adapter_model.safetensors")
    check "the failed pull keeps what it received in a partial file" "$b1" "$part"
    st --json pull "$F$P" --name cut2
    check_rc "pulling again exits 0" 0
    read -r _ b2 <<<"$(served_f "$P/adapter_model.safetensors")"
    check "pulling again transfers only the remainder" "$((ESZ - part))" "$((b2 - b1))"
    got=$(py get "$TMP/out" bytes_transferred)
    if [ "$got" -ge $((ESZ - part)) ] && [ "$got" -le $((ESZ - part + CSZ)) ]; then
        pass "--json bytes_transferred is the remainder (and at most the config)"
    else fail "--json bytes_transferred is the remainder" "got $got, remainder $((ESZ - part))"; fi
    mkdir -p "$TMP/exp-cut"
    st export cut2 "$TMP/exp-cut/cut2"
    check_py "the resumed download exports the fixture's tensors and config" exports \
        <(echo "cut2 $E") "$TMP/exp-cut"

    # -- a pull killed mid-transfer, then pulled again. With --sha256 the
    # bytes kept can be resumed whatever the server says; without a digest
    # known beforehand a resume needs the ETag the bytes came with, which a
    # killed pull had no chance to record --
    P=/trickle-1/peft/hf-tiny/lora-embedding
    py fget "$F$P/adapter_config.json"
    before
    "$BIN" --store "$S" pull "$F$P" --name killed --sha256 "$(py sha "$E/adapter_model.safetensors")" \
        >/dev/null 2>&1 &
    kpid=$!
    sleep 1.5
    kill -KILL "$kpid" 2>/dev/null
    wait "$kpid" 2>/dev/null
    expect_unchanged "a pull killed mid-transfer"
    part=$(py partial "$S" "$E/adapter_model.safetensors")
    if [ "$part" -gt 0 ]; then pass "the killed pull left a partial file ($part bytes)"
    else fail "the killed pull left a partial file" "$(ls -lR "$S" | head -30)"; fi
    read -r _ b1 <<<"$(served_f "$P/adapter_model.safetensors")"
    st --json pull "$F$P" --name killed --sha256 "$(py sha "$E/adapter_model.safetensors")"
    check_rc "pulling again after a kill exits 0" 0
    read -r _ b2 <<<"$(served_f "$P/adapter_model.safetensors")"
    check "pulling again after a kill transfers only the remainder" "$((ESZ - part))" "$((b2 - b1))"

    # -- the same without --sha256: the ETag the bytes come with is recorded
    # (atomically) as soon as the response's headers arrive, before its body,
    # so the killed pull's bytes are resumed with If-Range --
    P=/trickle-1/peft/hf-tiny/lora
    LSZ=$(py size "$HT/lora/adapter_model.safetensors")
    py fget "$F$P/adapter_config.json"
    before
    "$BIN" --store "$S" pull "$F$P" --name killed2 >/dev/null 2>&1 &
    kpid=$!
    sleep 1.5
    kill -KILL "$kpid" 2>/dev/null
    wait "$kpid" 2>/dev/null
    expect_unchanged "a pull without --sha256 killed mid-transfer"
    part=$(py partial "$S" "$HT/lora/adapter_model.safetensors")
    if [ "$part" -gt 0 ]; then pass "the killed pull left a partial file ($part bytes)"
    else fail "the killed pull left a partial file" "$(ls -lR "$S" | head -30)"; fi
    check "the killed pull recorded the ETag beside its partial file" \
        "\"$(py sha "$HT/lora/adapter_model.safetensors")\"" \
        "$(py sidecar "$S" "$HT/lora/adapter_model.safetensors")"
    read -r _ b1 <<<"$(served_f "$P/adapter_model.safetensors")"
    st --json pull "$F$P" --name killed2
    check_rc "pulling again after a kill without --sha256 exits 0" 0
    read -r _ b2 <<<"$(served_f "$P/adapter_model.safetensors")"
    check "pulling again after a kill without --sha256 transfers only the remainder" \
        "$((LSZ - part))" "$((b2 - b1))"
    mkdir -p "$TMP/exp-killed"
    st export killed2 "$TMP/exp-killed/killed2"
    check_py "the resumed download exports the fixture's tensors and config" exports \
        <(echo "killed2 $HT/lora") "$TMP/exp-killed"

    # -- acceptance 3: faults --
    P=/drop-half/peft/hf-tiny/lora
    before
    st pull "$F$P" --name f
    expect_failed "a connection dropped mid-body every time"
    check "a dropped connection is retried (attempts)" "5" "$(served_f "$P/adapter_config.json" | cut -d' ' -f1)"
    before
    st pull "$F/short/peft/hf-tiny/lora" --name f
    expect_failed "fewer bytes than announced"
    # More bytes than announced: HTTP frames the body by its Content-Length,
    # so the announced bytes are the file and the excess is dropped.
    st pull "$F/long/peft/hf-tiny/lora" --name oklong
    check_rc "more bytes than announced: the announced body is kept" 0
    before
    st pull "$F/wrong/peft/hf-tiny/lora" --name f \
        --sha256 "$(py sha "$HT/lora/adapter_model.safetensors")"
    expect_failed "wrong bytes against --sha256"
    before
    st pull "$F/fail500/peft/hf-tiny/lora" --name f
    expect_failed "500 every time"
    check_has "the 500 is named" "500" "$err"
    check "500 is retried (attempts)" "5" "$(served_f /fail500/peft/hf-tiny/lora/adapter_config.json | cut -d' ' -f1)"
    st pull "$F/peft/hf-tiny/absent" --name f
    expect_failed "404"
    check_has "the 404 is named" "404" "$err"
    check_has "the 404 names the URL" "$F/peft/hf-tiny/absent/adapter_config.json" "$err"
    check "404 is not retried" "1" "$(served_f /peft/hf-tiny/absent/adapter_config.json | cut -d' ' -f1)"
    st pull "$F/redirect-loop/0" --name f
    expect_failed "a redirect loop"
    n=$(py fsum "$F" '^/redirect-loop/')
    if [ "$n" -le 6 ]; then pass "a redirect loop stops after 5 redirects ($n requests)"
    else fail "a redirect loop stops after 5 redirects" "$n requests"; fi
    st pull "$F/redirect-ftp/peft/hf-tiny/lora" --name f
    expect_failed "a redirect to ftp://"
    check_has "the ftp:// redirect is named" "ftp://" "$err"
    st pull "$F/redirect-file/peft/hf-tiny/lora" --name f
    expect_failed "a redirect to file://"
    t0=$(date +%s.%N)
    ADAPTERCTL_FETCH_LOW_SPEED_S=1 st pull "$F/trickle/peft/hf-tiny/lora" --name f
    t1=$(date +%s.%N)
    expect_failed "a trickling server with a 1 s low-speed window"
    if "$PY" -c "import sys; sys.exit(0 if $t1 - $t0 < 30 else 1)"; then
        pass "a trickling server is given up on within 30 s"
    else fail "a trickling server is given up on within 30 s" "took $(echo "$t1 - $t0" | bc 2>/dev/null)"; fi
    before
    st pull "$F/chunked/peft/hf-tiny/lora" --name f --max-size 1K
    expect_failed "a chunked body larger than --max-size"
    check_has "the limit is named" "1024" "$err"

    # Faults a retry or a redirect overcomes.
    st --json pull "$F/fail500-2/peft/hf-tiny/lora" --name ok500
    check_rc "500 twice, then 200: exits 0" 0
    check "500 twice, then 200: three requests per file" "3 3" \
        "$(served_f /fail500-2/peft/hf-tiny/lora/adapter_config.json | cut -d' ' -f1) $(served_f /fail500-2/peft/hf-tiny/lora/adapter_model.safetensors | cut -d' ' -f1)"
    t0=$(date +%s.%N)
    st --json pull "$F/fail429-1/peft/hf-tiny/road-1" --name ok429
    t1=$(date +%s.%N)
    check_rc "429 (Retry-After: 1), then 200: exits 0" 0
    if "$PY" -c "import sys; sys.exit(0 if $t1 - $t0 >= 1.9 else 1)"; then
        pass "Retry-After: 1 is honoured for each file"
    else fail "Retry-After: 1 is honoured for each file" "the pull took $t0 .. $t1"; fi
    st pull "$F/redirect-ok/peft/hf-tiny/lora" --name okredir
    check_rc "a redirect to http on the same server is followed" 0
    st pull "$F/chunked/peft/hf-tiny/lora" --name okchunked
    check_rc "a chunked body (no Content-Length) exits 0" 0
    mkdir -p "$TMP/exp-ok"
    for n in ok500 ok429 okredir okchunked oklong; do st export "$n" "$TMP/exp-ok/$n"; done
    check_py "what retries, redirects and a long body delivered is the fixtures' adapters" exports \
        <(printf 'ok500 %s\nok429 %s\nokredir %s\nokchunked %s\noklong %s\n' "$HT/lora" "$HT/road-1" "$HT/lora" "$HT/lora" "$HT/lora") \
        "$TMP/exp-ok"

    # -- gc removes what failed pulls left --
    part=$(py npartial "$S")
    if [ "$part" -gt 0 ]; then pass "failed pulls left partial files"
    else fail "failed pulls left partial files" "$(ls -R "$S")"; fi
    st --json gc
    check_rc "gc exits 0" 0
    n=$(py get "$TMP/out" temp_removed)
    if [ "$n" -ge 1 ]; then pass "gc counts the partial files it removed ($n)"
    else fail "gc counts the partial files it removed" "$out"; fi
    check "gc leaves no partial file" "0" "$(py npartial "$S")"
    st verify
    check_rc "verify after the faults and gc exits 0" 0
fi

# ---- a file that changes while it downloads --------------------------------------
# pull works on the weights while they arrive (lib/pull.c, "following a
# download"). A server whose file changes mid-download (the first answer cut
# after 2 MiB of version 1, the retry answered 200 with version 2 under
# another ETag) makes that work stale: what the pull stores must be version
# 2's, exactly what a local add of version 2 gives. Following starts at the
# first MiB here (ADAPTERCTL_PULL_FOLLOW_MIN).

mkdir -p "$TMP/swap/v1" "$TMP/swap/v2"
"$PY" - "$TMP/swap" <<'PYEOF2'
import json, os, random, struct, sys
top = sys.argv[1]
HI = bytes((b & 0x80) | (0x38 + (b & 3)) for b in range(256))
def lora(out, seed):
    rnd = random.Random(seed)
    r, width, layers, mods = 16, 4096, 4, ["q_proj", "v_proj"]
    hdr, off, blobs = {}, 0, []
    for layer in range(layers):
        for m in mods:
            k = "base_model.model.model.layers.%d.self_attn.%s" % (layer, m)
            for name, shape in ((k + ".lora_A.weight", [r, width]), (k + ".lora_B.weight", [width, r])):
                n = shape[0] * shape[1]
                # BF16 of magnitude ~1e-3, finite: random mantissas, a few exponents
                lo = rnd.randbytes(n)
                hi = rnd.randbytes(n).translate(HI)
                data = bytearray(2 * n)
                data[0::2], data[1::2] = lo, hi
                hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}
                blobs.append(bytes(data))
                off += 2 * n
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                   "base_model_name_or_path": "test/swap"}, f)
lora(os.path.join(top, "v1"), 1)
lora(os.path.join(top, "v2"), 2)
PYEOF2
cat >"$TMP/swap/server.py" <<'PYEOF2'
import http.server, os, sys, threading
top, portfile = sys.argv[1], sys.argv[2]
n = {"weights": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        name = os.path.basename(self.path)
        if name == "adapter_config.json":
            return self.send(200, open(os.path.join(top, "v2", name), "rb").read(), '"c"')
        n["weights"] += 1
        if n["weights"] == 1:  # version 1, cut after 2 MiB
            data = open(os.path.join(top, "v1", name), "rb").read()
            self.send_response(200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:2 << 20])
            self.wfile.flush()
            self.close_connection = True
            return
        # If-Range "v1" no longer matches: the whole of version 2
        self.send(200, open(os.path.join(top, "v2", name), "rb").read(), '"v2"')
    def send(self, status, body, etag):
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
with open(portfile + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(portfile + ".tmp", portfile)
threading.Timer(120, srv.shutdown).start()  # never outlives a test that died
srv.serve_forever()
PYEOF2
"$PY" "$TMP/swap/server.py" "$TMP/swap" "$TMP/swap/port" >"$TMP/swap/log" 2>&1 &
SWAP_PID=$!
for i in $(seq 100); do
    [ -s "$TMP/swap/port" ] && break
    sleep 0.05
done
if [ ! -s "$TMP/swap/port" ]; then
    fail "the changing-file server starts" "$(cat "$TMP/swap/log")"
else
    S=$TMP/s-swap
    st --json add "$TMP/swap/v2" --name want
    want=$(py get "$TMP/out" pack)
    ADAPTERCTL_PULL_FOLLOW_MIN=1048576 st --json pull "http://127.0.0.1:$(cat "$TMP/swap/port")/x" --name swapped
    check_rc "a pull whose file changes mid-download exits 0" 0
    check "what it stores is the new version's pack, as a local add makes it" "$want" \
        "$(py get "$TMP/out" pack)"
    mkdir -p "$TMP/exp-swap"
    st export swapped "$TMP/exp-swap/swapped"
    check_py "the new version's tensors and config" exports <(echo "swapped $TMP/swap/v2") \
        "$TMP/exp-swap"
    st verify
    check_rc "verify after the changed file exits 0" 0
    kill "$SWAP_PID" 2>/dev/null
    wait "$SWAP_PID" 2>/dev/null
    SWAP_PID=
fi

# ---- nginx -----------------------------------------------------------------------

if ! nginx_start "$SRV" "$TMP/locations.conf"; then
    echo "SKIP: nginx parts of test_pull.sh: $NGINX_ERROR"
    NGINX_URL=
fi
U=$NGINX_URL
export HF_ENDPOINT=${U:-http://127.0.0.1:9}

if [ -n "$U" ]; then
    pass "nginx serves the trees on $U"

    # -- acceptance 1 and 4: every fixture three ways (through the hub, one
    # group: every kind once, to keep the sanitizer run short) --
    grep '^hf-tiny\.' "$TMP/map" >"$TMP/map-hf"
    for how in peft hf published; do
        S=$TMP/s-$how
        mkdir -p "$TMP/exp-$how"
        map=$TMP/map
        [ "$how" = hf ] && map=$TMP/map-hf
        while read -r name d; do
            fx=$(basename "$d") grp=$(basename "$(dirname "$d")")
            case $how in
            peft) st --json pull "$U/peft/$grp/$fx" --name "$name" ;;
            hf) st --json pull "hf://hfowner/$name" ;;
            published) st --json pull "$U/store" "$name" ;;
            esac
            if [ "$rc" -ne 0 ]; then fail "pull $how $name exits 0" "$err"; continue; fi
            st export "$name" "$TMP/exp-$how/$name"
            [ "$rc" -eq 0 ] || fail "export of the $how pull of $name exits 0" "$err"
        done <"$map"
        st --json list --all-versions
        cp "$TMP/out" "$TMP/list-$how.json"
        check_py "$how: every fixture pulled has the local add's kind, rank, variant, modules, config, sizes and pack" \
            entries "$TMP/local.json" "$TMP/list-$how.json" "$map"
        check_py "$how: every pulled adapter exports the fixture's tensors and config" \
            exports "$map" "$TMP/exp-$how"
        st verify
        check_rc "$how: verify after pulling every fixture exits 0" 0
    done

    # -- pull --json and text, PEFT URL; ETag revalidation --
    S=$TMP/s-etag
    d=$HT/lora-bias
    sz=$(py size "$d/adapter_config.json" "$d/adapter_model.safetensors")
    sha=$(py sha "$d/adapter_model.safetensors")
    st --json pull "$U/peft/hf-tiny/lora-bias" --name lb
    check_rc "pull of a PEFT URL exits 0" 0
    check_py "pull --json: name, version, source, sha256 of the safetensors, every byte of both files" \
        result "$TMP/out" lb 1 "$U/peft/hf-tiny/lora-bias" "$sha" "$sz" 2 false
    log0=$(py served "$NGINX_LOG" '^/peft/hf-tiny/lora-bias/')
    st pull "$U/peft/hf-tiny/lora-bias" --name lb
    check_rc "a second pull of an unchanged URL exits 0" 0
    check "a second pull says unchanged, nothing transferred" \
        "unchanged: lb@1 is up to date (0 bytes transferred)" "$out"
    check "a second pull costs the server no body bytes" "$(($(echo "$log0" | cut -d' ' -f1) + 2)) $(echo "$log0" | cut -d' ' -f2)" \
        "$(py served "$NGINX_LOG" '^/peft/hf-tiny/lora-bias/')"
    tail -2 "$NGINX_LOG" | grep -c '^304 ' >"$TMP/n304"
    check "nginx answered 304 to both revalidations" "2" "$(cat "$TMP/n304")"
    st --json pull "$U/peft/hf-tiny/lora-bias" --name lb
    check_py "a third pull --json: unchanged, 0 bytes, 0 files" result "$TMP/out" lb 1 - "$sha" 0 0 true
    # The server's copy changes: a new version.
    sleep 1 # a new mtime, hence a new ETag, even on a coarse clock
    cp "$HT/lora-bf16/"* "$SRV/peft/hf-tiny/lora-bias/"
    st --json pull "$U/peft/hf-tiny/lora-bias" --name lb
    check_rc "a pull after the server's files changed exits 0" 0
    check_py "a changed source gives version 2 with the new digest" result "$TMP/out" lb 2 - \
        "$(py sha "$HT/lora-bf16/adapter_model.safetensors")" - 2 false
    st pull "$U/peft/hf-tiny/lora-bias" --name lb
    check_has "then unchanged again" "unchanged: lb@2" "$out"
    cp "$HT/lora-bias/"* "$SRV/peft/hf-tiny/lora-bias/"
    st --json pull "$U/peft/hf-tiny/lora-bias" --name lb-text --tag task=x --tag user=y
    st pull "$U/peft/hf-tiny/lora-bias/" --name lb-text2
    check_rc "pull of a PEFT URL with a trailing slash exits 0" 0
    check "pull (text) says what, from where, how much, the digest" \
        "pulled lb-text2@1 from $U/peft/hf-tiny/lora-bias/: $sz bytes transferred, sha256 $sha" "$out"
    st --json show lb-text
    check "pull --tag tags the entry" '{"task": "x", "user": "y"}' "$(py get "$TMP/out" tags)"
    check "the entry's source is the URL" "$U/peft/hf-tiny/lora-bias" "$(py get "$TMP/out" source)"
    st --json pull "$U/peft/hf-tiny/road-2"
    check "the name defaults to the URL's last component" "road-2" "$(py get "$TMP/out" name)"

    # -- --sha256 and --max-size --
    before
    st pull "$U/peft/hf-tiny/mos" --name m --sha256 "$(py sha "$HT/lora/adapter_model.safetensors")"
    expect_failed "pull --sha256 with another file's digest"
    check_has "the --sha256 mismatch names the URL" "adapter_model.safetensors" "$err"
    st pull "$U/peft/hf-tiny/mos" --name m --sha256 "$(py sha "$HT/mos/adapter_model.safetensors" | tr a-f A-F)"
    check_rc "pull --sha256 with the right digest (upper case) exits 0" 0
    before
    st pull "$U/peft/base-tiny/lora-fanin" --name big --max-size 100
    expect_failed "pull --max-size below the file's size"
    st pull "$U/peft/base-tiny/lora-fanin" --name big --max-size 1M
    check_rc "pull --max-size 1M of a small adapter exits 0" 0

    # -- hf:// revisions and X-Linked-Etag --
    S=$TMP/s-hub
    st --json pull hf://hfowner/revs@v1 --name revs-v1
    check_rc "pull hf://OWNER/REPO@REV exits 0" 0
    st --json show revs-v1
    check "@v1 is the RoAd revision" "road" "$(py get "$TMP/out" kind)"
    st --json pull hf://hfowner/revs
    check_rc "pull hf://OWNER/REPO exits 0" 0
    check "the name defaults to the repository's" "revs" "$(py get "$TMP/out" name)"
    st --json show revs
    check "main is the LoRA revision" "lora" "$(py get "$TMP/out" kind)"
    st --json pull hf://hfowner/lfs
    check_rc "pull of a hub large file behind a redirect, X-Linked-Etag matching, exits 0" 0
    check "the redirected file's digest" "$LFS_SHA" "$(py get "$TMP/out" sha256)"
    before
    st pull hf://hfowner/badlinked
    expect_failed "pull hf:// with a mismatching X-Linked-Etag"
    check_has "the message names X-Linked-Etag" "X-Linked-Etag" "$err"
    st pull hf://hfowner/absent
    expect_failed "pull of an absent hf:// repository (404)"
    check_has "the 404 is reported" "404" "$err"
    st pull hf://hfowner
    if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then pass "pull hf://OWNER without a repository fails"
    else fail "pull hf://OWNER without a repository fails" "exit $rc"; fi
    st pull "hf://hfowner/revs@../../x"
    if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then pass "pull hf:// with a traversing revision fails"
    else fail "pull hf:// with a traversing revision fails" "exit $rc"; fi

    # -- redirects nginx sends --
    before
    st pull "$U/redir/ftp" --name r
    expect_failed "a redirect to ftp://"
    check_has "the redirect to ftp:// is named" "ftp://" "$err"
    st pull "$U/redir/file" --name r
    expect_failed "a redirect to file://"
    st pull "$U/redir/loop" --name r
    expect_failed "a redirect loop"

    # -- published store: only the packs the store lacks --
    S=$TMP/s-pub2
    st add "$HT/lora" --name mine
    n0=$(py served "$NGINX_LOG" '^/store/objects/')
    st --json pull "$U/store" hf-tiny.lora
    check_rc "pull of a published adapter whose pack the store has exits 0" 0
    check "no pack downloaded when the store has it" "$n0" "$(py served "$NGINX_LOG" '^/store/objects/')"
    st --json pull "$U/store" hf-tiny.road-2@1
    check_rc "pull NAME@V from a published store exits 0" 0
    check_py "a published pull --json: the pack's digest, one file" result "$TMP/out" hf-tiny.road-2 1 "$U/store" - - - false
    n1=$(py served "$NGINX_LOG" '^/store/objects/')
    check "the pack was downloaded once" "$(($(echo "$n0" | cut -d' ' -f1) + 1))" "$(echo "$n1" | cut -d' ' -f1)"
    st --json pull "$U/store" hf-tiny.road-2
    check_rc "a second pull of a published adapter exits 0" 0
    check "a second pull downloads no pack" "$n1" "$(py served "$NGINX_LOG" '^/store/objects/')"
    files=$(py get "$TMP/out" files_transferred)
    if [ "$files" -le 1 ]; then pass "a second pull transfers at most the index ($files files)"
    else fail "a second pull transfers at most the index" "files_transferred $files"; fi
    check "a second pull is unchanged" "true" "$(py get "$TMP/out" unchanged)"
    before
    st pull "$U/store" no-such-adapter
    expect_failed "pull of a name the index lacks"
    check_has "the absent name is named" "no-such-adapter" "$err"
    st pull "$U/store" hf-tiny.road-2@99
    expect_failed "pull of a version the index lacks"
    st pull "$U/store" hf-tiny.mos --sha256 "$(printf '0%.0s' $(seq 64))"
    expect_failed "pull from a published store with a wrong --sha256"

    # -- hostile published stores --
    ROAD4=$("$PY" -c 'import json,sys; print([e["pack"] for e in json.load(open(sys.argv[1])) if e["name"]=="hf-tiny.road-4"][0])' "$TMP/local.json")
    MOS=$("$PY" -c 'import json,sys; print([e["pack"] for e in json.load(open(sys.argv[1])) if e["name"]=="hf-tiny.mos"][0])' "$TMP/local.json")
    for case in traversal wrongbytes notjson; do
        H=$SRV/hostile-$case
        cp -r "$PUB" "$H"
        case $case in
        traversal) py retarget "$PUB/index.json" "$H/index.json" "$ROAD4" "../../../../etc/passwd" ;;
        wrongbytes) find "$H/objects" -name "$ROAD4" -exec cp "$(find "$PUB/objects" -name "$MOS")" {} \; ;;
        notjson) echo '{"adapters": [' >"$H/index.json" ;;
        esac
    done
    S=$TMP/s-hostile
    st add "$HT/lora" --name keep
    before
    st pull "$U/hostile-traversal" hf-tiny.road-4
    expect_failed "a published index whose digest is a path"
    st pull "$U/hostile-wrongbytes" hf-tiny.road-4
    expect_failed "a published pack whose bytes are another pack's"
    st pull "$U/hostile-notjson" hf-tiny.road-4
    expect_failed "a published index that is not JSON"
    st pull "$U/absent-store" hf-tiny.road-4
    expect_failed "a published store that does not exist (404)"

    # -- the progress bar: on a terminal only, never with -q or --json --
    S=$TMP/s-progress
    "$PY" "$TMP/pl.py" ptyrun "$TMP/pty.out" "$TMP/pty.err" "$BIN" --store "$S" pull "$U/peft/hf-tiny/lora-f16" --name p1
    check "pull with stderr on a terminal exits 0" 0 "$?"
    check "a terminal gets a progress bar (\\r, a rate)" "yes" "$(py has_cr "$TMP/pty.err")"
    check_has "the result still goes to stdout" "pulled p1@1" "$(cat "$TMP/pty.out")"
    "$PY" "$TMP/pl.py" ptyrun "$TMP/pty.out" "$TMP/pty.err" "$BIN" --store "$S" -q pull "$U/peft/hf-tiny/lora-f16" --name p2
    check "-q: no progress bar" "no" "$(py has_cr "$TMP/pty.err")"
    "$PY" "$TMP/pl.py" ptyrun "$TMP/pty.out" "$TMP/pty.err" "$BIN" --store "$S" --json pull "$U/peft/hf-tiny/lora-f16" --name p3
    check "--json: no progress bar" "no" "$(py has_cr "$TMP/pty.err")"
    st pull "$U/peft/hf-tiny/lora-f16" --name p4
    case "$err" in
    *$'\r'*) fail "stderr not a terminal: no progress bar" "${err:0:200}" ;;
    *) pass "stderr not a terminal: no progress bar" ;;
    esac
fi

echo "test_pull.sh: $npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
