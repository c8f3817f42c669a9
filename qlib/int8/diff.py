"""What two recordings of the same recipes computed differently: one CPU kind against another.

    python -m qlib.int8.diff FOLDER_A FOLDER_B

Replay (qlib.int8.replay) asks "does the interpreter compute what this CPU computed?"; this asks
"did these two CPUs (or a CPU and its emulation) compute the same?", with no interpreter at all.
For every file name the two folders share: a model recording's converted state dict (scales, zero
points, int8 weights: calibration runs float kernels, which may round differently) and its int8
logits on the test images both recorded; a single-layer or add recording's outputs (compared in
full, or by sha256 and the 1-in-61 sample of the compact form). Notebook 08, section 8.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .recordings import RecordingError, load, recording_files


@dataclass
class Difference:
    """What one file pair differs in: part -> (values compared, values that differ)."""

    name: str
    parts: dict = field(default_factory=dict)

    def add(self, part: str, compared: int, differ: int) -> None:
        c, d = self.parts.get(part, (0, 0))
        self.parts[part] = (c + compared, d + differ)

    @property
    def same(self) -> bool:
        return all(d == 0 for _, d in self.parts.values())

    def line(self) -> str:
        parts = "; ".join(f"{p} {d:,}/{c:,} differ" for p, (c, d) in self.parts.items())
        return f"{self.name}: {'same' if self.same else 'DIFFERENT'} ({parts})"


def _compare_outputs(diff: Difference, part: str, a, b) -> None:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        diff.add(part, a.numel(), int((a.reshape(-1) != b.reshape(-1)).sum()))
    else:
        sample_a = a["sample"] if isinstance(a, dict) else a.reshape(-1)[::61]
        sample_b = b["sample"] if isinstance(b, dict) else b.reshape(-1)[::61]
        equal = isinstance(a, dict) and isinstance(b, dict) and a["sha256"] == b["sha256"]
        diff.add(part + " (1-in-61 sample)", sample_a.numel(), 0 if equal else max(1, int((sample_a != sample_b).sum())))


def _state_dict(diff: Difference, a: dict, b: dict) -> None:
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and x.is_quantized and isinstance(y, torch.Tensor) and y.is_quantized:
            diff.add("int8 weights", x.numel(), int((x.int_repr() != y.int_repr()).sum()))
            if x.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                sx, sy = x.q_per_channel_scales(), y.q_per_channel_scales()
                diff.add("weight scales", sx.numel(), int((sx != sy).sum()))
            else:
                diff.add("weight scales", 1, int(x.q_scale() != y.q_scale()))
        elif key.endswith(("scale", "zero_point")) and isinstance(x, torch.Tensor):
            diff.add("activation qparams", x.numel(), int((x != y).sum()))
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and key.endswith("bias"):
            diff.add("biases", x.numel(), int((x != y).sum()))


def diff_recordings(a: dict, b: dict, name: str) -> Difference:
    diff = Difference(name)
    if "recipe" in a and "recipe" in b:
        _state_dict(diff, a["state_dict"], b["state_dict"])
        ya, yb = a["test_outputs"]["y"], b["test_outputs"]["y"]
        n = min(len(ya["int"]), len(yb["int"]))
        diff.add("logit qparams", 2, int(ya["scale"] != yb["scale"]) + int(ya["zero_point"] != yb["zero_point"]))
        diff.add(f"int8 logits, {n} test images", ya["int"][:n].numel(),
                 int((ya["int"][:n] != yb["int"][:n]).sum()))
    elif "layers" in a and "layers" in b:
        for layer in sorted(set(a["layers"]) & set(b["layers"])):
            _compare_outputs(diff, "outputs", a["layers"][layer]["output"], b["layers"][layer]["output"])
    elif "adds" in a and "adds" in b:
        for x, y in zip(a["adds"], b["adds"]):
            _compare_outputs(diff, "outputs", x["output"], y["output"])
    else:
        raise RecordingError(f"{name}: the two files are not recordings of the same kind")
    return diff


def diff_folders(first: Path, second: Path, echo=print) -> list[Difference]:
    names_a = {p.name: p for p in recording_files(first)}
    names_b = {p.name: p for p in recording_files(second)}
    shared = sorted(set(names_a) & set(names_b))
    if not shared:
        raise RecordingError(f"{first} and {second} share no recording file name: nothing to compare.")
    diffs = []
    for name in shared:
        diff = diff_recordings(load(names_a[name]), load(names_b[name]), name)
        echo(diff.line())
        diffs.append(diff)
    only = sorted(set(names_a) ^ set(names_b))
    echo(f"{sum(d.same for d in diffs)}/{len(diffs)} shared recordings the same"
         + (f"; in one folder only: {', '.join(only)}" if only else ""))
    return diffs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a folder of recordings")
    parser.add_argument("second", type=Path, help="another folder of recordings of the same recipes")
    args = parser.parse_args(argv)
    try:
        diffs = diff_folders(args.first, args.second, echo=lambda line: print(line, flush=True))
    except RecordingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if all(d.same for d in diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
