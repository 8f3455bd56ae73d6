#!/usr/bin/env bash
# test_concurrency.sh: 8 processes mixing add, rm, tag, list, pull and gc on
# one store (issue 8, concurrency): no error, no lost row, verify clean.
#
# Each worker owns the names wK-0..wK-5 and tags every row it makes with
# owner=wK, so only it ever changes those rows and it knows, from its own
# bookkeeping, what every command must do: which version an add or pull gets
# (versions count up from the highest a name ever had), whether a pull is
# "unchanged" (the same source already here under that name), what rm
# removes (the newest version) and the tags a tag command leaves. Every
# worker also runs list (its own rows: --tag owner=wK must list exactly its
# live rows) and gc (which touches everything, its packs shared between
# workers: each adds the same fixtures, plus variants of its own with a
# config of their own and so a pack of their own). Each worker checks every
# command's output against its prediction while running and writes a log of
# what it did. A ninth process runs verify in a loop beside them. At the end:
#  - every command exited 0 with nothing on stderr (-q), every prediction held,
#    every verify beside the workload was clean;
#  - the store lists exactly the rows the logs add up to (replayed in
#    python3): names, versions, tags as last set, sources;
#  - every listed adapter exports byte for byte the two files of its source
#    directory (export gives back the bytes that were added);
#  - verify is clean; gc then frees nothing referenced, leaves no orphan pack
#    and no temporary file, the list is unchanged and verify is clean again.
#
# Pulls come from nginx on loopback (tests/nginx.sh) serving a published
# store (made with `adapterctl publish` from a separate store) and copies of
# fixture PEFT directories. Without nginx the pull part prints a SKIP line and
# the rest runs.
#
# STRESS_FULL=1 runs for 60 s (default 10 s; CONC_SECONDS overrides both).
# The workers draw their operations from bash's $RANDOM, seeded per worker
# (CONC_SEED), so a run is reproducible up to timing. CONC_BREAK=1 makes
# worker 1 leave its first rm out of its log: the run must then fail (the
# check that this test can fail).
#
# Run from the repository root. ADAPTERCTL names the binary.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
. tests/nginx.sh
bgpids=()
cleanup() {
    for p in "${bgpids[@]+"${bgpids[@]}"}"; do kill -9 "$p" 2>/dev/null; done
    nginx_stop
    rm -rf "$TMP"
}
trap cleanup EXIT
npass=0 nfail=0

WORKERS=8 NAMES=6 MAXROWS=12
if [ "${STRESS_FULL:-0}" = 1 ]; then SECS=60; else SECS=10; fi
SECS=${CONC_SECONDS:-$SECS}
SEED=${CONC_SEED:-20261122}
JOBS=$(nproc 2>/dev/null || echo 2)
start_s=$(date +%s)

# Loopback only, short backoffs, no proxy.
export ADAPTERCTL_FETCH_BACKOFF_MS=50
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export no_proxy='*' NO_PROXY='*'

PYSCRIPT=$TMP/cc.py
. tests/cli/lib/common.sh

cat >"$PYSCRIPT" <<'PYEOF'
import json, os, sys

sys.path.insert(0, os.environ["ACTL_CLI_LIB"])
from adapter_files import objects_census, variant

def cmd_variant(src, dest, ident):
    variant(src, dest, "x_conc", ident, indent=2)

def replay(logs):
    """The rows the workers' logs add up to: (name, version) -> facts."""
    rows = {}
    for path in logs:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                w = line.rstrip("\n").split("\t")
                key = (w[1], int(w[2]))
                where = "%s:%d" % (os.path.basename(path), n)
                if w[0] == "new":
                    if key in rows:
                        print("%s: %s@%s made twice" % (where, *key))
                    tags = dict(t.split("=", 1) for t in w[3].split(",") if t)
                    rows[key] = {"tags": tags, "source": w[4], "dir": w[5]}
                elif w[0] == "rm":
                    if rows.pop(key, None) is None:
                        print("%s: %s@%s removed but never made" % (where, *key))
                elif w[0] == "tag":
                    if key not in rows:
                        print("%s: %s@%s tagged but not there" % (where, *key))
                        continue
                    k, v = w[3].split("=", 1)
                    rows[key]["tags"][k] = v
                    if w[4]:
                        rows[key]["tags"].pop(w[4], None)
                else:
                    print("%s: unknown record %r" % (where, w[0]))
    return rows

