#!/usr/bin/env bash
# test_faults.sh: fault injection (issue 8): crashes and failing writes.
#
#  1. SIGKILL at random moments during add, pull (a PEFT directory and a
#     published store, served by nginx on loopback; file:// URLs, with a SKIP
#     line, when nginx cannot start), publish, merge, compose, gc and eval.
#     After every kill: `verify` exits 0; the store lists either the adapters
#     it listed before the command or those plus the command's new entry, and
#     every listed adapter exports with the tensors file known for it (the
#     reference export of its source, checked once against the source's
#     tensors, or of an unkilled compose); merge's --out is absent or byte for
#     byte the unkilled reference merge; publish's directory has no index or
#     an index that parses and names only complete packs (each file's SHA-256
#     is its name, its size the index's stored_bytes); eval's --out holds only
#     whole result lines, each the unkilled reference run's line for its id,
#     and the same eval run again completes it with every request exactly
#     once. gc at the end of each part removes what the kills left; verify is
#     clean after it.
#  2. Writes failing partway (RLIMIT_FSIZE, `ulimit -f` in a subshell; the CLI
#     ignores SIGXFSZ so that write() fails with EFBIG) during add, pull,
#     publish, merge, compose, export and eval: exit 1 and one line on stderr
#     naming the file and "File too large"; the store as before (its list,
#     stats and the files under objects/ but objects/tmp/; verify clean); no
#     partial output at the chosen path (eval: only whole lines, which a rerun
#     completes).
#  3. Failing writes to the catalogue itself, from an LD_PRELOAD shim
#     (tests/cli/lib/failwrite.c, built here with cc; ENOSPC once a given
#     number of bytes went to files with a given suffix), during add, rm, tag
#     (set and remove), gc (with garbage rows), pull (file:// and the
#     published store) and compose. Writes to catalog.db-wal failing before
#     the WAL's header, in its second frame and in the commit frame: exit 1,
#     one line naming catalog.db and "database or disk is full", the store as
#     before (list, stats, files under objects/, nothing in objects/tmp/ or
#     partial/), verify clean, and the same command without the shim gives
#     the store a reference run on a copy gave; a pull whose later
#     fetch-cache commit fails still succeeds. Writes to catalog.db failing
#     (it is written only when the WAL is copied back, after the commit): the
#     command succeeds, its commit kept in the WAL and folded in by the next
#     run. An add into a new store with catalog.db failing: a clear error,
#     then the add succeeds without the shim.
#
# The kill moments come from bash's $RANDOM seeded with a fixed value, over
# 0 to 1.2 times one unkilled run of the same command measured here, so the
# kills land throughout the run in the normal and the sanitizer build.
# STRESS_FULL=1 runs 50 kills per command (`make stress`); the default is 7.
#
# Run from the repository root. ADAPTERCTL names the binary.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures
TMP=$(mktemp -d)
# shellcheck disable=SC2034 # PY is used by tests/cli/lib/common.sh
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
# Exports go to memory when /dev/shm allows: hundreds are written and hashed.
EXP=$(mktemp -d /dev/shm/actl-faults.XXXXXX 2>/dev/null || mktemp -d "$TMP/exp.XXXXXX")
. tests/nginx.sh
BGPID=
cleanup() {
    [ -n "$BGPID" ] && kill -9 "$BGPID" 2>/dev/null
    nginx_stop
    rm -rf "$TMP" "$EXP"
}
trap cleanup EXIT
npass=0 nfail=0
if [ "${STRESS_FULL:-0}" = 1 ]; then KILLS=50; else KILLS=7; fi
start_s=$(date +%s)

# Loopback only: never the public hub, never a proxy.
export HF_ENDPOINT=http://127.0.0.1:9
export ADAPTERCTL_FETCH_BACKOFF_MS=50
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export no_proxy='*' NO_PROXY='*'

PYSCRIPT=$TMP/f.py
. tests/cli/lib/common.sh
now_ms() { echo $(($(date +%s%N) / 1000000)); }

cat >"$PYSCRIPT" <<'PYEOF'
import hashlib, json, os, sys

sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
from st_reader import tensors as safetensors
from adapter_files import big_lora, variants

def cmd_big(out, layers, rank, width, seed):
    big_lora(out, int(layers), int(rank), int(width), int(seed), "faults/base")

def cmd_variants(src, dest, count, prefix):
    variants(src, dest, int(count), prefix, "x_fault_copy")

def cmd_same(src, exported):
    """The exported directory holds exactly src's tensors."""
    want = safetensors(os.path.join(src, "adapter_model.safetensors"))
    got = safetensors(os.path.join(exported, "adapter_model.safetensors"))
    if got != want:
        print(exported, "does not hold the tensors of", src)

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def cmd_published(d, *want_names):
    """d is a published directory: no index (nothing published yet) or an index
    that parses and whose every pack is in objects/, complete. Every other file
    in objects/ is a complete pack or a temporary file (counted on stdout as
    "tmp N"). With want_names: the index is absent or names exactly them."""
    idx = os.path.join(d, "index.json")
    packs = {}
    if os.path.exists(idx):
        try:
            doc = json.load(open(idx))
            packs = {e["pack"]: e["stored_bytes"] for e in doc["adapters"]}
            names = sorted(e["name"] for e in doc["adapters"])
        except Exception as e:
            print("index.json does not parse: %r" % e)
            print("tmp 0")
            return
        for p, size in packs.items():
            f = os.path.join(d, "objects", p)
            if not os.path.exists(f):
                print("index.json names pack %s, missing" % p[:12])
            elif os.path.getsize(f) != size or sha(f) != p:
                print("pack %s is incomplete (%d of %d bytes)" % (p[:12], os.path.getsize(f), size))
        if want_names and names != sorted(want_names):
            print("index.json names %d adapters, want %d" % (len(names), len(want_names)))
    tmp = 0
    if os.path.isdir(os.path.join(d, "objects")):
        for f in os.listdir(os.path.join(d, "objects")):
            if len(f) == 64 and f not in packs:
                if sha(os.path.join(d, "objects", f)) != f:
                    print("objects/%s is incomplete" % f[:12])
            elif f not in packs:
                tmp += 1
    print("tmp %d" % tmp)

