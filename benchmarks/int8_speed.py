"""How fast is the readable integer interpreter next to PyTorch's own int8 kernels?

    python benchmarks/int8_speed.py               # both checkpoints, full test split, engine x86
    python benchmarks/int8_speed.py --fixedpoint  # also: fixed-point accuracy and per-layer mismatches

Every batch is also checked bit for bit (torch.equal) against the converted model's output.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from tqdm.auto import tqdm

from qlib import data, int8, pretrained, ptq
from qlib.quiet import quiet_deprecations


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def measure(name: str, engine: str, images, labels, batch_size: int, calibration_images: int,
            fixedpoint: bool):
    model = pretrained.load(name, quantizable=True)
    qmodel = ptq.quantize_static(model, data.calibration_subset(calibration_images), engine=engine,
                                 progress=False)
    interpreter = int8.Interpreter(qmodel)
    fixed = int8.Interpreter(qmodel, requant="fixedpoint") if fixedpoint else None
    torch_s = ours_s = 0.0
    correct = {"torch": 0, "interpreter": 0, "fixedpoint": 0}
    exact, layers = True, []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc=name, leave=False):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            theirs, seconds = timed(qmodel, x)
            torch_s += seconds
            ours, seconds = timed(interpreter, x)
            ours_s += seconds
            exact &= torch.equal(ours, theirs)
            correct["torch"] += int((theirs.argmax(1) == y).sum())
            correct["interpreter"] += int((ours.argmax(1) == y).sum())
            if fixed is not None:
                correct["fixedpoint"] += int((fixed(x).argmax(1) == y).sum())
                layers.append(int8.compare_layers(qmodel, x, requant="fixedpoint"))
    row = {"model": name, "engine": engine, "images": len(images), "torch s": round(torch_s, 2),
           "interpreter s": round(ours_s, 2), "ratio": round(ours_s / torch_s, 1), "bit-exact": exact,
           "torch acc %": 100 * correct["torch"] / len(images)}
    if fixed is not None:
        row["fixed-point acc %"] = 100 * correct["fixedpoint"] / len(images)
        table = pd.concat(layers).groupby(["layer", "type"], sort=False)
        layers = table.agg(elements=("elements", "sum"), mismatches=("mismatches", "sum"),
                           max_diff=("max_diff", "max")).reset_index()
    return row, layers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seednet-fmnist", "resnet18-fmnist"])
    parser.add_argument("--engine", default="x86")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--calibration-images", type=int, default=2048)
    parser.add_argument("--fixedpoint", action="store_true", help="also evaluate requant='fixedpoint'")
    args = parser.parse_args(argv)
    quiet_deprecations()
    images, labels = data.fashion_mnist("test").tensors()
    images, labels = images[:args.images], labels[:args.images]
    rows = []
    for name in args.models:
        if name not in pretrained.available():
            print(f"skipping {name}: checkpoint not available")
            continue
        row, layers = measure(name, args.engine, images, labels, args.batch_size,
                              args.calibration_images, args.fixedpoint)
        rows.append(row)
        if args.fixedpoint:
            print(f"\n{name}: fixed-point requantization vs PyTorch, int8 outputs per layer")
            print(layers.to_string(index=False))
    cpu = int8.CpuProfile.detect()
    print(f"\nCPU kind {cpu.kind!r} ({cpu.description}); ATen {cpu.aten}, FBGEMM {cpu.fbgemm}, "
          f"oneDNN {cpu.onednn}; {torch.get_num_threads()} threads, batch {args.batch_size}")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
