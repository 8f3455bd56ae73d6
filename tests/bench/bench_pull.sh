#!/usr/bin/env bash
# bench_pull.sh: `adapterctl pull` of a 256 MiB adapter from nginx on
# loopback against the curl command-line tool fetching the same bytes in the
# same run (issue 4, acceptance 5; goal: pull at >= 0.9 of curl's rate).
#
# The adapter: a LoRA, r=128 on q/k/v/o of 32 layers of width 4096, BF16
# values shaped like trained ones (N(0, 0.02) exponents, random mantissas):
# 268,435,456 bytes of tensors. Generated once into
# ${TMPDIR:-/tmp}/adapterctl-bench-pull/ and reused by later runs.
#
# Two sources, each timed best of 3, interleaved with the baseline:
#   PEFT URL         pull URL/lora256            vs curl -o FILE of its safetensors
#   published store  pull URL/pub lora256        vs curl -o FILE of its pack
# Each figure is the wall time and, in brackets, the CPU time (user + system)
# the command used, beside the number of CPUs. Printed beside them: curl -o
# /dev/null (no disk), a local `add` of the same directory (PEFT URL), and
# curl -o FILE followed by an fsync of the file (published store: a pull
# keeps the pack, and must make it durable before the catalogue names it).
#
# The transfer itself runs as fast as curl's: the body goes to the file in
# 1 MiB writes (libcurl hands it over 16 KiB at a time; a write per piece
# would cost the transfer's thread a quarter of its time).
#
# What a pull does that curl does not, and how it overlaps the transfer
# (lib/pull.c "following a download", lib/fetch.c, lib/pack.c):
#  - the file's SHA-256, on a thread that reads the file back a little behind
#    the writes;
#  - PEFT URL: every tensor's pack frame (byte planes, zstd) and SHA-256, made
#    by worker threads as soon as the tensor's bytes are in the file (the
#    safetensors header comes first and says where each one is); after the
#    last byte the pulling thread joins them for what is left; then the
#    strict validation of the whole adapter, and the pack written and hashed
#    at once (two threads), its writeback started as it is written so that
#    the fsync at the end waits for little;
#  - published store: every frame decoded and its tensor's SHA-256 checked by
#    worker threads as the frame arrives (the pack's header lists them), the
#    pack written back to disk as it arrives and fsynced at the end.
# Nothing is trusted before the download has completed and its digest
# matched: the strict reading of the complete file decides which results
# made on the way are used (the others are made again), and a body that
# restarts from zero drops them all.
#
# What limits the ratio is CPU time, not the network: about twice SHA-256
# over every byte (the file's, and each tensor's for the pack), the
# compression or decompression of every tensor, and the memory all of it
# fills (the pack in memory, page cache for the file and the pack), on top
# of the receive path curl itself spends its time in. On a machine with few
# CPUs, the pull's CPU time divided by their number bounds its wall time
# from below, whatever overlaps what; the CPU figures show how close it runs
# to that bound.
# Prints figures; asserts nothing. Skips, saying so, without nginx or curl.
#
#   bash tests/bench/bench_pull.sh [path/to/adapterctl]   (from the repository root)
set -u
BIN=${1:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
RUNS=${BENCH_RUNS:-3}
GEN=${TMPDIR:-/tmp}/adapterctl-bench-pull
. tests/nginx.sh
W=$(mktemp -d)
trap 'nginx_stop; rm -rf "$W"' EXIT
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

if ! command -v curl >/dev/null; then
    echo "SKIP: bench_pull: the curl command-line tool is not installed (Debian package curl)"
    exit 0
fi
if ! nginx_find >/dev/null; then
    echo "SKIP: bench_pull: nginx is not installed (Debian package nginx)"
    exit 0
fi

# ---- the adapter (once) -------------------------------------------------------

if [ ! -f "$GEN/lora256/.complete" ]; then
    echo "generating a 256 MiB BF16 LoRA into $GEN/lora256 (once)"
    rm -rf "$GEN/lora256"
    mkdir -p "$GEN/lora256"
    python3 - "$GEN/lora256" <<'EOF' || { echo "bench_pull: cannot generate the adapter" >&2; exit 1; }
import json, math, os, struct, sys
out = sys.argv[1]
r, width, layers = 128, 4096, 32
mods = ["q_proj", "k_proj", "v_proj", "o_proj"]
# BF16 = sign(1) exponent(8) mantissa(7): the high byte holds the sign and the
# exponent's top 7 bits, the low byte the exponent's last bit and the
# mantissa. High bytes: a table from a random byte to the sign and an
# exponent drawn from |N(0, 0.02)|; low bytes: random. No NaN, no Inf.
sigma = 0.02
def p_between(lo, hi):  # P(lo <= |x| < hi), x ~ N(0, sigma)
    return math.erf(hi / (sigma * math.sqrt(2))) - math.erf(lo / (sigma * math.sqrt(2)))
weights = {}
for e in range(-30, 2):  # |x| in [2^e, 2^(e+1)), both exponents of a pair
    k = (e + 127) >> 1
    weights[k] = weights.get(k, 0.0) + p_between(2.0 ** e, 2.0 ** (e + 1))
cells, acc = [], 0.0
total = sum(weights.values())
ks = sorted(weights)
for k in ks:
    acc += weights[k] / total
    cells.append((acc, k))
table = bytearray(256)
for b in range(256):
    u = ((b & 0x7F) + 0.5) / 128
    k = next(k for c, k in cells if u <= c) if u <= cells[-1][0] else ks[-1]
    table[b] = (b & 0x80) | k
def bf16(n):
    raw = os.urandom(2 * n)
    buf = bytearray(raw)
    buf[1::2] = raw[1::2].translate(table)
    return bytes(buf)
hdr, offset, names = {"__metadata__": {"format": "pt"}}, 0, []
for layer in range(layers):
    for m in mods:
        k = "base_model.model.model.layers.%d.self_attn.%s" % (layer, m)
        for name, shape in ((k + ".lora_A.weight", [r, width]), (k + ".lora_B.weight", [width, r])):
            n = shape[0] * shape[1] * 2
            hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
            names.append((name, shape[0] * shape[1]))
            offset += n
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for _, numel in names:
        f.write(bf16(numel))
with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 256, "target_modules": mods,
               "base_model_name_or_path": "bench/llama-4096"}, f)