def lines_of(path):
    data = open(path, "rb").read() if os.path.exists(path) else b""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]

def cmd_evalcheck(out, ref, final):
    """out holds whole result lines, each ref's line for its id, no id twice;
    a line cut by the kill (no newline) is counted ("cut 1") unless final, when
    it is an error, as is any request of ref missing."""
    want = {}
    for l in open(ref, "rb"):
        want[json.loads(l)["id"]] = l.rstrip(b"\n")
    whole, tail = lines_of(out)
    seen = set()
    for n, l in enumerate(whole, 1):
        try:
            i = json.loads(l)["id"]
        except Exception:
            print("%s line %d is not a whole result: %r" % (out, n, l[:80]))
            continue
        if i in seen:
            print("%s: id %s twice" % (out, i))
        seen.add(i)
        if want.get(i) != l:
            print("%s line %d differs from the reference run's line for %s" % (out, n, i))
    if final == "1":
        if tail:
            print("%s ends in a cut line" % out)
        missing = set(want) - seen
        if missing:
            print("%s lacks %d requests, e.g. %s" % (out, len(missing), sorted(missing)[:3]))
    else:
        print("cut %d" % (1 if tail else 0))

def cmd_requests(path, n):
    with open(path, "w") as f:
        for i in range(int(n)):
            ad = [None, "e1", "e2"][i % 3]
            f.write(json.dumps({"id": "r%d" % i, "adapter": ad, "prompt_ids": [1, 2 + i % 60],
                                "max_tokens": 24 + i % 9}) + "\n")

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PYEOF

# ---- helpers ------------------------------------------------------------------

# The store's entries, NAME@VERSION sorted (the list's first two columns).
names() { "$BIN" --store "$1" list --all-versions 2>&1 | awk 'NR > 1 { print $1 "@" $2 }' | sort; }
# Files under objects/ but objects/tmp/ (a killed writer's temporary files).
objfiles() { (cd "$1" && find objects -path objects/tmp -prune -o -type f -print 2>/dev/null | sort); }
sha_of() { sha256sum <"$1" | cut -d' ' -f1; }
msleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

# The tensors file each name's export must hold: WANT[name], else WANT_DEFAULT.
declare -A WANT
WANT_DEFAULT=

