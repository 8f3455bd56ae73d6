# st_reader.py: a small safetensors reader for the CLI tests' python3 helpers,
# written from the format's rules, independent of adapterctl. Imported through
# $ACTL_CLI_LIB (tests/cli/lib/common.sh sets it).
import json, struct

def tensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file, by the format's rules."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    h = json.loads(data[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (e["dtype"], e["shape"], data[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]])
            for k, e in h.items()}