def cmd_compare(listdoc, plan, *logs):
    """The listed rows are exactly the logged ones, with their tags and
    sources; plan gets one 'name@version<TAB>source dir' line per row."""
    want = replay(logs)
    with open(listdoc) as f:
        got = {(e["name"], e["version"]): e for e in json.load(f)}
    for k in sorted(set(want) - set(got)):
        print("lost: %s@%d (in the logs, not listed)" % k)
    for k in sorted(set(got) - set(want)):
        print("extra: %s@%d (listed, not in any log)" % k)
    for k in sorted(set(want) & set(got)):
        if got[k]["tags"] != want[k]["tags"]:
            print("%s@%d: tags %s, want %s" % (*k, json.dumps(got[k]["tags"], sort_keys=True),
                                              json.dumps(want[k]["tags"], sort_keys=True)))
        if got[k]["source"] != want[k]["source"]:
            print("%s@%d: source %r, want %r" % (*k, got[k]["source"], want[k]["source"]))
    with open(plan, "w") as f:
        for k in sorted(set(want) & set(got)):
            f.write("%s@%d\t%s\n" % (*k, want[k]["dir"]))

def cmd_objects(store, listdoc):
    print(*objects_census(store, listdoc))

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PYEOF

# ---- sources ----------------------------------------------------------------