open(os.path.join(out, ".complete"), "w").close()
EOF
fi
SRC=$GEN/lora256
BYTES=$(($(stat -c %s "$SRC/adapter_model.safetensors") + $(stat -c %s "$SRC/adapter_config.json")))

# ---- the server ---------------------------------------------------------------------

mkdir -p "$W/www" "$W/tmp"
ln -s "$SRC" "$W/www/lora256"
if ! nginx_start "$W/www"; then
    echo "SKIP: bench_pull: $NGINX_ERROR"
    exit 0
fi
U=$NGINX_URL

mbs() { python3 -c "import sys; print('%.1f' % (float(sys.argv[1]) / 1e6 / float(sys.argv[2])))" "$1" "$2"; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) / float(sys.argv[1])))" "$1" "$2"; }
# best "WALL CPU"...: the pair with the least wall time.
best() { printf '%s\n' "$@" | sort -g -k1,1 | head -1; }
wall() { echo "${1% *}"; }
cpu() { echo "${1#* }"; }
# timed CMD...: prints "WALL CPU" in seconds (CPU: user + system of CMD and
# its children), measured by python around the command alone; exits the
# bench when the command fails.
TIMER='import resource, subprocess, sys, time
out, err, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    rc = subprocess.call(argv, stdout=o, stderr=e)
    t1 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.3f %.3f" % (t1 - t0, ru.ru_utime + ru.ru_stime))
sys.exit(rc)'
timed() {
    if ! python3 -c "$TIMER" "$W/cmd.out" "$W/cmd.err" "$@"; then
        echo "bench_pull: '$*' failed: $(head -c 500 "$W/cmd.err")" >&2
        exit 1
    fi
}
fresh() { rm -rf "$W/store" "$W/file"*; sync; }
CPUS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo "?")

# Warm the page cache on the server side, so every run reads from memory.
curl -sf -o /dev/null "$U/lora256/adapter_model.safetensors" || {
    echo "bench_pull: nginx does not serve the adapter" >&2
    exit 1
}

# ---- PEFT URL ------------------------------------------------------------------------

