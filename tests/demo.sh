#!/usr/bin/env bash
# demo.sh: what `make demo` shows: the store at work on the default store
# (the user's ADAPTERCTL_STORE, else XDG_DATA_HOME/adapterctl, else
# ~/.local/share/adapterctl): init, add a fixture adapter of every kind with
# tags, list, filter, show two, export one and compare, verify, stats. Then a
# short look at what `inspect` says of the fixtures, and pull/publish:
# the demo adapters published to a temporary folder, served by nginx on a free
# loopback port (file:// when nginx is absent) and pulled into a second,
# temporary store.
#
# Re-runnable: the demo's adapters are all named demo-*, and every run first
# removes every version of those names (only those), so each run starts from
# and ends with the same demo entries; their packs are shared with the
# previous run's (identical adds share one pack), so the store does not grow.
#
# Then compose and merge: two LoRA adapters concatenated (exact) and
# truncated by SVD (with its error), a stack of a RoAd adapter over the
# concatenation, and that stack merged into a base checkpoint (the real
# hf-tiny-random-llama-2 from ../shared/data when it is there, else the
# tiny fixture base with the fixtures made for it) and taken out again.
#
# Last, generate: llama2.c's stories260K and its tokenizer (when
# ../shared/data is there), then the stack applied per request on the base
# against the checkpoint it was merged into: the same greedy tokens.
#
#   bash tests/demo.sh [path/to/adapterctl]      (from the repository root)
set -euo pipefail
BIN=${1:-build/adapterctl}
FIX=fixtures/adapters/hf-tiny
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

say() { printf '\n== %s\n' "$*"; }
# Shows the command (arguments with spaces quoted), then runs it.
show_run() {
    local shown="" a
    for a in "$@"; do
        case "$a" in *[\ \(\)]*) shown="$shown '$a'" ;; *) shown="$shown $a" ;; esac
    done
    printf '$ adapterctl%s\n' "$shown"
    "$BIN" "$@"
}

echo "$("$BIN" --version): the store"
say "init (optional: every store command creates the store on first use)"
show_run init

# name  fixture  tags...
demo_adapters=(
    "demo-lora           lora                task=math   user=alice"
    "demo-lora-dora      lora-dora           task=math   user=bob"
    "demo-lora-patterns  lora-patterns       task=code   user=alice"
    "demo-road-1         road-1              task=math   user=carol"
    "demo-road-4         road-4              task=chat   user=alice"
    "demo-bottleneck     bottleneck-series   task=code   user=bob"
    "demo-bottleneck-par bottleneck-parallel task=chat   user=carol"
    "demo-mos            mos                 task=math   user=alice"
    "demo-lora-1mb       -                   task=math   user=dave"
)

# What the compose part below makes.
demo_composed=(demo-cat demo-svd demo-stack)

# Every version of the demo's names, and nothing else.
for name in "${demo_composed[@]}"; do
    while "$BIN" -q rm "$name" >/dev/null 2>&1; do :; done
done
for line in "${demo_adapters[@]}"; do
    read -r name _ <<<"$line"
    while "$BIN" -q rm "$name" >/dev/null 2>&1; do :; done
done

# The fixtures are a few KiB, too small for the codec to show anything (a
# pack's header, with a SHA-256 per tensor, outweighs their data). So also a
# 1 MiB LoRA with BF16 weights drawn from N(0, 0.02), the shape of trained
# ones, generated here (seeded: the same bytes every run).
python3 - "$TMP/lora-1mb" <<'EOF'
import json, os, random, struct, sys
out = sys.argv[1]
os.makedirs(out)
rng = random.Random(7)
def bf16(n):  # N(0, 0.02) as BF16, rounded to nearest even
    b = bytearray()
    for _ in range(n):
        u = struct.unpack("<I", struct.pack("<f", rng.gauss(0.0, 0.02)))[0]
        b += struct.pack("<H", (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
    return bytes(b)
r, width, hdr, data = 8, 4096, {"__metadata__": {"format": "pt"}}, b""
for layer in range(4):
    for m in ("q_proj", "v_proj"):
        k = "base_model.model.model.layers.%d.self_attn.%s" % (layer, m)
        for name, shape in ((k + ".lora_A.weight", [r, width]), (k + ".lora_B.weight", [width, r])):
            t = bf16(r * width)
            hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [len(data), len(data) + len(t)]}
            data += t
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
               "base_model_name_or_path": "demo/llama-4096"}, f)
EOF

say "add a fixture of every kind, and the generated 1 MiB LoRA, with tags"
for line in "${demo_adapters[@]}"; do
    read -r name fixture t1 t2 <<<"$line"
    dir=$FIX/$fixture
    [ "$fixture" = - ] && { dir=$TMP/lora-1mb; fixture="generated 1 MiB BF16"; }
    show_run add "$dir" --name "$name" --tag "$t1" --tag "$t2" --desc "$fixture (make demo)"