S=$TMP/store
"$BIN" --store "$S" -q init >/dev/null || fail "init of the shared store" "exit $?"
# Added by every worker (so their packs are shared), and pulled.
ADD_FIX=(lora lora-dora lora-bf16 road-1 mos bottleneck-series)
PULL_FIX=(lora mos road-2 bottleneck-parallel)
for w in $(seq 1 "$WORKERS"); do
    for j in 0 1; do
        fx=${ADD_FIX[$(((w + j) % ${#ADD_FIX[@]}))]}
        py variant "$FIX/adapters/base-tiny/$fx" "$TMP/var/w$w-v$j" "w$w-v$j"
    done
done

URL=
mkdir -p "$TMP/www/peft"
P=$TMP/publisher
for fx in "${PULL_FIX[@]}"; do
    cp -r "$FIX/adapters/base-tiny/$fx" "$TMP/www/peft/$fx"
    "$BIN" --store "$P" -q add "$FIX/adapters/base-tiny/$fx" --name "pub-$fx" --tag origin=pub \
        >/dev/null || fail "add pub-$fx to the publishing store" "exit $?"
done
"$BIN" --store "$P" -q publish "$TMP/www/pub" >/dev/null || fail "publish" "exit $?"
if nginx_start "$TMP/www"; then
    URL=$NGINX_URL
    echo "nginx on $URL serves a published store (${PULL_FIX[*]}) and their PEFT directories"
else
    echo "SKIP: the pull part (no pulls in the mix): $NGINX_ERROR"
fi

# ---- the workers ------------------------------------------------------------

# worker K: runs operations on $S until $END, checking each against its own
# bookkeeping; writes $TMP/wK.log (what it did), wK.err (failed commands),
# wK.bad (broken predictions) and wK.counts.
worker() {
    local w=$1 me=w$1
    local log=$TMP/w$w.log errf=$TMP/w$w.err bad=$TMP/w$w.bad last_err=$TMP/w$w.stderr
    # row[NAME@V] = "tags<TAB>source<TAB>source dir"; last[NAME] = highest version ever.
    local -A row=() last=()
    local n_add=0 n_pull=0 n_same=0 n_tag=0 n_rm=0 n_list=0 n_gc=0 n_fail=0 n_bad=0
    local skip_rm=${CONC_BREAK:-0}
    local out rc r name v k fx dir src tags want got newest
    RANDOM=$((SEED + 7919 * w))
    : >"$log"
    : >"$errf"
    : >"$bad"

    # act ARGS...: one command on the store; out, rc. A failure or any stderr
    # is recorded.
    act() {
        out=$("$BIN" --store "$S" -q "$@" 2>"$last_err")
        rc=$?
        if [ "$rc" -ne 0 ] || [ -s "$last_err" ]; then
            n_fail=$((n_fail + 1))
            { echo "adapterctl $* -> exit $rc"; head -c 2000 "$last_err"; } >>"$errf"
        fi
    }
    expect() { # expect WHAT WANT GOT
        if [ "$2" != "$3" ]; then
            n_bad=$((n_bad + 1))
            printf '%s\n  want: %s\n  got:  %s\n' "$1" "$2" "$3" >>"$bad"
        fi
    }
    # newest NAME: the highest live version of NAME in newest (0: none).
    newest_of() {
        newest=0
        for k in "${!row[@]}"; do
            [ "${k%@*}" = "$1" ] && [ "${k##*@}" -gt "$newest" ] && newest=${k##*@}
        done
    }
    # with_source NAME SOURCE: the highest live version of NAME from SOURCE.
    with_source() {
        newest=0
        local rest
        for k in "${!row[@]}"; do
            [ "${k%@*}" = "$1" ] || continue
            rest=${row[$k]#*$'\t'}
            [ "${rest%%$'\t'*}" = "$2" ] && [ "${k##*@}" -gt "$newest" ] && newest=${k##*@}
        done
    }
    # A live name of this worker, at random, in name ("" when none).
    pick_live() {
        local names=() n
        for k in "${!row[@]}"; do names+=("${k%@*}"); done
        name=
        [ ${#names[@]} -eq 0 ] && return
        name=${names[$((RANDOM % ${#names[@]}))]}
    }
    record_new() { # record_new NAME V TAGS SOURCE DIR
        row[$1@$2]="$3"$'\t'"$4"$'\t'"$5"
        [ "$2" -gt "${last[$1]:-0}" ] && last[$1]=$2
        printf 'new\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$log"
    }
    # tag_apply TAGS SET UNSET: TAGS (k=v,... sorted by key) with SET
    # (k=v) applied and the key UNSET removed, in tags.
    tag_apply() {
        local -A t=()
        local kv IFS=,
        for kv in $1; do t[${kv%%=*}]=${kv#*=}; done
        t[${2%%=*}]=${2#*=}
        [ -n "$3" ] && unset "t[$3]"
        tags=
        for kv in note origin owner stage; do
            [ -n "${t[$kv]+x}" ] && tags=${tags:+$tags,}$kv=${t[$kv]}
        done
    }

    while [ "$EPOCHSECONDS" -lt "$END" ]; do
        r=$((RANDOM % 100))
        # add 25%, pull 15%, tag 12%, rm 28%, list 10%, gc 10%: about as
        # many rows go as come, and the cap turns the excess into rm's.
        if [ ${#row[@]} -eq 0 ] && [ "$r" -ge 40 ] && [ "$r" -lt 80 ]; then r=0; fi
        if [ ${#row[@]} -ge "$MAXROWS" ] && [ "$r" -lt 40 ]; then r=60; fi
        if [ -z "$URL" ] && [ "$r" -ge 25 ] && [ "$r" -lt 40 ]; then r=0; fi
        if [ "$r" -lt 25 ]; then
            # add: a shared fixture or one of this worker's variants.
            name=$me-$((RANDOM % NAMES))
            k=$((RANDOM % (${#ADD_FIX[@]} + 2)))
            if [ "$k" -lt ${#ADD_FIX[@]} ]; then dir=$FIX/adapters/base-tiny/${ADD_FIX[$k]}
            else dir=$TMP/var/$me-v$((k - ${#ADD_FIX[@]})); fi
            tags=owner=$me
            args=(--tag "owner=$me")
            if [ $((RANDOM % 2)) -eq 0 ]; then
                tags=owner=$me,stage=a$RANDOM
                args+=(--tag "${tags#*,}")
            fi
            v=$((${last[$name]:-0} + 1))
            act add "$dir" --name "$name" "${args[@]}"
            n_add=$((n_add + 1))
            got=${out%%:*}
            expect "add $dir as $name" "added $name@$v" "$got"
            if [ "$rc" -eq 0 ]; then
                case "$got" in "added $name@"*) v=${got##*@} ;; esac
                record_new "$name" "$v" "$tags" "$dir" "$dir"
            fi
        elif [ "$r" -lt 40 ]; then
            # pull: a published entry or a PEFT directory, under one of its names.
            name=$me-$((RANDOM % NAMES))
            fx=${PULL_FIX[$((RANDOM % ${#PULL_FIX[@]}))]}
            dir=$FIX/adapters/base-tiny/$fx
            if [ $((RANDOM % 2)) -eq 0 ]; then
                src="$URL/pub#pub-$fx@1"
                tags=origin=pub,owner=$me
                # Unchanged when NAME@1 holds this pack (the fixture's, whichever
                # way it came), or a row of NAME came from this entry.
                v=
                if [ -n "${row[$name@1]+x}" ] && [ "${row[$name@1]##*$'\t'}" = "$dir" ]; then
                    v=1
                else
                    with_source "$name" "$src"
                    [ "$newest" -gt 0 ] && v=$newest
                fi
                act pull "$URL/pub" "pub-$fx" --name "$name" --tag "owner=$me"
            else
                src=$URL/peft/$fx
                tags=owner=$me
                with_source "$name" "$src"
                v=
                [ "$newest" -gt 0 ] && v=$newest
                act pull "$src" --name "$name" --tag "owner=$me"
            fi
            n_pull=$((n_pull + 1))
            got=${out%% is up to date*}
            got=${got%% from *}
            if [ -n "$v" ]; then
                n_same=$((n_same + 1))
                expect "pull $src as $name" "unchanged: $name@$v" "$got"
            else
                # The published version (1) when free, else the next one.
                if [ "${src#*#}" != "$src" ] && [ -z "${row[$name@1]+x}" ]; then
                    v=1
                else
                    v=$((${last[$name]:-0} + 1))
                fi
                expect "pull $src as $name" "pulled $name@$v" "$got"
                if [ "$rc" -eq 0 ]; then
                    case "$got" in "pulled $name@"*) v=${got##*@} ;; esac
                    record_new "$name" "$v" "$tags" "$src" "$dir"
                fi
            fi
        elif [ "$r" -lt 52 ]; then
            # tag the newest version of a live name: set one key, maybe unset another.
            pick_live
            newest_of "$name"
            v=$newest
            if [ $((RANDOM % 2)) -eq 0 ]; then k=stage=t$RANDOM; un=note
            else k=note=n$RANDOM; un=stage; fi
            [ $((RANDOM % 3)) -eq 0 ] || un=
            tag_apply "${row[$name@$v]%%$'\t'*}" "$k" "$un"
            if [ -n "$un" ]; then act tag "$name" "$k" --unset "$un"; else act tag "$name" "$k"; fi
            n_tag=$((n_tag + 1))
            expect "tag $name $k${un:+ --unset $un}" "$name@$v  $tags" "$out"
            if [ "$rc" -eq 0 ]; then
                row[$name@$v]=$tags$'\t'${row[$name@$v]#*$'\t'}
                printf 'tag\t%s\t%s\t%s\t%s\n' "$name" "$v" "$k" "$un" >>"$log"
            fi
        elif [ "$r" -lt 80 ]; then
            # rm the newest version of a live name.
            pick_live
            newest_of "$name"
            v=$newest
            act rm "$name"
            n_rm=$((n_rm + 1))
            expect "rm $name" "removed $name@$v" "$out"
            if [ "$rc" -eq 0 ]; then
                unset "row[$name@$v]"
                if [ "$skip_rm" = 1 ] && [ "$w" = 1 ]; then skip_rm=0
                else printf 'rm\t%s\t%s\n' "$name" "$v" >>"$log"; fi
            fi
        elif [ "$r" -lt 90 ]; then
            # list: this worker's rows are exactly its live ones.
            if [ $((RANDOM % 4)) -eq 0 ]; then
                act list --all-versions
            else
                act --json list --tag "owner=$me" --all-versions
                got=$(sed -n -e 's/^    "name": "\(.*\)",$/\1/p' -e 's/^    "version": \([0-9]*\),$/@\1/p' \
                    <<<"$out" | paste -d '' - - | sort)
                want=$(printf '%s\n' "${!row[@]}" | sort)
                [ ${#row[@]} -eq 0 ] && want=
                expect "list --tag owner=$me --all-versions" "$(echo $want)" "$(echo $got)"
            fi
            n_list=$((n_list + 1))
        else
            act gc
            n_gc=$((n_gc + 1))
        fi
    done
    echo "$n_add $n_pull $n_same $n_tag $n_rm $n_list $n_gc $n_fail $n_bad" >"$TMP/w$w.counts"
}

# verify_loop: a ninth process re-verifies the store while the workers run:
# rows read in one snapshot must find their packs even as rm and gc go on.
verify_loop() {
    local n=0 f=0
    while [ "$EPOCHSECONDS" -lt "$END" ]; do
        if ! "$BIN" --store "$S" -q verify >"$TMP/verify.out" 2>"$TMP/verify.stderr" ||
            [ -s "$TMP/verify.stderr" ]; then
            f=$((f + 1))
            head -c 1000 "$TMP/verify.out" "$TMP/verify.stderr" >>"$TMP/verify.err"
        fi
        n=$((n + 1))
    done
    echo "$n $f" >"$TMP/verify.counts"
}

END=$(($(date +%s) + SECS))
t0=$(date +%s%N)
for w in $(seq 1 "$WORKERS"); do
    worker "$w" &
    bgpids+=($!)
done
verify_loop &
bgpids+=($!)
wait "${bgpids[@]}"
bgpids=()
t1=$(date +%s%N)

# ---- the figures and the checks ---------------------------------------------

tot=(0 0 0 0 0 0 0 0 0)
missing=0
for w in $(seq 1 "$WORKERS"); do
    if ! read -r -a c <"$TMP/w$w.counts" 2>/dev/null; then missing=$((missing + 1)); continue; fi
    for i in "${!tot[@]}"; do tot[$i]=$((tot[i] + c[i])); done
done
ops=$((tot[0] + tot[1] + tot[3] + tot[4] + tot[5] + tot[6]))
echo "workload: $WORKERS processes, $(((t1 - t0) / 1000000)) ms, $ops operations:" \
    "${tot[0]} add, ${tot[1]} pull (${tot[2]} of them unchanged), ${tot[3]} tag, ${tot[4]} rm," \
    "${tot[5]} list, ${tot[6]} gc"
read -r nverify fverify <"$TMP/verify.counts" 2>/dev/null || nverify=0 fverify=missing
echo "beside them: $nverify verify runs"
check "every worker finished" "0" "$missing"
check "every verify beside the workload was clean" "0" "$fverify"
[ "$fverify" = 0 ] || head -c 2000 "$TMP/verify.err"
check "every command exited 0 with nothing on stderr" "0" "${tot[7]}"
if [ "${tot[7]}" -ne 0 ]; then cat "$TMP"/w*.err | head -30; fi
check "every command did what the worker's bookkeeping predicted" "0" "${tot[8]}"
if [ "${tot[8]}" -ne 0 ]; then cat "$TMP"/w*.bad | head -30; fi
[ -n "$URL" ] && { [ "${tot[1]}" -gt 0 ] && pass "pulls ran in the mix" || fail "pulls ran in the mix"; }

logs=()
for w in $(seq 1 "$WORKERS"); do logs+=("$TMP/w$w.log"); done
run --store "$S" --json list --all-versions
check "list --all-versions exits 0" "0" "$rc"
cp "$TMP/out" "$TMP/list-before-gc"
nrows=$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/out")
check_py "the store lists exactly the rows the workers' logs add up to (tags, sources)" \
    compare "$TMP/out" "$TMP/plan" "${logs[@]}"

# Every row exports the bytes of its source directory.
EXP=$TMP/exp
mkdir -p "$EXP"
msg=$(cut -f1 "$TMP/plan" | xargs -P "$JOBS" -I{} sh -c \
    '"$1" --store "$2" -q export "$3" "$4/$3" >/dev/null 2>>"$4.err" || echo "export $3 exited $?"' \
    sh "$BIN" "$S" {} "$EXP")
while IFS=$'\t' read -r ref dir; do
    for f in adapter_model.safetensors adapter_config.json; do
        cmp -s "$EXP/$ref/$f" "$dir/$f" || msg+=$'\n'"$ref: $f differs from $dir/$f"
    done
done <"$TMP/plan"
nexp=$(wc -l <"$TMP/plan")
check "all $nexp listed adapters export the bytes of their sources" "" "${msg#$'\n'}"
san=$(cat "$TMP"/w*.err "$TMP/verify.err" "$EXP.err" 2>/dev/null | grep -m1 -A20 Sanitizer)
check "the workers and the exports ran clean under the sanitizers" "" "$san"

run --store "$S" verify
check_rc "verify after the workload exits 0" 0
run --store "$S" --json gc
check_rc "a final gc exits 0" 0
gc_json=$(tr -d ' \n' <<<"$out")
run --store "$S" --json list --all-versions
check "the list is the same after the final gc" "$(cat "$TMP/list-before-gc")" "$out"
read -r refd orphans others nrefs <<<"$(py objects "$S" "$TMP/out")"
check "every referenced pack is on disk" "$nrefs" "$refd"
check "no orphan pack and no temporary file after the final gc" "0 0" "$orphans $others"
run --store "$S" verify
check_rc "verify after the final gc exits 0" 0
case "$out" in ok:*) pass "verify after the final gc says ok" ;;
*) fail "verify after the final gc says ok" "${out:0:600}" "${err:0:300}" ;; esac

echo "end: $nrows rows from $WORKERS workers, $nrefs packs; final gc: $gc_json"
echo "test_concurrency.sh: $npass passed, $nfail failed in $(($(date +%s) - start_s)) s"
[ "$nfail" -eq 0 ]
