# adapter_files.py: the files the CLI stress tests make and inspect, written
# from the formats' rules (independent of adapterctl): safetensors files,
# LoRA adapters of a chosen size, config variants that get their own pack,
# and a census of a store's objects/. Imported through $ACTL_CLI_LIB
# (tests/cli/lib/common.sh sets it).
import json, os, random, re, struct


def write_safetensors(path, tensors):
    """tensors: [(name, (dtype, shape, raw bytes))], written in that order."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, (dt, shape, raw) in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, (_, _, raw) in tensors:
            f.write(raw)


def bf16(rng, n):
    """n finite BF16 values shaped like trained weights: random sign and
    mantissa, the exponent within a few binades below 1 (so the codec has
    something to do)."""
    raw = bytearray(rng.randbytes(2 * n))
    table = bytes((b & 0x80) | 0x3C | (b & 0x03) for b in range(256))
    raw[1::2] = bytes(raw[1::2]).translate(table)
    return bytes(raw)


def big_lora(out, layers, rank, width, seed, base_model):
    """A BF16 LoRA adapter on q/v of about layers * 4 * rank * width * 2 bytes."""
    rng = random.Random(seed)
    tensors = []
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            k = "base_model.model.model.layers.%d.self_attn.%s" % (i, m)
            tensors.append((k + ".lora_A.weight", ("BF16", [rank, width], bf16(rng, rank * width))))
            tensors.append((k + ".lora_B.weight", ("BF16", [width, rank], bf16(rng, rank * width))))
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "adapter_model.safetensors"), tensors)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
           "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": base_model}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)


def variant(src, dest, key, value, indent=None):
    """A copy of the adapter at src whose config also carries key=value, so
    that its pack is its own; the tensors file is a hard link."""
    with open(os.path.join(src, "adapter_config.json")) as f:
        cfg = json.load(f)
    os.makedirs(dest)
    os.link(os.path.join(src, "adapter_model.safetensors"),
            os.path.join(dest, "adapter_model.safetensors"))
    cfg[key] = value
    with open(os.path.join(dest, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=indent)


def variants(src, dest, count, prefix, key):
    """count variants of src, dest/PREFIX0 to dest/PREFIX(count-1), each with
    key set to its own name."""
    for i in range(count):
        name = "%s%d" % (prefix, i)
        variant(src, os.path.join(dest, name), key, name)


def objects_census(store, listdoc):
    """Files under the store's objects/: packs a row of `list --json` output
    (the file listdoc) references, packs none references, anything else
    (temporary files); and the number of packs referenced."""
    with open(listdoc) as f:
        refs = {e["pack"] for e in json.load(f)}
    ref = orphan = other = 0
    for root, _, files in os.walk(os.path.join(store, "objects")):
        for f in files:
            if re.fullmatch(r"[0-9a-f]{64}", f) and os.path.basename(root) == f[:2]:
                if f in refs:
                    ref += 1
                else:
                    orphan += 1
            else:
                other += 1
    return ref, orphan, other, len(refs)
