#!/usr/bin/env bash
# test_generate.sh: end-to-end tests of `adapterctl generate` (issue 6):
# the llama2.c reference outputs of stories260K byte for byte (acceptance 1),
# the HF tiny model's greedy continuations from its corpus (computed with HF
# transformers), --json, adapters from a directory and from the store, a stack,
# and the errors of acceptance 6 (a prompt longer than the context, an
# unknown adapter, an adapter for another base), each a clear message and a
# non-zero exit.
#
# Run from the repository root. ADAPTERCTL names the binary (tests/run.sh
# sets it); default build/adapterctl.
set -u
BIN=${ADAPTERCTL:-build/adapterctl}
case "$BIN" in /*) ;; *) BIN=$PWD/$BIN ;; esac
FIX=$PWD/fixtures
DATA=$PWD/../shared/data
TMP=$(mktemp -d)
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
trap 'rm -rf "$TMP"' EXIT
npass=0 nfail=0
S=$TMP/store
PYSCRIPT=$TMP/check.py
. tests/cli/lib/common.sh

cat >"$PYSCRIPT" <<'PYEOF'
import json, sys

cmd = sys.argv[1]
if cmd == "json-ids":
    # the ids of a --json document, space-separated
    d = json.load(open(sys.argv[2]))
    print(" ".join(str(i) for i in d["ids"]))
elif cmd == "json-check":
    # ids, logprobs and finish of a --json document are consistent
    d = json.load(open(sys.argv[2]))
    n = int(sys.argv[3])
    bad = []
    if len(d["ids"]) != n:
        bad.append("%d ids, expected %d" % (len(d["ids"]), n))
    if len(d["logprobs"]) != len(d["ids"]):
        bad.append("logprobs and ids differ in length")
    if any(not (lp <= 0.0) for lp in d["logprobs"]):
        bad.append("a log-probability above 0: %r" % d["logprobs"])
    if d["finish"] not in ("length", "stop"):
        bad.append("finish %r" % d["finish"])
    print("\n".join(bad))
elif cmd == "field":
    d = json.load(open(sys.argv[2]))
    v = d
    for k in sys.argv[3].split("."):
        v = v[int(k)] if isinstance(v, list) else v[k]
    print(v if not isinstance(v, (dict, list)) else json.dumps(v))
PYEOF

# ---- acceptance 1: stories260K, byte for byte ---------------------------------
L2C=$DATA/llama2c
if [ -f "$L2C/stories260K.bin" ] && [ -f "$L2C/tok512.bin" ]; then
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --temperature 0 -n 200 -q
    check_rc "generate stories260K -n 200 succeeds" 0
    # the expected file had its final newline stripped: at most one may follow
    printf '%s' "$(cat "$L2C/expected/stories260K_t0_n200.txt")" >"$TMP/want200"
    if cmp -s "$TMP/out" "$TMP/want200" ||
        { head -c -1 "$TMP/out" | cmp -s - "$TMP/want200" && [ "$(tail -c 1 "$TMP/out" | od -An -c | tr -d ' ')" = '\n' ]; }; then
        pass "stories260K greedy, 200 tokens, equals the reference output"
    else
        fail "stories260K greedy, 200 tokens, equals the reference output" \
            "$(diff <(cat "$TMP/want200"; echo) "$TMP/out" | head -20)"
    fi
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --temperature 0 -n 256 -q
    check_rc "generate stories260K -n 256 succeeds" 0
    if cmp -s "$TMP/out" "$L2C/expected/stories260K_t0_n256.txt"; then
        pass "stories260K greedy, 256 tokens, equals the reference output exactly"
    else
        fail "stories260K greedy, 256 tokens, equals the reference output exactly" \
            "$(diff "$L2C/expected/stories260K_t0_n256.txt" "$TMP/out" | head -20)"
    fi
    # llama2.c's own sampler: temperature 1, top-p 0.9, seed 133742
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --temperature 1 --top-p 0.9 --seed 133742 -n 256 -q
    if cmp -s "$TMP/out" "$L2C/expected/stories260K_t1.0_p0.9_s133742_n256.txt"; then
        pass "stories260K sampled (T 1, top-p 0.9, seed 133742) equals the reference output"
    else
        fail "stories260K sampled (T 1, top-p 0.9, seed 133742) equals the reference output" \
            "$(diff "$L2C/expected/stories260K_t1.0_p0.9_s133742_n256.txt" "$TMP/out" | head -20)"
    fi
    # --json: ids and log-probabilities
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" -n 20 --json
    check_rc "generate --json succeeds" 0
    check_py "--json gives 20 ids with their log-probabilities" json-check "$TMP/out" 20
    ids=$(py json-ids "$TMP/out")
    # the same ids given back as a prompt continue the same way: greedy is
    # deterministic, and --prompt-ids reaches the model without the tokenizer
    run generate --model "$L2C/stories260K.bin" --prompt-ids "1,$(echo "$ids" | cut -d' ' -f1-10 | tr ' ' ',')" -n 10
    check_rc "generate --prompt-ids without a tokenizer succeeds" 0
    check "--prompt-ids continues as the text run did (ids printed without a tokenizer)" \
        "$(echo "$ids" | cut -d' ' -f11-20)" "$out"
    # bytes that are not UTF-8 (a lone byte-fallback token) become U+FFFD in --json's text
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" -n 200 \
        --temperature 3 --seed 3 --json
    check_rc "a hot sampled run with --json succeeds" 0
    check "--json text is a string even when a token is a lone byte" str \
        "$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(type(d["text"]).__name__)' "$TMP/out")"
    check_has "the lone byte came out as U+FFFD" $'\xef\xbf\xbd' "$out"
    # --stop: the text ends before the stop text, finish says "stop"
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" -n 60 \
        --stop Lily --json
    check_rc "generate --stop succeeds" 0
    check "--stop: finish is stop" stop "$(py field "$TMP/out" finish)"
    check "--stop: the text ends just before the stop text" "named " \
        "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"][-6:])' "$TMP/out")"
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" -n 60 --stop Lily -q
    check_lacks "--stop: the plain output stops before the stop text" "Lily" "$out"
    # a text prompt: BOS first (a SentencePiece vocabulary says so), echoed back
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --prompt "Once upon a time" -n 5 --json
    check "a text prompt is encoded with BOS first" 1 "$(py field "$TMP/out" prompt_ids.0)"
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --prompt "Once upon a time" -n 5 --no-bos --json
    check_lacks "--no-bos leaves BOS out" "[1," "$(py field "$TMP/out" prompt_ids)"
    run generate --model "$L2C/stories260K.bin" --tokenizer "$L2C/tok512.bin" \
        --prompt "Once upon a time" -n 5 -q
    check_has "the prompt is printed before its continuation" "Once upon a time" "$out"
    # acceptance 6: a prompt longer than the context (stories260K: 512 positions)
    long=$(python3 -c 'print(",".join(["1"] + ["300"] * 600))')
    run generate --model "$L2C/stories260K.bin" --prompt-ids "$long" -n 1
    check_rc "a prompt longer than the context fails" 1
    check_has "the message gives the prompt's length and the context" "601 tokens" "$err"
    check_has "the message gives the context" "512 positions" "$err"
    run generate --model "$L2C/stories260K.bin" --prompt-ids "1,999999" -n 1
    check_rc "an id outside the vocabulary fails" 1
    check_lacks "no sanitizer report for a bad id" "Sanitizer" "$err"
else
    echo "SKIP: stories260K tests: $L2C/stories260K.bin is absent (../shared/data not beside the repo)"
fi

# ---- the HF tiny model: greedy continuations from HF transformers -------------
HFT=$DATA/hf-tiny-random-llama-2
if [ -f "$HFT/corpus.json" ]; then
    "$PY" - "$HFT/corpus.json" >"$TMP/corpus.txt" <<'EOF'
import json, sys
for e in json.load(open(sys.argv[1]))["model_cases"]:
    print(",".join(map(str, e["input_ids"])), " ".join(map(str, e["greedy_continuation"])))
EOF
    ncase=0
    while read -r prompt want; do
        ncase=$((ncase + 1))
        n=$(echo "$want" | wc -w)
        run generate --model "$HFT" --prompt-ids "$prompt" -n "$n" -q
        check "hf-tiny greedy continuation of [$prompt] equals HF transformers'" "$want" "$out"
    done <"$TMP/corpus.txt"
    [ "$ncase" -ge 3 ] && pass "hf-tiny: $ncase corpus cases read" ||
        fail "hf-tiny: the corpus cases were read" "$(cat "$TMP/corpus.txt")"
else
    echo "SKIP: hf-tiny tests: $HFT is absent (../shared/data not beside the repo)"
fi

# ---- adapters: directories, the store, stacks, errors ----------------------------
BASE=$FIX/base-tiny
AD=$FIX/adapters/base-tiny
run generate --model "$BASE" --prompt-ids 1,5,9 -n 8
check_rc "generate on base-tiny without an adapter" 0
plain=$out
run generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter "$AD/road-1"
check_rc "generate with a RoAd directory adapter" 0
road=$out
if [ "$road" != "$plain" ]; then pass "the RoAd adapter changes the continuation"; else
    fail "the RoAd adapter changes the continuation" "both: $plain"; fi
# the merged model gives the same greedy continuation as the adapter unmerged
run merge --base "$BASE" --out "$TMP/merged-road" "$AD/road-1"
check_rc "merge road-1 into base-tiny" 0
run generate --model "$TMP/merged-road" --prompt-ids 1,5,9 -n 8
check "unmerged RoAd continues as the merged model does" "$road" "$out"

st add "$AD/lora" --name tiny-lora
check_rc "add a LoRA to the store" 0
st add "$AD/road-2" --name tiny-road
st generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter tiny-lora --adapter tiny-road
check_rc "generate with a stack of stored adapters" 0
stack=$out
run merge --store "$S" --base "$BASE" --out "$TMP/merged-stack" tiny-lora tiny-road
run generate --model "$TMP/merged-stack" --prompt-ids 1,5,9 -n 8
check "a stack continues as the base with both merged in order does" "$stack" "$out"
st generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter tiny-lora:0
check "a LoRA at weight 0 leaves the model as it is" "$plain" "$out"

st generate --model "$BASE" --prompt-ids 1,5,9 -n 4 --adapter no-such-adapter
check_rc "an unknown adapter fails" 1
check_has "the message names the unknown adapter" "no-such-adapter" "$err"

# an adapter made for another base: hf-tiny's shapes (hidden 16) are not base-tiny's (32)
make_other() {
"$PY" - "$@" <<'EOF'
import json, os, struct, sys
d = sys.argv[1]
os.makedirs(d)
cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
if len(sys.argv) > 2:
    cfg["base_model_name_or_path"] = sys.argv[2]
json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"))
tensors = {}
for l in range(2):
    p = "base_model.model.model.layers.%d.self_attn.q_proj." % l
    tensors[p + "lora_A.weight"] = ([2, 16], [0.01] * 32)
    tensors[p + "lora_B.weight"] = ([16, 2], [0.01] * 32)
hdr, off, blobs = {}, 0, []
for k in sorted(tensors):
    shape, v = tensors[k]
    b = struct.pack("<%df" % len(v), *v)
    hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
    off += len(b)
    blobs.append(b)
h = json.dumps(hdr).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF
}
make_other "$TMP/other" other/model
run generate --model "$BASE" --prompt-ids 1,5,9 -n 4 --adapter "$TMP/other"
check_rc "an adapter naming another base model fails" 1
check_has "the message names the adapter's base model" "other/model" "$err"
check_has "the message names the model's id" "adapterctl/base-tiny" "$err"
# --force: the base names differ but the shapes do not fit either: still refused
run generate --model "$BASE" --prompt-ids 1,5,9 -n 4 --adapter "$TMP/other" --force
check_rc "--force does not run an adapter whose shapes do not fit" 1
check_has "with --force the message names the module" "q_proj" "$err"
# an adapter that fits but names another model: refused, then run with --force
mkdir -p "$TMP/renamed"
cp "$AD/lora/adapter_model.safetensors" "$TMP/renamed/"
"$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); c["base_model_name_or_path"]="someone/else"; json.dump(c, open(sys.argv[2], "w"))' \
    "$AD/lora/adapter_config.json" "$TMP/renamed/adapter_config.json"
run generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter "$TMP/renamed"
check_rc "an adapter naming another model is refused" 1
check_has "the refusal mentions --force" "--force" "$err"
run generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter "$TMP/renamed" --force
check_rc "--force runs an adapter that names another model but fits" 0
lora_forced=$out
run generate --model "$BASE" --prompt-ids 1,5,9 -n 8 --adapter "$AD/lora"
check "--force gives what the same adapter gives under its own name" "$out" "$lora_forced"
make_other "$TMP/other-shapes"
run generate --model "$BASE" --prompt-ids 1,5,9 -n 4 --adapter "$TMP/other-shapes"
check_rc "an adapter whose shapes are another base's fails" 1
check_has "the message names the module that does not fit" "q_proj" "$err"
check_lacks "no sanitizer report for the other base's adapter" "Sanitizer" "$err"

# -n far beyond the context: as many as fit, no overflow
run generate --model "$BASE" --prompt-ids 1 -n 9223372036854775807 -q
check_rc "-n beyond the context generates what fits" 0
check "-n beyond the context: the context (128) less the prompt" 127 "$(echo "$out" | wc -w)"

# usage errors
run generate --model "$BASE" --prompt-ids 1 -n 2 --top-k 2147483648
check_rc "--top-k beyond an int is a usage error" 2
run generate --prompt-ids 1 -n 2
check_rc "generate without --model is a usage error" 2
run generate --model "$BASE" --prompt-ids 1,x -n 2
check_rc "a malformed --prompt-ids is a usage error" 2
run generate --model "$BASE" --prompt hello -n 2
check_rc "a text prompt without a tokenizer fails" 1
check_has "the message says there is no tokenizer" "tokenizer" "$err"
run generate --model "$TMP/no-such-model" --prompt-ids 1 -n 2
check_rc "a missing model fails" 1
check_has "the message names the missing model" "no-such-model" "$err"

echo "$npass passed, $nfail failed"
[ "$nfail" -eq 0 ]