# exports_ok STORE TAG: every listed adapter of STORE exports (two at a time)
# and its tensors file has the expected SHA-256. One line per problem.
exports_ok() {
    local s=$1 tag=$2 e n
    rm -rf "${EXP:?}"/*
    names "$s" | xargs -P 2 -I{} sh -c \
        '"$1" --store "$2" -q export "$3" "$4/$3" >/dev/null 2>>"$4/err" || echo "export of $3 ($5) exited $?"' \
        sh "$BIN" "$s" {} "$EXP" "$tag"
    for e in $(names "$s"); do
        n=${e%@*}
        if [ "$(sha_of "$EXP/$e/adapter_model.safetensors" 2>/dev/null)" != "${WANT[$n]:-$WANT_DEFAULT}" ]; then
            echo "$e ($tag): its export is not the expected tensors file"
        fi
    done
    grep -m1 -A5 Sanitizer "$EXP/err" 2>/dev/null
}

# kill_run DELAY_MS ARGS...: starts adapterctl ARGS, SIGKILLs it after DELAY
# ms. Sets killed=1 when the kill ended it, 0 when it had exited first.
kill_run() {
    local delay=$1
    shift
    "$BIN" "$@" >/dev/null 2>"$TMP/kill.err" &
    BGPID=$!
    msleep "$delay"
    kill -9 "$BGPID" 2>/dev/null
    wait "$BGPID" 2>/dev/null
    local st=$?
    BGPID=
    if [ "$st" -eq 137 ]; then killed=1; else killed=0; fi
    if [ "$killed" = 0 ] && [ "$st" -ne 0 ]; then
        fail "adapterctl $* exited $st before its kill" "$(head -c 400 "$TMP/kill.err")"
    fi
    case "$(cat "$TMP/kill.err")" in *Sanitizer*) fail "adapterctl $* ran clean under the sanitizers" "$(head -c 1500 "$TMP/kill.err")" ;; esac
}

# after_kill STORE TAG BEFORE_NAMES NEW_ENTRY: verify, list, exports. Counts
# into vclean/bad for the part's summary line.
after_kill() {
    local s=$1 tag=$2 before=$3 new=$4 now msg
    if "$BIN" --store "$s" verify >/dev/null 2>"$TMP/verify.err"; then
        vclean=$((vclean + 1))
    else
        bad=$((bad + 1))
        fail "verify after $tag exits 0" "$(head -c 600 "$TMP/verify.err")"
    fi
    now=$(names "$s")
    if [ "$now" != "$before" ] && [ "$now" != "$(printf '%s\n' $before $new | sort)" ]; then
        bad=$((bad + 1))
        fail "after $tag the store lists the state before or after the command" \
            "$(diff <(echo "$before") <(echo "$now"))"
    fi
    msg=$(exports_ok "$s" "$tag")
    if [ -n "$msg" ]; then
        bad=$((bad + 1))
        fail "after $tag every listed adapter exports completely" "$msg"
    fi
}

# final_gc STORE PART: gc, then verify clean and no temporary files left.
final_gc() {
    run --store "$1" gc
    check_rc "$2: gc after the kills exits 0" 0
    run --store "$1" verify
    check_rc "$2: verify after the final gc exits 0" 0
    check "$2: no temporary file is left after gc" "" \
        "$(cd "$1" && find objects/tmp -type f 2>/dev/null)"
}

# timed ARGS...: runs adapterctl once, unkilled; ms is the shortest such run
# since the last `ms=`, range the kill window (1.2 times it, at least 20 ms).
# The shortest of a few: the machine is shared, one slow run would put most
# kills after the end.
ms=
timed() {
    local t0 t
    t0=$(now_ms)
    run "$@"
    t=$(($(now_ms) - t0))
    if [ -z "$ms" ] || [ "$t" -lt "$ms" ]; then ms=$t; fi
    range=$((ms * 12 / 10))
    [ "$range" -lt 20 ] && range=20
}

report() { # PART: the summary line
    echo "$1: $KILLS kills ($nkilled mid-run, the rest after the command had finished), verify clean $vclean/$KILLS," \
        "one run $ms ms${2:+, $2}"
}

# ---- sources ----------------------------------------------------------------

RANDOM=20261122
py big "$TMP/big" 8 16 1024 1     # 2 MiB of BF16
py big "$TMP/big2" 8 16 1024 2
py variants "$TMP/big" "$TMP/var" $((3 * KILLS + 8)) v
AD=$FIX/adapters/base-tiny

# The reference export of big: checked against the source once; every variant
# (the same tensors file) must export to it byte for byte.
S=$TMP/s-ref
run --store "$S" -q add "$TMP/big" --name big
check_rc "add of the 2 MiB source exits 0" 0
run --store "$S" -q export big "$TMP/ref-big"
check_py "the reference export holds the source's tensors" same "$TMP/big" "$TMP/ref-big"
REF_BIG=$(sha_of "$TMP/ref-big/adapter_model.safetensors")
run --store "$S" -q add "$TMP/big2" --name big2
run --store "$S" -q export big2 "$TMP/ref-big2"
check_py "the second reference export holds its source's tensors" same "$TMP/big2" "$TMP/ref-big2"
REF_BIG2=$(sha_of "$TMP/ref-big2/adapter_model.safetensors")
REF_L1=$(sha_of "$AD/lora/adapter_model.safetensors")

# ==== 1. SIGKILL ================================================================

# ---- add ----
S=$TMP/s-add
WANT=() WANT_DEFAULT=$REF_BIG
# The store exists before the timed run: creating it is not part of an add.
"$BIN" --store "$S" -q init >/dev/null
ms=
timed --store "$S" -q add "$TMP/big" --name ref
check_rc "add: the unkilled add exits 0" 0
for t in 1 2; do
    timed --store "$S" -q add "$TMP/var/v$((3 * KILLS + t))" --name "t$t"
    "$BIN" --store "$S" -q rm "t$t" >/dev/null
done
vclean=0 bad=0 nkilled=0
for i in $(seq 0 $((KILLS - 1))); do
    before=$(names "$S")
    kill_run $((RANDOM % (range + 1))) --store "$S" -q add "$TMP/var/v$i" --name "k$i"
    nkilled=$((nkilled + killed))
    after_kill "$S" "add kill $i" "$before" "k$i@1"
    # Most go again, so the store stays small and gc finds orphan packs.
    [ $((i % 4)) -ne 0 ] && "$BIN" --store "$S" -q rm "k$i" >/dev/null 2>&1
done
final_gc "$S" add
report add

# ---- pull ----
S=$TMP/s-pull
SRC=$TMP/s-src
WWW=$TMP/www
mkdir -p "$WWW/peft"
for i in $(seq 0 $((KILLS - 1))); do
    "$BIN" --store "$SRC" -q add "$TMP/var/v$((KILLS + i))" --name "p$i" >/dev/null || fail "add p$i to the source store"
    ln -s "$TMP/var/v$((2 * KILLS + i))" "$WWW/peft/p$i"
done
"$BIN" --store "$SRC" -q add "$TMP/var/v$((3 * KILLS))" --name pref >/dev/null
run --store "$SRC" -q publish "$WWW/pub"
check_rc "pull: publishing the source store exits 0" 0
if nginx_start "$WWW"; then
    URL=$NGINX_URL
    how="over http from nginx"
else
    echo "SKIP: pull over http: $NGINX_ERROR; pulling file:// URLs instead"
    URL=file://$WWW
    how="over file://"
fi
WANT=() WANT_DEFAULT=$REF_BIG
"$BIN" --store "$S" -q init >/dev/null
ms=
timed --store "$S" -q pull "$URL/pub" pref --name pref
check_rc "pull: the unkilled pull from the published store exits 0" 0
timed --store "$S" -q pull "$URL/peft/p0" --name peft-ref
check_rc "pull: the unkilled pull of a PEFT directory exits 0" 0
timed --store "$S" -q pull "$URL/peft/p1" --name peft-ref2
vclean=0 bad=0 nkilled=0
for i in $(seq 0 $((KILLS - 1))); do
    before=$(names "$S")
    if [ $((i % 2)) -eq 0 ]; then
        kill_run $((RANDOM % (range + 1))) --store "$S" -q pull "$URL/peft/p$i" --name "k$i"
    else
        kill_run $((RANDOM % (range + 1))) --store "$S" -q pull "$URL/pub" "p$i" --name "k$i"
    fi
    nkilled=$((nkilled + killed))
    after_kill "$S" "pull kill $i" "$before" "k$i@1"
    [ $((i % 4)) -ne 0 ] && "$BIN" --store "$S" -q rm "k$i" >/dev/null 2>&1
done
final_gc "$S" pull
check "pull: gc removed every partial download" "" "$(ls "$S/partial" 2>/dev/null)"
report pull "$how"

# ---- publish ----
# Into a fresh directory (every pack written) and, every other time, into the
# same directory again after one more add (one new pack and a new index).
WANT=() WANT_DEFAULT=$REF_BIG
ms=
timed --store "$SRC" -q publish "$TMP/pub-ref"
check_rc "publish: the unkilled publish exits 0" 0
timed --store "$SRC" -q publish "$TMP/pub-ref2"
timed --store "$SRC" -q publish "$TMP/pub-ref3"
vclean=0 bad=0 nkilled=0 ptmp=0
for i in $(seq 0 $((KILLS - 1))); do
    if [ $((i % 2)) -eq 0 ]; then
        D=$TMP/pub-k$i
    else
        D=$TMP/pub-again
        "$BIN" --store "$SRC" -q add "$TMP/var/v$((3 * KILLS + 1 + i % 7))" --name "n$i" >/dev/null
    fi
    before=$(names "$SRC")
    idx_before=$(cat "$D/index.json" 2>/dev/null)
    kill_run $((RANDOM % (range + 1))) --store "$SRC" -q publish "$D"
    nkilled=$((nkilled + killed))
    after_kill "$SRC" "publish kill $i" "$before" ""
    # The index: as before, or naming every listed adapter, its packs whole.
    if [ "$(cat "$D/index.json" 2>/dev/null)" == "$idx_before" ]; then
        msg=$(py published "$D")
    else
        # shellcheck disable=SC2046
        msg=$(py published "$D" $(names "$SRC" | sed 's/@.*//'))
    fi
    t=$(sed -n 's/^tmp //p' <<<"$msg")
    ptmp=$((ptmp + ${t:-0}))
    msg=$(grep -v '^tmp ' <<<"$msg")
    if [ -n "$msg" ]; then
        bad=$((bad + 1))
        fail "publish kill $i: the directory holds no half-written index or pack" "$msg"
    fi
done
run --store "$SRC" -q publish "$TMP/pub-again"
check_rc "publish: publishing again after the kills exits 0" 0
# shellcheck disable=SC2046
msg=$(py published "$TMP/pub-again" $(names "$SRC" | sed 's/@.*//'))
check "publish: the index then names every adapter, every pack complete" "" "$(grep -v '^tmp ' <<<"$msg")"
ptmp_final=$(sed -n 's/^tmp //p' <<<"$msg")
report publish "$ptmp temporary files counted in objects/ over the checks after the kills; $ptmp_final still there after a complete publish"

# ---- merge ----
S=$TMP/s-merge
"$BIN" --store "$S" -q add "$AD/lora" --name l1 >/dev/null
"$BIN" --store "$S" -q add "$AD/road-1" --name r1 >/dev/null
WANT=([l1]=$REF_L1 [r1]=$(sha_of "$AD/road-1/adapter_model.safetensors"))
ms=
timed --store "$S" -q merge --base "$FIX/base-tiny" --out "$TMP/merge-ref" l1 r1:0.5
check_rc "merge: the unkilled merge exits 0" 0
REF_MERGE=$(sha_of "$TMP/merge-ref/model.safetensors")
timed --store "$S" -q merge --base "$FIX/base-tiny" --out "$TMP/merge-ref2" l1 r1:0.5
timed --store "$S" -q merge --base "$FIX/base-tiny" --out "$TMP/merge-ref3" l1 r1:0.5
vclean=0 bad=0 nkilled=0 mwhole=0
mkdir -p "$TMP/merges"
for i in $(seq 0 $((KILLS - 1))); do
    before=$(names "$S")
    O=$TMP/merges/m$i
    kill_run $((RANDOM % (range + 1))) --store "$S" -q merge --base "$FIX/base-tiny" --out "$O" l1 r1:0.5
    nkilled=$((nkilled + killed))
    after_kill "$S" "merge kill $i" "$before" ""
    if [ -e "$O" ]; then
        if [ "$(sha_of "$O/model.safetensors" 2>/dev/null)" != "$REF_MERGE" ] ||
            ! cmp -s "$O/config.json" "$TMP/merge-ref/config.json"; then
            bad=$((bad + 1))
            fail "merge kill $i: --out is absent or complete" "$(ls -la "$O")"
        else
            mwhole=$((mwhole + 1))
        fi
    fi
done
mdebris=$(find "$TMP/merges" -mindepth 1 -maxdepth 1 -name '.*' | wc -l)
final_gc "$S" merge
report merge "$mwhole outputs complete, the rest absent; $mdebris hidden temporary directories left beside --out"

# ---- compose ----
S=$TMP/s-compose
"$BIN" --store "$S" -q add "$TMP/big" --name ca >/dev/null
"$BIN" --store "$S" -q add "$TMP/big2" --name cb >/dev/null
ms=
timed --store "$S" -q compose --method cat --out cref ca cb
check_rc "compose: the unkilled compose exits 0" 0
for t in 1 2; do
    timed --store "$S" -q compose --method cat --out "t$t" ca cb
    "$BIN" --store "$S" -q rm "t$t" >/dev/null
done
run --store "$S" -q export cref "$TMP/ref-cat"
WANT=([ca]=$REF_BIG [cb]=$REF_BIG2 [cref]=$(sha_of "$TMP/ref-cat/adapter_model.safetensors"))
WANT_DEFAULT=${WANT[cref]}
vclean=0 bad=0 nkilled=0
for i in $(seq 0 $((KILLS - 1))); do
    before=$(names "$S")
    kill_run $((RANDOM % (range + 1))) --store "$S" -q compose --method cat --out "k$i" ca cb
    nkilled=$((nkilled + killed))
    after_kill "$S" "compose kill $i" "$before" "k$i@1"
    [ $((i % 4)) -ne 0 ] && "$BIN" --store "$S" -q rm "k$i" >/dev/null 2>&1
done
final_gc "$S" compose
report compose

# ---- gc ----
# Garbage: the packs of 6 removed adapters, kept aside as hard links and put
# back before every gc.
S=$TMP/s-gc
"$BIN" --store "$S" -q add "$TMP/big" --name keep >/dev/null
"$BIN" --store "$S" -q add "$TMP/big2" --name keep2 >/dev/null
WANT=([keep]=$REF_BIG [keep2]=$REF_BIG2) WANT_DEFAULT=
mkdir -p "$TMP/garbage"
for g in 0 1 2 3 4 5; do
    "$BIN" --store "$S" -q add "$TMP/var/v$g" --name "g$g" >/dev/null
    p=$("$BIN" --store "$S" --json show "g$g" | sed -n 's/^  "pack": "\([0-9a-f]*\)",$/\1/p')
    ln "$S/objects/${p:0:2}/$p" "$TMP/garbage/$p"
    "$BIN" --store "$S" -q rm "g$g" >/dev/null
done
restore_garbage() {
    local f n
    for f in "$TMP"/garbage/*; do
        n=${f##*/}
        mkdir -p "$S/objects/${n:0:2}"
        [ -e "$S/objects/${n:0:2}/$n" ] || ln "$f" "$S/objects/${n:0:2}/$n"
    done
}
check "gc: 6 garbage packs set aside" 6 "$(find "$TMP/garbage" -type f | wc -l)"
ms=
for t in 1 2 3; do
    restore_garbage
    timed --store "$S" --json gc
    check_has "gc: the unkilled gc removes the 6 garbage packs" '"packs_removed": 6' "$out"
