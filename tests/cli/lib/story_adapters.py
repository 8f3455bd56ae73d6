# story_adapters.py ROOT [SEED]: writes three PEFT adapter directories shaped
# for llama2.c's stories260K (dim 64, hidden 172, 5 layers, 4 kv heads of 8)
# under ROOT: lora (r 4 on q/v), road (road_1, group 8, on o/down) and
# bottleneck (series, size 4, on down_proj), F32, with small random values
# (python's random, seeded) that change the text but keep it readable.
# Used by tests/cli/test_eval.sh and tests/demo.sh.
import json, os, random, struct, sys

def write_st(path, tensors):
    # safetensors: 8-byte header length, JSON header, then the F32 data in order
    hdr, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, (shape, vals) in sorted(tensors.items()):
        raw = struct.pack("<%df" % len(vals), *vals)
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)

def adapter(d, cfg, tensors):
    os.makedirs(d, exist_ok=True)
    cfg = dict(cfg, base_model_name_or_path="stories260K", task_type="CAUSAL_LM",
               inference_mode=True)
    json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
    write_st(os.path.join(d, "adapter_model.safetensors"), tensors)

D, HID, L, KV = 64, 172, 5, 32
OUT = {"q_proj": D, "k_proj": KV, "v_proj": KV, "o_proj": D, "gate_proj": HID, "up_proj": HID,
       "down_proj": D}
IN = {"q_proj": D, "k_proj": D, "v_proj": D, "o_proj": D, "gate_proj": D, "up_proj": D,
      "down_proj": HID}
PART = {m: "self_attn" if m[1:] == "_proj" and m[0] in "qkvo" else "mlp" for m in OUT}

def key(l, m, suffix):
    return "base_model.model.model.layers.%d.%s.%s.%s" % (l, PART[m], m, suffix)

def g(r, n, s):
    return [r.gauss(0, s) for _ in range(n)]

root, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7
r = random.Random(seed)
t = {}
for l in range(L):
    for m in ("q_proj", "v_proj"):
        t[key(l, m, "lora_A.weight")] = ([4, IN[m]], g(r, 4 * IN[m], 0.08))
        t[key(l, m, "lora_B.weight")] = ([OUT[m], 4], g(r, OUT[m] * 4, 0.08))
adapter(os.path.join(root, "lora"), {"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                    "target_modules": ["q_proj", "v_proj"]}, t)
t = {}
for l in range(L):
    for m in ("o_proj", "down_proj"):
        t[key(l, m, "road_theta")] = ([OUT[m] // 2], g(r, OUT[m] // 2, 0.3))
        t[key(l, m, "road_alpha")] = ([OUT[m] // 2], [1 + x for x in g(r, OUT[m] // 2, 0.1)])
adapter(os.path.join(root, "road"), {"peft_type": "ROAD", "variant": "road_1", "group_size": 8,
                                    "target_modules": ["o_proj", "down_proj"]}, t)
t = {}
for l in range(L):
    m = "down_proj"  # series, after the MLP's output
    t[key(l, m, "adapter_down.weight")] = ([4, D], g(r, 4 * D, 0.2))
    t[key(l, m, "adapter_up.weight")] = ([D, 4], g(r, D * 4, 0.2))
adapter(os.path.join(root, "bottleneck"),
        {"peft_type": "BOTTLENECK", "bottleneck_size": 4, "non_linearity": "tanh",
         "use_parallel_adapter": False, "scaling": 1.0, "adapter_dropout": 0.0,
         "target_modules": ["down_proj"]}, t)
