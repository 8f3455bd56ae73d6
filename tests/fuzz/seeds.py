#!/usr/bin/env python3
"""seeds.py OUT: writes a seed corpus for every harness to OUT/<harness>/.

Seeds are small valid inputs, so that mutations start from files the
parsers accept: the fixtures (safetensors, adapter configs, base-tiny's
config.json), packs, frames and an index published from a store that the
adapterctl binary ($ADAPTERCTL) makes of the fixtures, and tokenizers
trimmed from the real ones in ../shared/data (taken when present; the
corpus is built, never committed) or made here. Each harness's regression
inputs (tests/fuzz/regress/<harness>/) are added too."""
import base64, glob, json, os, random, shutil, struct, subprocess, sys, tempfile

OUT = sys.argv[1]
FIX = os.environ.get("ACTL_FIXTURES", "fixtures")
SHARED = os.environ.get("ACTL_SHARED", "../shared/data")
BIN = os.environ.get("ADAPTERCTL", "build/adapterctl")
KINDS = ["lora", "lora-dora", "lora-embedding", "lora-bias", "lora-patterns", "lora-bf16",
         "road-1", "road-4", "mos", "bottleneck-series", "bottleneck-parallel", "lora-fanin"]
count = {}


def put(harness, data, name=None):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    n = count.get(harness, 0)
    count[harness] = n + 1
    with open(os.path.join(d, name or "seed-%03d" % n), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def small(path, limit=65536):
    return os.path.isfile(path) and os.path.getsize(path) <= limit


# -- safetensors and adapter configs --------------------------------------
for p in sorted(glob.glob(os.path.join(FIX, "broken", "*.safetensors"))):
    if small(p):
        put("fuzz_safetensors", read(p))
for k, kind in enumerate(KINDS):
    d = os.path.join(FIX, "adapters", "base-tiny", kind)
    if small(os.path.join(d, "adapter_model.safetensors")):
        put("fuzz_safetensors", read(os.path.join(d, "adapter_model.safetensors")))
    put("fuzz_adapter_config", bytes([k]) + read(os.path.join(d, "adapter_config.json")))

# -- models ----------------------------------------------------------------
put("fuzz_model", b"\x01" + read(os.path.join(FIX, "base-tiny", "config.json")))
put("fuzz_model", b"\x02" + read(os.path.join(FIX, "base-tiny-sharded", "model.safetensors.index.json")))
rng = random.Random(8)


def llama2c(dim, hidden, layers, heads, kv_heads, vocab, seq):
    head = dim // heads
    kv = kv_heads * head
    n = (abs(vocab) * dim + layers * dim + layers * dim * dim + 2 * layers * dim * kv +
         layers * dim * dim + layers * dim + 3 * layers * hidden * dim + dim + seq * head)
    if vocab < 0:
        n += abs(vocab) * dim
    hdr = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq)
    return hdr + struct.pack("<%df" % n, *(rng.uniform(-1, 1) for _ in range(n)))


put("fuzz_model", b"\x00" + llama2c(8, 16, 1, 2, 2, 16, 8))
put("fuzz_model", b"\x00" + llama2c(8, 16, 2, 2, 1, -16, 4))

# -- tokenizers --------------------------------------------------------------


def trim_json(path, keep):
    t = json.load(open(path, encoding="utf-8"))
    m = t["model"]
    vocab = {k: v for k, v in m["vocab"].items() if v < keep}
    merges = []
    for mg in m.get("merges", []):
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    added = [a for a in t.get("added_tokens", []) if a["id"] < keep]
    for a in t.get("added_tokens", []):
        if a["id"] >= keep:
            a["id"] = len(vocab)
            vocab[a["content"]] = a["id"]
            added.append(a)
            break
    t["added_tokens"] = added
    return json.dumps(t, ensure_ascii=False).encode()


for name in ["gpt2/tokenizer.json", "llama2-spm/tokenizer.json", "smollm2/tokenizer.json"]:
    p = os.path.join(SHARED, "tokenizers", name)
    if os.path.isfile(p):
        put("fuzz_tokenizer_json", trim_json(p, 300 if "spm" not in name else 400))