done
vclean=0 bad=0 nkilled=0
for i in $(seq 0 $((KILLS - 1))); do
    restore_garbage
    before=$(names "$S")
    files_before=$(objfiles "$S")
    kill_run $((RANDOM % (range + 1))) --store "$S" -q gc
    nkilled=$((nkilled + killed))
    after_kill "$S" "gc kill $i" "$before" ""
    gone=$(comm -13 <(echo "$files_before") <(objfiles "$S"))
    if [ -n "$gone" ]; then
        bad=$((bad + 1))
        fail "gc kill $i: no pack appeared" "$gone"
    fi
done
final_gc "$S" gc
check "gc: the kept adapters are listed in the end" "keep keep2" "$(names "$S" | sed 's/@.*//' | sort | xargs)"
check "gc: only the two kept packs remain" 2 "$(objfiles "$S" | wc -l)"
report gc

# ---- eval ----
S=$TMP/s-eval
"$BIN" --store "$S" -q add "$AD/lora" --name e1 >/dev/null
"$BIN" --store "$S" -q add "$AD/lora-dora" --name e2 >/dev/null
NREQ=600
py requests "$TMP/req.jsonl" "$NREQ"
EVAL=(--store "$S" -q eval --model "$FIX/base-tiny" --requests "$TMP/req.jsonl" --batch 4 --threads 1)
ms=
timed "${EVAL[@]}" --out "$TMP/eval-ref.jsonl"
check_rc "eval: the unkilled eval exits 0" 0
timed "${EVAL[@]}" --out "$TMP/eval-t1.jsonl"
timed "${EVAL[@]}" --out "$TMP/eval-t2.jsonl"
check "eval: the reference run answers every request" "$NREQ" "$(wc -l <"$TMP/eval-ref.jsonl")"
WANT=([e1]=$REF_L1 [e2]=$(sha_of "$AD/lora-dora/adapter_model.safetensors")) WANT_DEFAULT=
vclean=0 bad=0 nkilled=0 cut=0 resumed=0
for i in $(seq 0 $((KILLS - 1))); do
    before=$(names "$S")
    O=$TMP/eval-k$((i / 2)).jsonl # every other kill resumes the last one's file
    kill_run $((RANDOM % (range + 1))) "${EVAL[@]}" --out "$O"
    nkilled=$((nkilled + killed))
    after_kill "$S" "eval kill $i" "$before" ""
    msg=$(py evalcheck "$O" "$TMP/eval-ref.jsonl" 0)
    t=$(sed -n 's/^cut //p' <<<"$msg")
    cut=$((cut + ${t:-0}))
    msg=$(grep -v '^cut ' <<<"$msg")
    if [ -n "$msg" ]; then
        bad=$((bad + 1))
        fail "eval kill $i: --out holds only whole result lines" "$msg"
    fi
    if [ $((i % 2)) -eq 1 ] || [ "$i" -eq $((KILLS - 1)) ]; then
        run "${EVAL[@]}" --out "$O"
        check_rc "eval kill $i: the same eval again completes" 0
        msg=$(py evalcheck "$O" "$TMP/eval-ref.jsonl" 1)
        if [ -n "$msg" ]; then
            bad=$((bad + 1))
            fail "eval kill $i: after the rerun every request is answered exactly once" "$msg"
        else
            resumed=$((resumed + 1))
        fi
    fi