done
# A second version of one of them: versions count up per name.
show_run add "$FIX/lora" --name demo-lora --tag task=math --tag user=alice --tag stage=v2

say "list (newest version of each name), then filtered"
show_run list --tag user=alice
show_run list --kind road
show_run list --tag task=math --tag user=alice --all-versions

say "show two"
show_run show demo-lora-dora
echo
show_run show demo-lora-1mb

say "export one and compare it with what was added"
show_run export demo-mos "$TMP/demo-mos"
python3 - "$FIX/mos" "$TMP/demo-mos" <<'EOF'
import json, struct, sys
def tensors(p):
    data = open(p + "/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n]); h.pop("__metadata__", None)
    return {k: data[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]] for k, e in h.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
same = a == b and json.load(open(sys.argv[1] + "/adapter_config.json")) == json.load(open(sys.argv[2] + "/adapter_config.json"))
print("%d tensors, %d bytes: %s" % (len(b), sum(map(len, b.values())),
      "identical to the fixture" if same else "DIFFERENT from the fixture"))
sys.exit(0 if same else 1)
EOF

say "verify and stats"
show_run verify
show_run stats

say "inspect: the fixture adapters, one line each (adapterctl --json inspect DIR)"
SUMMARY='
import json, sys
d = json.load(sys.stdin)
c = d["config"]
kind = d["kind"]
if kind in ("lora", "mos"):
    facts = "r=%g alpha=%g" % (c.get("r"), c.get("lora_alpha"))
    if c.get("use_rslora"): facts += " rslora"
    if c.get("use_dora"): facts += " dora"
    if kind == "mos": facts += " shards=%s" % c.get("mos_shards")
elif kind == "road":
    facts = "%s group=%s" % (c.get("variant", "road_1"), c.get("group_size", 64))
else:
    facts = "size=%s %s" % (c.get("bottleneck_size"), c.get("non_linearity", "tanh"))
    if c.get("use_parallel_adapter"): facts += " parallel"
print("%-22s %-10s %-24s %3d modules %4d tensors %7.1f KiB" % (
    sys.argv[1], kind, facts, len(d["modules"]), d["tensors"], d["bytes"] / 1024))
'
for dir in "$FIX"/*/; do
    dir=${dir%/}
    [ -f "$dir/adapter_config.json" ] || continue
    "$BIN" --json inspect "$dir" | python3 -c "$SUMMARY" "$(basename "$dir")"
done

# ---- pull and publish ---------------------------------------------------------
# Publish the demo's adapters to a folder, serve it over HTTP with nginx on a
# free loopback port (or, without nginx, read it through file://), and pull
# one into a second, temporary store: the way a fleet shares one store.
. tests/nginx.sh
trap 'nginx_stop; rm -rf "$TMP"' EXIT
demo_names=()
for line in "${demo_adapters[@]}"; do
    read -r name _ <<<"$line"
    demo_names+=("$name")
done

say "publish the demo adapters to a folder any static HTTP server can serve"
show_run publish "$TMP/www/published" "${demo_names[@]}"
echo "  $(find "$TMP/www/published" -name index.json | sed "s|^$TMP/www/||")" \
    "and $(find "$TMP/www/published/objects" -type f | wc -l | tr -d ' ') packs in objects/"

if nginx_start "$TMP/www"; then
    URL=$NGINX_URL/published
    echo "(serving $TMP/www with nginx at $NGINX_URL)"
else
    URL=file://$TMP/www/published
    echo "(no nginx here: $NGINX_ERROR; pulling through $URL instead)"
fi

say "pull one adapter into a second store; then pull it again"
show_run --store "$TMP/store2" pull "$URL" demo-lora-1mb
show_run --store "$TMP/store2" show demo-lora-1mb
# The index is revalidated (over file://, read again); the pack is here already.
show_run --store "$TMP/store2" pull "$URL" demo-lora-1mb
show_run --store "$TMP/store2" verify

say "compose: new adapters from stored ones, each with its lineage"
show_run compose --method cat --out demo-cat demo-lora demo-lora-patterns:0.5
show_run compose --method svd --rank 2 --out demo-svd demo-lora demo-lora-patterns:0.5
show_run compose --method stack --out demo-stack demo-road-1 demo-cat
show_run show demo-svd

say "merge: fold the stack into a base checkpoint, then take it back out"
HF=../shared/data/hf-tiny-random-llama-2
if [ -f "$HF/model.safetensors" ]; then
    BASE=$HF
    INPUTS=(demo-stack)
    # Its config.json names the model it was made from (meta-llama/Llama-2-7b-hf),
    # the adapters the tiny model's hub name: --force says we know they fit.
    FORCE=(--force)
    # BF16 weights: merged into F32 and unmerged back to BF16, the base comes
    # back to the bit (merged in BF16, the base's low bits would be rounded away
    # wherever the delta is larger than the weight).
    UP=(--dtype f32)
    DOWN=(--dtype bf16)
else
    echo "($HF is absent: merging the fixture adapters made for fixtures/base-tiny instead)"
    BASE=fixtures/base-tiny
    INPUTS=(fixtures/adapters/base-tiny/road-1 fixtures/adapters/base-tiny/lora:0.5)
    FORCE=()
    UP=()
    DOWN=()
fi
show_run merge "${FORCE[@]}" "${UP[@]}" --base "$BASE" --out "$TMP/merged" "${INPUTS[@]}"
show_run merge "${FORCE[@]}" "${DOWN[@]}" --unmerge --base "$TMP/merged" --out "$TMP/restored" \
    "${INPUTS[@]}"
python3 - "$BASE" "$TMP/merged" "$TMP/restored" <<'EOF2'
import glob, json, os, struct, sys
def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        b = open(f, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
        for k, e in h.items():
            raw = b[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]]
            if e["dtype"] == "F32":
                v = list(struct.unpack("<%df" % (len(raw) // 4), raw))
            elif e["dtype"] == "BF16":
                v = [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
            else:
                continue
            out[k] = v
    return out
base, merged, restored = (tensors(d) for d in sys.argv[1:4])
changed = [k for k in base if base[k] != merged[k]]
worst = max(abs(a - b) / (max(abs(x) for x in base[k]) or 1)
            for k in changed for a, b in zip(base[k], restored[k]))
print("  %d of %d tensors changed by the merge; after --unmerge the largest difference from the"
      " base is %.2g of its tensor's largest value" % (len(changed), len(base), worst))
EOF2

say "generate: the CPU decoder, each request with its own adapter"
L2C=../shared/data/llama2c
if [ -f "$L2C/stories260K.bin" ]; then
    # a real trained model (llama2.c format) and its tokenizer: llama2.c's own greedy output
    show_run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" -n 60 -q
else
    echo "($L2C is absent: no trained model to generate text with)"
fi
# The stack unmerged, and the checkpoint it was merged into: the same tokens
show_run generate "${FORCE[@]}" --model "$BASE" --prompt-ids 1,42,99 -n 8 -q \
    $(printf -- '--adapter %s ' "${INPUTS[@]}")
show_run generate --model "$TMP/merged" --prompt-ids 1,42,99 -n 8 -q
show_run generate --model "$BASE" --prompt-ids 1,42,99 -n 8 -q
echo "  (the first two agree: the adapters applied per request equal the merged model; the"
echo "   third is the base without them)"

say "eval: one request stream over mixed adapters, continuous batching, a summary per adapter"
# (re-runnable as the rest: the demo-story-* names are removed, then added again)
L2C=../shared/data/llama2c
MA=../shared/data/math/MultiArith/test.json
if [ -f "$L2C/stories260K.bin" ] && [ -f "$MA" ]; then
    # the demo-* adapters above are for other models: three of different kinds made
    # for stories260K's shapes (a LoRA, a RoAd, a bottleneck), stored as demo-story-*
    python3 tests/cli/lib/story_adapters.py "$TMP/story"
    for k in lora road bottleneck; do
        while "$BIN" -q rm "demo-story-$k" >/dev/null 2>&1; do :; done
        "$BIN" -q add "$TMP/story/$k" --name "demo-story-$k" --tag demo=eval >/dev/null
    done
    echo "(stored demo-story-lora, demo-story-road, demo-story-bottleneck for stories260K)"
    show_run eval --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --dataset "$MA" --adapter demo-story-lora,demo-story-road,demo-story-bottleneck,none \
        --limit 20 --max-tokens 24 --batch 16 --out "$TMP/eval.jsonl" -q
    echo "  first result line of $(wc -l <"$TMP/eval.jsonl"):"
    head -1 "$TMP/eval.jsonl" | sed 's/^/  /'
    echo "  (a 260K-parameter story model does no arithmetic: accuracy 0 is expected; the"
    echo "   point is 80 requests over four adapters sharing every batch)"
else
    # no shared data: the tiny fixture base, requests as token ids, each naming its adapter
    TB=fixtures/base-tiny
    TA=fixtures/adapters/base-tiny
    for i in $(seq 0 23); do
        case $((i % 4)) in
        0) ad="\"$TA/lora\"" ;; 1) ad="\"$TA/road-1\"" ;;
        2) ad="\"$TA/bottleneck-series\"" ;; *) ad=null ;;
        esac
        echo "{\"id\": \"q$i\", \"adapter\": $ad, \"prompt_ids\": [1, $((i + 3)), 9], \"max_tokens\": 8}"
    done >"$TMP/requests.jsonl"
    show_run eval --model "$TB" --requests "$TMP/requests.jsonl" --batch 8 \
        --out "$TMP/eval.jsonl" -q
    echo "  first result line of $(wc -l <"$TMP/eval.jsonl"):"
    head -1 "$TMP/eval.jsonl" | sed 's/^/  /'
fi