t_pull=() t_curl=() t_null=() t_add=()
for i in $(seq "$RUNS"); do
    fresh
    t_curl+=("$(timed curl -sf -o "$W/file.st" "$U/lora256/adapter_model.safetensors" -o "$W/file.cfg" "$U/lora256/adapter_config.json")")
    t_null+=("$(timed curl -sf -o /dev/null "$U/lora256/adapter_model.safetensors")")
    fresh
    t_pull+=("$(timed "$BIN" --store "$W/store" -q pull "$U/lora256" --name lora256)")
    fresh
    t_add+=("$(timed "$BIN" --store "$W/store" -q add "$SRC" --name lora256)")
done
# Check the last pull moved every byte (the figures would mean nothing otherwise).
fresh
"$BIN" --store "$W/store" --json pull "$U/lora256" --name lora256 >"$W/pull.json" || exit 1
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_transferred"])' "$W/pull.json")
if [ "$got" != "$BYTES" ]; then
    echo "bench_pull: the pull transferred $got bytes, expected $BYTES" >&2
    exit 1
fi

p=$(best "${t_pull[@]}") c=$(best "${t_curl[@]}") n=$(best "${t_null[@]}") a=$(best "${t_add[@]}")
echo "pull a 256 MiB BF16 LoRA from nginx on 127.0.0.1 ($BYTES bytes; best of $RUNS; wall [CPU], $CPUS CPUs)"
echo "  PEFT URL:        adapterctl pull   $(wall "$p") s [$(cpu "$p") s]  $(mbs "$BYTES" "$(wall "$p")") MB/s"
echo "                   curl -o FILE      $(wall "$c") s [$(cpu "$c") s]  $(mbs "$BYTES" "$(wall "$c")") MB/s   ratio pull/curl $(ratio "$(wall "$p")" "$(wall "$c")")"
echo "                   curl -o /dev/null $(wall "$n") s [$(cpu "$n") s]  $(mbs "$BYTES" "$(wall "$n")") MB/s   ratio pull/curl $(ratio "$(wall "$p")" "$(wall "$n")")"
echo "                   local add of the same directory: $(wall "$a") s [$(cpu "$a") s] (validation, compression, pack: no transfer)"

# ---- published store -------------------------------------------------------------------

"$BIN" --store "$W/store" -q publish "$W/www/pub" lora256 >/dev/null || exit 1
pack=$(cd "$W/www/pub" && find objects -type f | head -1)
PACK_BYTES=$(stat -c %s "$W/www/pub/$pack")
curl -sf -o /dev/null "$U/pub/$pack"
t_pull=() t_curl=() t_null=() t_sync=()
for i in $(seq "$RUNS"); do
    fresh
    t_curl+=("$(timed curl -sf -o "$W/file.idx" "$U/pub/index.json" -o "$W/file.pack" "$U/pub/$pack")")
    fresh
    t_sync+=("$(timed sh -c 'curl -sf -o "$1" "$2" && sync "$1"' sh "$W/file.pack" "$U/pub/$pack")")
    t_null+=("$(timed curl -sf -o /dev/null "$U/pub/$pack")")
    fresh
    t_pull+=("$(timed "$BIN" --store "$W/store" -q pull "$U/pub" lora256)")
done
p=$(best "${t_pull[@]}") c=$(best "${t_curl[@]}") n=$(best "${t_null[@]}") y=$(best "${t_sync[@]}")
echo "  published store: adapterctl pull   $(wall "$p") s [$(cpu "$p") s]  $(mbs "$PACK_BYTES" "$(wall "$p")") MB/s of pack ($PACK_BYTES bytes, $(mbs "$BYTES" "$(wall "$p")") MB/s of adapter)"
echo "                   curl -o FILE      $(wall "$c") s [$(cpu "$c") s]  $(mbs "$PACK_BYTES" "$(wall "$c")") MB/s   ratio pull/curl $(ratio "$(wall "$p")" "$(wall "$c")")"
echo "                   curl -o /dev/null $(wall "$n") s [$(cpu "$n") s]  $(mbs "$PACK_BYTES" "$(wall "$n")") MB/s   ratio pull/curl $(ratio "$(wall "$p")" "$(wall "$n")")"
echo "                   curl -o FILE + sync FILE $(wall "$y") s [$(cpu "$y") s]   ratio pull/that $(ratio "$(wall "$p")" "$(wall "$y")") (a durable copy, as a pull makes)"