done
final_gc "$S" eval
report eval "$cut cut last lines (dropped by the rerun), $resumed reruns completed every request once"

# ==== 2. write failures (RLIMIT_FSIZE) ==========================================

# A store with room for its catalogue (~80 KiB) under every limit used here.
S=$TMP/s-full
"$BIN" --store "$S" -q add "$AD/lora" --name l1 >/dev/null
"$BIN" --store "$S" -q add "$TMP/big" --name big >/dev/null
"$BIN" --store "$S" -q add "$TMP/big2" --name big2 >/dev/null
"$BIN" --store "$SRC" -q publish "$TMP/pub-full" >/dev/null

snap() {
    "$BIN" --store "$S" list --all-versions 2>&1
    "$BIN" --store "$S" --json stats 2>&1 | grep -v '"seconds"'
    objfiles "$S"
}
nwf=0 wfok=0
# limited KB NAME PATH_IN_MESSAGE ARGS...: adapterctl ARGS under `ulimit -f KB`
# must exit 1 with one line naming PATH_IN_MESSAGE... and "File too large",
# the store as before and verify clean.
limited() {
    local kb=$1 name=$2 where=$3 before after ok=1
    shift 3
    nwf=$((nwf + 1))
    before=$(snap)
    (
        ulimit -f "$kb"
        exec "$BIN" --store "$S" "$@"
    ) >"$TMP/out" 2>"$TMP/err"
    rc=$?
    err=$(cat "$TMP/err")
    [ "$rc" -eq 1 ] || { ok=0; fail "$name: exit 1 when writes fail" "exit $rc" "${err:0:400}"; }
    case "$err" in
    *Sanitizer*) ok=0; fail "$name: runs clean under the sanitizers" "${err:0:1500}" ;;
    "adapterctl: "*"$where"*"File too large")
        [ "$(wc -l <"$TMP/err")" -eq 1 ] || { ok=0; fail "$name: one line on stderr" "$err"; } ;;
    *) ok=0; fail "$name: the message names the file ($where...) and the problem" "$err" ;;
    esac
    after=$(snap)
    [ "$after" == "$before" ] || { ok=0; fail "$name: the store is as before" "$(diff <(echo "$before") <(echo "$after"))"; }
    "$BIN" --store "$S" verify >/dev/null 2>"$TMP/verify.err" ||
        { ok=0; fail "$name: verify is clean after" "$(cat "$TMP/verify.err")"; }
    wf_ok=$ok
    echo "  $name: ${err:0:200}"
}
debris() { # NAME PATH...: none of the paths exist
    local p
    for p in "${@:2}"; do
        if [ -e "$p" ]; then wf_ok=0; fail "$1: no partial output at $p" "$(ls -la "$p")"; fi
    done
}
wf_done() { [ "$wf_ok" = 1 ] && wfok=$((wfok + 1)); }

