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
# curl -o /dev/null (no disk) and a local `add` of the same directory are
# printed beside them, to show what the pull spends besides the transfer
# (a PEFT pull hashes, validates and compresses into a pack, as add does).
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

now() { date +%s.%N; }
# secs START END
secs() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
mbs() { python3 -c "import sys; print('%.1f' % (float(sys.argv[1]) / 1e6 / float(sys.argv[2])))" "$1" "$2"; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) / float(sys.argv[1])))" "$1" "$2"; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
# timed CMD...: prints the seconds CMD took; exits the bench when it fails.
timed() {
    local t0 t1
    t0=$(now)
    if ! "$@" >"$W/cmd.out" 2>"$W/cmd.err"; then
        echo "bench_pull: '$*' failed: $(head -c 500 "$W/cmd.err")" >&2
        exit 1
    fi
    t1=$(now)
    secs "$t0" "$t1"
}
fresh() { rm -rf "$W/store" "$W/file"; sync; }

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
echo "pull a 256 MiB BF16 LoRA from nginx on 127.0.0.1 ($BYTES bytes; best of $RUNS)"
echo "  PEFT URL:        adapterctl pull  $p s  $(mbs "$BYTES" "$p") MB/s"
echo "                   curl -o FILE     $c s  $(mbs "$BYTES" "$c") MB/s   ratio pull/curl $(ratio "$p" "$c")"
echo "                   curl -o /dev/null $n s  $(mbs "$BYTES" "$n") MB/s   ratio pull/curl $(ratio "$p" "$n")"
echo "                   local add of the same directory: $a s (validation, compression, pack: what a pull does after the transfer)"
# An estimate, not a measurement: the pull's time less the add's.
x=$(python3 -c "import sys; print('%.3f' % max(float(sys.argv[1]) - float(sys.argv[2]), 1e-3))" "$p" "$a")
echo "                   pull - add       $x s  $(mbs "$BYTES" "$x") MB/s   ratio to curl -o FILE $(ratio "$x" "$c") (the transfer's share, estimated)"

# ---- published store -------------------------------------------------------------------

"$BIN" --store "$W/store" -q publish "$W/www/pub" lora256 >/dev/null || exit 1
pack=$(cd "$W/www/pub" && find objects -type f | head -1)
PACK_BYTES=$(stat -c %s "$W/www/pub/$pack")
curl -sf -o /dev/null "$U/pub/$pack"
t_pull=() t_curl=() t_null=()
for i in $(seq "$RUNS"); do
    fresh
    t_curl+=("$(timed curl -sf -o "$W/file.idx" "$U/pub/index.json" -o "$W/file.pack" "$U/pub/$pack")")
    t_null+=("$(timed curl -sf -o /dev/null "$U/pub/$pack")")
    fresh
    t_pull+=("$(timed "$BIN" --store "$W/store" -q pull "$U/pub" lora256)")
done
p=$(best "${t_pull[@]}") c=$(best "${t_curl[@]}") n=$(best "${t_null[@]}")
echo "  published store: adapterctl pull  $p s  $(mbs "$PACK_BYTES" "$p") MB/s of pack ($PACK_BYTES bytes, $(mbs "$BYTES" "$p") MB/s of adapter)"
echo "                   curl -o FILE     $c s  $(mbs "$PACK_BYTES" "$c") MB/s   ratio pull/curl $(ratio "$p" "$c")"
echo "                   curl -o /dev/null $n s  $(mbs "$PACK_BYTES" "$n") MB/s   ratio pull/curl $(ratio "$p" "$n")"
