#!/usr/bin/env bash
# run.sh HARNESS...: runs each libFuzzer harness (a path under BUILD/fuzz/)
# for $FUZZ_SECONDS seconds, or $FUZZ_RUNS executions when that is set,
# $FUZZ_JOBS harnesses at a time, on inputs of at most $FUZZ_MAX_LEN bytes
# (default 64 KiB; smaller inputs run faster). Each keeps its corpus in
# BUILD/corpus/NAME, started from the seeds tests/fuzz/seeds.py writes, and
# its crashes in BUILD/crashes/NAME. A single allocation above 1 GiB or RSS above 2 GiB is
# a finding (a hostile size got through), as is an input taking over 25 s.
# Prints one line per harness (executions, rate, corpus, result) and exits
# non-zero when any harness crashed. Run from the repository root.
set -u
[ $# -gt 0 ] || { echo "run.sh: no harness given" >&2; exit 2; }
BUILD=$(dirname "$(dirname "$1")")
SECONDS_EACH=${FUZZ_SECONDS:-60}
RUNS=${FUZZ_RUNS:-}
JOBS=${FUZZ_JOBS:-1}
MAX_LEN=${FUZZ_MAX_LEN:-65536}
mkdir -p "$BUILD/logs"
# No allocation stacks: recording one per malloc halves the rate. A finding
# is replayed (BUILD/replay/NAME FILE, or the harness given the file) for
# the full report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0}

ADAPTERCTL=$BUILD/adapterctl python3 tests/fuzz/seeds.py "$BUILD/seeds" >/dev/null || exit 1

one() {
    h=$1
    name=$(basename "$h")
    corpus=$BUILD/corpus/$name crashes=$BUILD/crashes/$name log=$BUILD/logs/$name.log
    mkdir -p "$corpus" "$crashes"
    if [ -n "$RUNS" ]; then limit="-runs=$RUNS"; else limit="-max_total_time=$SECONDS_EACH"; fi
    "$h" "$limit" -timeout=25 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=$MAX_LEN \
        -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "$BUILD/seeds/$name" \
        >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    files=$(find "$corpus" -type f | wc -l)
    if [ $rc -eq 0 ]; then result=ok; else result="CRASH (exit $rc; see $log and $crashes)"; fi
    printf '%-24s %12s runs %8s exec/s %6ss corpus %6s  %s\n' "$name" "${runs:-?}" \
        "${rate:-?}" "${secs:-?}" "$files" "$result"
    [ $rc -eq 0 ]
}
export -f one
export BUILD SECONDS_EACH RUNS MAX_LEN
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'one "$1"' _ {}