limited 256 "add" "$S/" -q add "$TMP/var/v$((3 * KILLS + 7))" --name nope
check "add under the limit made no entry" "" "$(names "$S" | grep nope)"
wf_done
limited 256 "pull file:// PEFT" "$S/" -q pull "file://$TMP/var/v$((3 * KILLS + 6))" --name nope
wf_done
limited 256 "pull file:// published" "$S/" -q pull "file://$TMP/pub-full" p3 --name nope
wf_done
limited 256 "publish into a new directory" "$TMP/pub-new/" -q publish "$TMP/pub-new"
# The directory publish creates stays; it must hold no file.
[ -z "$(find "$TMP/pub-new" -type f 2>/dev/null)" ] ||
    { wf_ok=0; fail "publish under the limit leaves no file" "$(find "$TMP/pub-new" -type f)"; }
wf_done
cp -r "$TMP/pub-ref" "$TMP/pub-old"
S_SAVE=$S S=$SRC
"$BIN" --store "$SRC" -q add "$TMP/big2" --name fresh >/dev/null
idx=$(sha_of "$TMP/pub-old/index.json")
limited 256 "publish over an earlier publish" "$TMP/pub-old/" -q publish "$TMP/pub-old"
[ "$(sha_of "$TMP/pub-old/index.json")" == "$idx" ] ||
    { wf_ok=0; fail "publish under the limit leaves the earlier index"; }
msg=$(py published "$TMP/pub-old" | grep -v '^tmp 0$')
[ -z "$msg" ] || { wf_ok=0; fail "publish under the limit leaves only complete packs" "$msg"; }
wf_done
S=$S_SAVE
limited 64 "merge" "$TMP/" -q merge --base "$FIX/base-tiny" --out "$TMP/merge-full" l1
debris "merge" "$TMP/merge-full"
[ -z "$(find "$TMP" -maxdepth 1 -name '.merge-full*')" ] ||
    { wf_ok=0; fail "merge under the limit leaves no temporary directory" "$(find "$TMP" -maxdepth 1 -name '.merge-full*')"; }
wf_done
limited 256 "compose" "$S/" -q compose --method cat --out nope big big2
wf_done
limited 256 "export" "$TMP/export-full" -q export big "$TMP/export-full"
debris "export" "$TMP/export-full" "$TMP"/export-full.*
wf_done
S=$TMP/s-eval
limited 64 "eval" "$TMP/eval-full.jsonl" -q eval --model "$FIX/base-tiny" --requests "$TMP/req.jsonl" \
    --out "$TMP/eval-full.jsonl" --threads 1
msg=$(py evalcheck "$TMP/eval-full.jsonl" "$TMP/eval-ref.jsonl" 0)
[ "$msg" == "cut 0" ] || { wf_ok=0; fail "eval under the limit leaves only whole lines" "$msg"; }
run --store "$S" -q eval --model "$FIX/base-tiny" --requests "$TMP/req.jsonl" --out "$TMP/eval-full.jsonl" --threads 1
check_rc "eval without the limit then completes" 0
msg=$(py evalcheck "$TMP/eval-full.jsonl" "$TMP/eval-ref.jsonl" 1)
[ -z "$msg" ] || { wf_ok=0; fail "eval's rerun answers every request exactly once" "$msg"; }
wf_done
echo "write failures: $wfok/$nwf clean (exit 1, one clear line, store unchanged, no partial output)"
[ "$wfok" -eq "$nwf" ] && pass "every write failure was clean"


# ==== 3. failing catalogue writes (an LD_PRELOAD shim) ==========================