# One made here, so the corpus is never empty: byte-level BPE over a Split regex.
byte_vocab = {chr(c) if 33 <= c <= 126 else "<%d>" % c: c for c in range(256)}
put("fuzz_tokenizer_json", json.dumps({
    "version": "1.0", "added_tokens": [{"id": 258, "content": "<|end|>", "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
    "post_processor": None, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": dict(list(byte_vocab.items()) + [("he", 256), ("ll", 257)]),
              "merges": [["h", "e"], ["l", "l"]]}}).encode())

# tokenizer.bin: the llama2.c format, made here (max length, then score,
# length, bytes per token), and tok512.bin when present.
toks = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)] + \
       [b" the", b"he", b"ll", b"o", b" w", b"orld", b"\xe2\x96\x81"]
put("fuzz_tokenizer", b"\x00" + struct.pack("<i", 16) + b"".join(
    struct.pack("<fi", -float(i), len(t)) + t for i, t in enumerate(toks)))
p = os.path.join(SHARED, "llama2c", "tok512.bin")
if small(p):
    put("fuzz_tokenizer", b"\x00" + read(p))
# tiktoken: base64 token and rank per line.
tik = [bytes([i]) for i in range(256)] + [b"he", b"ll", b"hell", b"hello", b" w", b"or"]
put("fuzz_tokenizer", b"\x01" + b"".join(
    base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tik)))
# vocab.json + merges.txt, trimmed from GPT-2's.
vj, mt = os.path.join(SHARED, "tokenizers", "gpt2", "vocab.json"), \
    os.path.join(SHARED, "tokenizers", "gpt2", "merges.txt")
if os.path.isfile(vj) and os.path.isfile(mt):
    v = {k: i for k, i in json.load(open(vj, encoding="utf-8")).items() if i < 300}
    lines = ["#version: 0.2"]
    for ln in open(mt, encoding="utf-8").read().split("\n")[1:]:
        parts = ln.split(" ")
        if len(parts) == 2 and parts[0] in v and parts[1] in v and parts[0] + parts[1] in v:
            lines.append(ln)
    put("fuzz_tokenizer", b"\x02" + json.dumps(v, ensure_ascii=False).encode() + b"\x00" +
        "\n".join(lines).encode() + b"\n")


def gguf(kvs):
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    def val(t, x):
        if t == 8:
            return s(x)
        if t == 9:
            et, items = x
            return struct.pack("<IQ", et, len(items)) + b"".join(val(et, i) for i in items)
        return struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}[t], x)
    body = b"".join(s(k) + struct.pack("<I", t) + val(t, x) for k, t, x in kvs)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + body


spm = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)] + \
      ["\u2581", "\u2581the", "he", "ll", "o", "\u2581w", "orld"]
put("fuzz_tokenizer", b"\x03" + gguf([
    ("general.architecture", 8, "llama"), ("tokenizer.ggml.model", 8, "llama"),
    ("tokenizer.ggml.tokens", 9, (8, spm)),
    ("tokenizer.ggml.scores", 9, (6, [-float(i) for i in range(len(spm))])),
    ("tokenizer.ggml.token_type", 9, (5, [2, 3, 3] + [6] * 256 + [1] * 7)),
    ("tokenizer.ggml.bos_token_id", 4, 1), ("tokenizer.ggml.eos_token_id", 4, 2)]))
bl = [chr(c) if 33 <= c <= 126 else "<%d>" % c for c in range(256)] + ["he", "ll"]
put("fuzz_tokenizer", b"\x03" + gguf([
    ("general.architecture", 8, "gpt2"), ("tokenizer.ggml.model", 8, "gpt2"),
    ("tokenizer.ggml.pre", 8, "gpt2"), ("tokenizer.ggml.tokens", 9, (8, bl)),
    ("tokenizer.ggml.token_type", 9, (5, [1] * len(bl))),
    ("tokenizer.ggml.merges", 9, (8, ["h e", "l l"])),
    ("tokenizer.ggml.add_bos_token", 7, False)]))

