# tests/cli/lib/common.sh: helpers shared by the CLI test scripts; sourced, never
# run by itself (tests/run.sh runs tests/cli/*.sh only).
#
# The sourcing script sets BIN (the binary), TMP (a scratch directory), PY
# (python3) and npass=0 nfail=0; PYSCRIPT names its python3 helper for py and
# check_py; S is the current store for st.

# The python3 helpers import st_reader.py (a safetensors reader) from here.
export ACTL_CLI_LIB=$PWD/tests/cli/lib

# pass NAME / fail NAME DETAIL...: count and report one check.
pass() { npass=$((npass + 1)); echo "ok: $1"; }
fail() {
    nfail=$((nfail + 1))
    printf 'FAIL: %s\n' "$1"
    shift
    for line in "$@"; do printf '%s\n' "$line" | sed 's/^/  /'; done
}

# run ARGS...: runs the binary; sets rc, out (stdout) and err (stderr). The
# stdout also stays in $TMP/out for python3. A sanitizer report fails the run
# whatever its exit status, so error paths are covered too.
run() {
    "$BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    out=$(cat "$TMP/out")
    err=$(cat "$TMP/err")
    case "$err" in
    *Sanitizer*) fail "adapterctl $* runs clean under the sanitizers" "${err:0:2000}" ;;
    esac
}
# st ARGS...: run against the current store $S.
st() { run --store "$S" "$@"; }

# check NAME EXPECTED GOT
check() {
    if [ "$2" == "$3" ]; then pass "$1"; else fail "$1" "expected: $2" "got:      $3"; fi
}
# check_rc NAME WANT: the last run's exit status.
check_rc() {
    if [ "$rc" -eq "$2" ]; then pass "$1"; else
        fail "$1" "expected exit $2, got $rc" "stdout: ${out:0:400}" "stderr: ${err:0:600}"; fi
}
# check_has NAME NEEDLE TEXT / check_lacks NAME NEEDLE TEXT
check_has() {
    case "$3" in
    *"$2"*) pass "$1" ;;
    *) fail "$1" "expected to contain: $2" "got: ${3:0:600}" ;;
    esac
}
check_lacks() {
    case "$3" in
    *"$2"*) fail "$1" "expected not to contain: $2" "got: ${3:0:600}" ;;
    *) pass "$1" ;;
    esac
}
# check_py NAME SUBCOMMAND ARGS...: runs a check of $PYSCRIPT; it prints
# nothing on success and one line per problem otherwise.
check_py() {
    local name=$1 msg
    shift
    msg=$("$PY" "$PYSCRIPT" "$@" 2>&1)
    if [ -z "$msg" ]; then pass "$name"; else fail "$name" "$msg"; fi
}
# py SUBCOMMAND ARGS...: a value computed by $PYSCRIPT.
py() { "$PY" "$PYSCRIPT" "$@"; }