# RLIMIT_FSIZE above never reaches SQLite's own writes (its 32 KiB -shm file
# fails first, or the limit leaves room for the catalogue). The shim fails
# the writes to chosen files only, with ENOSPC, after a given byte count.
FW=$TMP/failwrite.so
# shimmed SUFFIX BYTES STORE ARGS...: adapterctl ARGS on STORE, the files
# ending in SUFFIX taking BYTES bytes, then ENOSPC. FAILWRITE_COUNT passes
# through (set: the bytes asked for are written there at exit).
shimmed() {
    local suffix=$1 bytes=$2 store=$3
    shift 3
    LD_PRELOAD=$FW FAILWRITE_SUFFIX=$suffix FAILWRITE_BYTES=$bytes \
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        "$BIN" --store "$store" "$@" >"$TMP/out" 2>"$TMP/err"
}
# catsnap STORE: list, stats (but its path and time), the files under
# objects/ and any file in objects/tmp/ or partial/ (none is expected).
catsnap() {
    "$BIN" --store "$1" list --all-versions 2>&1
    "$BIN" --store "$1" --json stats 2>&1 | grep -v '"seconds"\|"path"'
    (cd "$1" && find objects partial -type f 2>/dev/null | sort)
}
# state_is NAME STORE WANT WHAT: STORE's catsnap is WANT (else the failure
# "NAME: WHAT") and verify is clean; either failing clears ok.
state_is() {
    local after
    after=$(catsnap "$2")
    [ "$after" == "$3" ] || { ok=0; fail "$1: $4" "$(diff <(echo "$3") <(echo "$after"))"; }
    "$BIN" --store "$2" verify >/dev/null 2>"$TMP/verify.err" ||
        { ok=0; fail "$1: verify is clean after" "$(cat "$TMP/verify.err")"; }
}
# The commands, each run on the store the ones before it left. Every one
# writes to the catalogue; gc has the packs of g (removed in the template)
# and, from the rm before it, r1 to drop.
CMDS=(
    "add|-q add $AD/lora-dora --name n"
    "rm|-q rm r1"
    "tag (set)|-q tag l1 b=2"
    "tag (remove)|-q tag l1 --unset a"
    "gc|-q gc"
    "pull file:// PEFT|-q pull file://$AD/bottleneck-series --name p"
    "pull published ($how)|-q pull $URL/pub p2 --name q"
    "compose|-q compose --method cat --out c l1 l1"
)

