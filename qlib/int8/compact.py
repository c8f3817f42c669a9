"""The compact form of a recording: what the course keeps in data/kernel-recordings, small enough for git.

    python -m qlib.int8.compact SRC DST [--images N]

Each tensor of a model recording's calls is kept once (an op's input is usually the output of
the op before it); the test-split outputs become the int8 logits with their scale and zero point
(checked to dequantize to the recorded floats exactly) for the first N images; outputs of more
than 4,096 values (single layers, long adds) become a sha256 plus every 61st value, enough to
say "exact" for certain and to estimate a mismatch count otherwise. Files are lzma-compressed
(*.pt.xz) and listed with their sha256 in DST/manifest.json.
Notebook 08, section 8.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from .recordings import HOW_RECORDED, SAMPLE_STRIDE, RecordingError, load, recording_files, save, sha256, write_manifest

LONG = 4096


def _short(output: torch.Tensor):
    if output.numel() <= LONG:
        return output
    output = output.contiguous()
    return {"sha256": sha256(output), "sample": output.reshape(-1)[::SAMPLE_STRIDE].clone()}


def _seeded(weight: dict) -> dict:
    """Single layers' weights come from the recorder's seeds (recordings.layer_case): keep a check."""
    return {"sha256": sha256(weight["int"]), "per_channel": "scales" in weight}


def _pool(d, tensors: list, index: dict):
    """Replace every {"int": tensor} in a qdict by {"ref": i} into the pool `tensors`."""
    if not isinstance(d, dict):
        return d
    if "list" in d:
        return {"list": [_pool(v, tensors, index) for v in d["list"]]}
    if "int" in d and "scale" in d:
        t = d["int"].contiguous()
        key = (t.dtype, tuple(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest())
        if key not in index:
            index[key] = len(tensors)
            tensors.append(t)
        return {**{k: v for k, v in d.items() if k != "int"}, "ref": index[key]}
    return d


def _logits(rec: dict, images: int) -> dict:
    outputs = rec["test_outputs"]
    y = outputs["y"]
    if isinstance(y, torch.Tensor):                   # shared format: floats; the DeQuantStub's qparams
        dequant = next(c for c in rec["calls"] if c["type"] == "DeQuantize")["inputs"][0]
        scale, zp = dequant["scale"], dequant["zero_point"]
        q = torch.round(y / torch.tensor(scale, dtype=torch.float32)) + zp
        if not torch.equal((q - zp) * torch.tensor(scale, dtype=torch.float32), y):
            raise RecordingError("the recorded test outputs are not the int8 logits dequantized")
        y = {"int": q.to(torch.uint8), "scale": scale, "zero_point": zp}
    return {"batch_size": outputs["batch_size"], "y": {**y, "int": y["int"][:images].clone()}}


def compact(rec: dict, images: int = 500) -> dict:
    if "recipe" in rec:
        tensors, index = [], {}
        calls = [{**c, "inputs": [_pool(a, tensors, index) for a in c["inputs"]],
                  "kwargs": {k: _pool(v, tensors, index) for k, v in c.get("kwargs", {}).items()},
                  "output": _pool(c["output"], tensors, index)} for c in rec["calls"]]
        out = {**rec, "calls": calls, "tensors": tensors}
        if "test_outputs" in rec:
            out["test_outputs"] = _logits(rec, images)
        return out
    if "layers" in rec:
        return {**rec, "layers": {k: {**v, "output": _short(v["output"]), "weight": _seeded(v["weight"])}
                                  for k, v in rec["layers"].items()}}
    if "adds" in rec:
        return {**rec, "adds": [{**a, "output": _short(a["output"])} for a in rec["adds"]]}
    raise RecordingError("not a model, layers or adds recording: compact only knows the formats that python -m qlib.int8.record writes")


def compact_folder(src: Path, dst: Path, images: int = 500, note: str = "", recorded: str = "real") -> None:
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for path in recording_files(src):
        name = path.name[:-3] if path.name.endswith(".xz") else path.name
        save(compact(load(path), images), dst / f"{name}.xz")
        print(f"{name}.xz: {(dst / f'{name}.xz').stat().st_size:,} bytes", flush=True)
    write_manifest(dst, note, recorded)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--images", type=int, default=500, help="test-split outputs kept per model")
    parser.add_argument("--note", default="", help="a line for the manifest (where and how recorded)")
    parser.add_argument("--recorded", choices=HOW_RECORDED, default="real",
                        help="real: on the CPU itself; emulated: libraries capped by environment variables; "
                             "qemu: another architecture's PyTorch build under QEMU")
    args = parser.parse_args(argv)
    compact_folder(args.src, args.dst, args.images, args.note, args.recorded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