# -- eval inputs -------------------------------------------------------------
put("fuzz_jsonl", b"\x00" + b"\n".join([
    b'{"id":"a","adapter":null,"prompt":"Hello","max_tokens":8}',
    b'{"id":"b","adapter":"lora@1","prompt":"2+2=","answer":"4","scorer":"number",'
    b'"temperature":0.7,"top_p":0.9,"seed":3,"stop":["\\n"]}',
    b'{"id":"c","adapter":["lora","road-1:0.5"],"prompt_ids":[1,2,3],"max_tokens":0,'
    b'"continuation":" four","answer":"B","scorer":"choice"}',
    b'{"id":"d","prompt":"x","continuation_ids":[4,5],"answer":"yes","scorer":"contains"}',
]) + b"\n")
for ds in ["AddSub", "AQuA"]:
    p = os.path.join(SHARED, "math", ds, "test.json")
    if os.path.isfile(p):
        put("fuzz_jsonl", b"\x01" + json.dumps(json.load(open(p))[:3]).encode())
put("fuzz_jsonl", b"\x01" + json.dumps([{"instruction": "1+1?", "input": "", "output": "2",
                                          "answer": "2"}]).encode())
put("fuzz_jsonl", b"\x02" + b"The answer is 1,234.5 or (B).\x00" + b"1234.5")

# -- names and URLs ------------------------------------------------------------
for s in ["lora", "lora@2", "lora@2:0.5", "a-b.c_d:-1e-3", "http://127.0.0.1:8080/store",
          "https://example.com/a/lora/", "hf://owner/repo@main", "file:///tmp/x/lora",
          "key=value", "F32", "bf16", "road", "cat", "dare_ties", "number", "../x"]:
    put("fuzz_names", s.encode())

# -- packs, frames and a published index, made by adapterctl ---------------------
if not os.access(BIN, os.X_OK):
    sys.exit("seeds.py: %s is not an executable adapterctl" % BIN)
else:
    tmp = tempfile.mkdtemp()
    try:
        store = os.path.join(tmp, "store")
        # The instrumented build may report leaks at exit: not this script's concern.
        env = dict(os.environ, ADAPTERCTL_STORE=store, ASAN_OPTIONS="detect_leaks=0")
        run = lambda *a: subprocess.run([BIN, "--store", store, *a], check=True,
                                        capture_output=True, env=env)
        run("init")
        for kind in ["lora", "lora-bf16", "road-1", "mos", "bottleneck-series"]:
            run("add", os.path.join(FIX, "adapters", "base-tiny", kind), "--name", kind)
        run("publish", os.path.join(tmp, "pub"))
        put("fuzz_index", b"\x00" + read(os.path.join(tmp, "pub", "index.json")))
        for p in sorted(glob.glob(os.path.join(store, "objects", "*", "*"))):
            pack = read(p)
            if len(pack) >= 65536:  # the seed (with its mode byte) must fit -max_len
                continue
            put("fuzz_pack", b"\x03" + pack)
            hlen = struct.unpack("<Q", pack[16:24])[0]
            header = pack[24:24 + hlen]
            put("fuzz_pack", b"\x02" + header.rstrip(b" ") + b"\x00" + pack[24 + hlen:])
            for t in json.loads(header)["tensors"]:
                dt = ["F32", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F64"].index(t["dtype"])
                start = 24 + hlen + t["offset"]
                put("fuzz_pack", b"\x00" + bytes([dt]) + struct.pack("<I", t["raw"]) +
                    pack[start:start + t["stored"]])
    except (subprocess.CalledProcessError, OSError, KeyError, ValueError) as e:
        sys.exit("seeds.py: no packs or index from %s: %s" % (BIN, e))
    finally:
        shutil.rmtree(tmp)
put("fuzz_pack", b"\x01\x02" + bytes(rng.randrange(256) for _ in range(512)))
put("fuzz_index", b"\x00" + json.dumps({"format": 1, "adapters": []}).encode())

# -- every input that once crashed ------------------------------------------------
here = os.path.dirname(os.path.abspath(__file__))
for d in sorted(glob.glob(os.path.join(here, "regress", "*"))):
    for p in sorted(glob.glob(os.path.join(d, "*"))):
        put(os.path.basename(d), read(p), "regress-" + os.path.basename(p))
for h, n in sorted(count.items()):
    print("seeds: %-22s %d" % (h, n))