catalogue_faults() {
    local T=$TMP/s-cat-tpl k name args before after ok bytes t0
    t0=$(date +%s)
    "$BIN" --store "$T" -q add "$AD/lora" --name l1 >/dev/null
    "$BIN" --store "$T" -q add "$AD/road-1" --name r1 >/dev/null
    "$BIN" --store "$T" -q add "$AD/mos" --name g >/dev/null
    "$BIN" --store "$T" -q tag l1 a=1 >/dev/null
    "$BIN" --store "$T" -q rm g >/dev/null

    # The expectation: the commands on a copy, the shim counting but failing
    # nothing: the state after each, and where in the WAL's bytes each
    # command's first commit ends (its first sync past the WAL's header) and
    # its writes end (pull commits twice: its adapter, then the fetch cache).
    local -a EXPECT FIRST TOTAL
    S=$TMP/s-cat-ref
    cp -a "$T" "$S"
    for k in "${!CMDS[@]}"; do
        name=${CMDS[$k]%%|*} args=${CMDS[$k]#*|}
        # shellcheck disable=SC2086 # args is a word list
        FAILWRITE_COUNT=$TMP/walbytes shimmed catalog.db-wal 1000000000000 "$S" $args
        rc=$?
        err=$(cat "$TMP/err")
        check_rc "catalogue: $name runs with the shim counting only" 0
        EXPECT[k]=$(catsnap "$S")
        TOTAL[k]=$(tail -n 1 "$TMP/walbytes" 2>/dev/null)
        FIRST[k]=$(head -n -1 "$TMP/walbytes" 2>/dev/null | awk '$1 > 32 { print; exit }')
        if [ -z "${FIRST[k]}" ] || [ "${FIRST[k]}" -le 4300 ]; then
            fail "catalogue: $name commits more than a page to the WAL" "$(cat "$TMP/walbytes" 2>/dev/null)"
        fi
    done
    check "catalogue: the reference gc drops the packs of g and r1" 2 \
        "$(($(grep -c '^objects/' <<<"${EXPECT[3]}") - $(grep -c '^objects/' <<<"${EXPECT[4]}")))"

    # a) Writes to catalog.db-wal fail: before its header (0), in the second
    # frame (4200) and in the commit frame (50 bytes short of the commit's
    # end). Each command: exit 1, one line naming the catalogue and the
    # reason, the store as before, verify clean; then without the shim it
    # succeeds, to the expected state. Last, a pull whose fetch-cache commit
    # fails still succeeds (the cache is a hint), to the expected state.
    local ncf=0 cfok=0 msg
    for round in 0 1 2 3; do
        S=$TMP/s-cat
        rm -rf "$S"
        cp -a "$T" "$S"
        for k in "${!CMDS[@]}"; do
            name=${CMDS[$k]%%|*} args=${CMDS[$k]#*|}
            case $round in 0) bytes=0 ;; 1) bytes=4200 ;; 2) bytes=$((FIRST[k] - 50)) ;; 3) bytes=$((TOTAL[k] - 50)) ;; esac
            if [ "$round" = 3 ] && [ "${TOTAL[k]}" = "${FIRST[k]}" ]; then
                # One commit only: keeps the store in step with EXPECT.
                # shellcheck disable=SC2086
                run --store "$S" $args
                check_rc "catalogue: $name without the shim" 0
                continue
            fi
            name="$name, WAL failing after $bytes of ${TOTAL[k]} bytes"
            ncf=$((ncf + 1)) ok=1
            before=$(catsnap "$S")
            # shellcheck disable=SC2086
            shimmed catalog.db-wal "$bytes" "$S" $args
            rc=$?
            err=$(cat "$TMP/err") msg=$err
            case "$err" in *Sanitizer*) ok=0; fail "$name: runs clean under the sanitizers" "${err:0:1500}" ;; esac
            if [ "$round" = 3 ]; then
                if [ "$rc" -ne 0 ] || [ -n "$err" ]; then
                    ok=0
                    fail "$name: the pull succeeds, quietly, when only its cache row fails" "exit $rc" "${err:0:400}"
                fi
                state_is "$name" "$S" "${EXPECT[k]}" "the store is the expected one"
                [ "$ok" = 1 ] && cfok=$((cfok + 1))
                echo "  $name: exit $rc"
                continue
            fi
            [ "$rc" -eq 1 ] || { ok=0; fail "$name: exit 1" "exit $rc" "${err:0:400}"; }
            case "$err" in
            *Sanitizer*) ;;
            "adapterctl: "*"'$S/catalog.db'"*": database or disk is full")
                [ "$(wc -l <"$TMP/err")" -eq 1 ] || { ok=0; fail "$name: one line on stderr" "$err"; } ;;
            *) ok=0; fail "$name: the message names the catalogue and says it is full" "$err" ;;
            esac
            state_is "$name" "$S" "$before" "the store is as before"
            # shellcheck disable=SC2086
            run --store "$S" $args
            [ "$rc" -eq 0 ] || { ok=0; fail "$name: succeeds without the shim" "exit $rc" "${err:0:400}"; }
            after=$(catsnap "$S")
            [ "$after" == "${EXPECT[k]}" ] ||
                { ok=0; fail "$name: without the shim it gives the expected store" "$(diff <(echo "${EXPECT[k]}") <(echo "$after"))"; }
            [ "$ok" = 1 ] && cfok=$((cfok + 1))
            [ "$round" = 2 ] && echo "  $name: ${msg:0:200}"
        done
    done
    echo "catalogue WAL write failures: $cfok/$ncf clean (exit 1, one clear line, store unchanged, verify clean, rerun succeeds; a failed cache row leaves the pull a success)"
    [ "$cfok" -eq "$ncf" ] && pass "every failing write to the catalogue's WAL was clean"

    # b) Writes to catalog.db fail. In WAL mode it is written only when the
    # WAL is copied back (at the last close), after the commit: the command
    # succeeds, its change safe in the WAL, and the next open folds it in.
    # Nothing is lost whether the copy fails at once or part way.
    ncf=0 cfok=0
    for bytes in 0 4200; do
        S=$TMP/s-cat
        rm -rf "$S"
        cp -a "$T" "$S"
        for k in "${!CMDS[@]}"; do
            name="${CMDS[$k]%%|*}, catalog.db failing after $bytes bytes" args=${CMDS[$k]#*|}
            ncf=$((ncf + 1)) ok=1
            # shellcheck disable=SC2086
            shimmed catalog.db "$bytes" "$S" $args
            rc=$?
            err=$(cat "$TMP/err")
            [ "$rc" -eq 0 ] || { ok=0; fail "$name: exits 0 (the commit is in the WAL)" "exit $rc" "${err:0:400}"; }
            case "$err" in *Sanitizer*) ok=0; fail "$name: runs clean under the sanitizers" "${err:0:1500}" ;; esac
            [ -s "$S/catalog.db-wal" ] || { ok=0; fail "$name: the WAL the failed copy left holds the commit"; }
            state_is "$name" "$S" "${EXPECT[k]}" "the store is the expected one"
            [ -e "$S/catalog.db-wal" ] && { ok=0; fail "$name: the next open folds the WAL into catalog.db"; }
            [ "$ok" = 1 ] && cfok=$((cfok + 1))
        done
    done
    echo "catalog.db write failures: $cfok/$ncf clean (the command's commit kept, folded in by the next run)"
    [ "$cfok" -eq "$ncf" ] && pass "every failing write to catalog.db lost nothing"

    # c) A new store: catalog.db is written directly before the switch to WAL.
    for bytes in 0 4200; do
        S=$TMP/s-cat-new$bytes
        name="add into a new store, catalog.db failing after $bytes bytes"
        shimmed catalog.db "$bytes" "$S" -q add "$AD/lora" --name l1
        rc=$?
        err=$(cat "$TMP/err")
        echo "  $name: exit $rc${err:+, ${err:0:200}}"
        if [ "$rc" -eq 0 ]; then
            # It got as far as WAL mode: the add is committed there.
            check "$name: exit 0 only with l1 listed" "l1@1" "$(names "$S")"
        else
            check_rc "$name: exit 1" 1
            case "$err" in
            "adapterctl: "*"'$S/catalog.db'"*": database or disk is full")
                check "$name: one line on stderr" 1 "$(wc -l <"$TMP/err")" ;;
            *) fail "$name: the message names the catalogue and says it is full" "$err" ;;
            esac
            run --store "$S" -q add "$AD/lora" --name l1
            check_rc "$name: the add without the shim then succeeds" 0
        fi
        run --store "$S" verify
        check_rc "$name: verify is clean after" 0
    done
    echo "failing catalogue writes: $(($(date +%s) - t0)) s"
}

if cc -shared -fPIC -O2 -o "$FW" tests/cli/lib/failwrite.c -ldl 2>"$TMP/cc.err"; then
    catalogue_faults
else
    echo "SKIP: failing catalogue writes: the shim does not build: $(head -c 300 "$TMP/cc.err")"
fi

echo "test_faults.sh: $npass passed, $nfail failed in $(($(date +%s) - start_s)) s"
[ "$nfail" -eq 0 ]
