"""FP32 vs INT8: accuracy, size and latency, measured in one run (`python -m qlib.bench`).

Latency is the median of repeated timed forward passes after a warm-up, with torch's intra-op
thread count fixed (and reported), because a CPU shared with other work gives noisy single
timings and thread count changes the answer more than anything else. Ratios INT8/FP32 are only
meaningful within one run on one machine, so the script measures both sides every time.
A model converted under one quantized engine runs with that engine active (see qlib.engines).
Notebook 07, section "FP32 vs INT8".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .engines import engine_active, engine_of
from .errors import check_whole
from .metrics import as_tensors, evaluate
from .paths import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results.md"


@contextlib.contextmanager
def threads(count: int | None):
    """Fix torch's intra-op thread count inside the block (None: keep the current one)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(check_whole(count, "threads", 1))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@dataclass
class Latency:
    """Median and spread of per-batch forward times, in milliseconds."""

    batch_size: int
    threads: int
    repeats: int
    median_ms: float
    min_ms: float
    max_ms: float

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch_size


def latency(model: nn.Module, batch_size: int = 1, input_shape=(1, 28, 28), warmup: int = 5,
            repeats: int = 30, num_threads: int | None = 1, seed: int = 0) -> Latency:
    """Time `repeats` forward passes of a random batch after `warmup` untimed ones."""
    check_whole(batch_size, "batch_size", 1)
    check_whole(repeats, "repeats", 1, example=30)
    check_whole(warmup, "warmup", 0, example=5)
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed))
    model.eval()
    times = []
    with threads(num_threads) as used, engine_active(engine_of(model)), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return Latency(batch_size, used, repeats, statistics.median(times), min(times), max(times))


# --- the script --------------------------------------------------------------------------------

def benchmark(names=("seednet-fmnist", "resnet18-fmnist"), engines=None, calibration_images: int = 2048,
              batch_sizes=(1, 64), num_threads: int = 1, repeats: int = 30, progress: bool = True,
              test_images: int = 10_000) -> pd.DataFrame:
    """One row per (checkpoint, FP32 or INT8 engine): test accuracy, size, latency.

    Accuracy is on the full test split unless `test_images` asks for a (seeded) subset.
    """
    from .data import calibration_subset, evaluation_subset
    from .inspection import size_bytes
    from .engines import available_engines, check_engine
    from .pretrained import available, load, spec
    from .ptq import quantize_static

    engines = [check_engine(e) for e in (engines or available_engines())]
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        spec(name)  # a misspelt name is an error, not a silent skip
    test = as_tensors(evaluation_subset(test_images))
    calibration = calibration_subset(calibration_images)
    rows = []
    for name in names:
        if name not in available():
            print(f"skipping {name}: checkpoint not found", file=sys.stderr)
            continue
        fp32 = load(name, quantizable=True)
        variants = [("fp32", fp32)] + [(e, None) for e in engines]
        for label, model in variants:
            if model is None:
                model = quantize_static(fp32, calibration, engine=label, progress=False)
            row = dict(model=name, precision="FP32" if label == "fp32" else "INT8",
                       engine="-" if label == "fp32" else label,
                       accuracy=evaluate(model, test, progress=progress), size_bytes=size_bytes(model))
            for batch_size in batch_sizes:
                row[f"latency_b{batch_size}_ms"] = latency(model, batch_size, num_threads=num_threads,
                                                           repeats=repeats).median_ms
            rows.append(row)
            if progress:
                print(f"{name:16s} {row['precision']} {row['engine']:8s} acc {row['accuracy']:.2f}%", file=sys.stderr)
    table = pd.DataFrame(rows)
    return add_ratios(table, batch_sizes)


def add_ratios(table: pd.DataFrame, batch_sizes=(1, 64)) -> pd.DataFrame:
    """INT8/FP32 ratios of size and latency, and the accuracy change, against the same model's FP32 row."""
    table = table.copy()
    fp32 = table[table.precision == "FP32"].set_index("model")
    reference = fp32.loc[table.model]
    table["accuracy_change"] = table.accuracy.values - reference.accuracy.values
    table["size_ratio"] = table.size_bytes.values / reference.size_bytes.values
    for batch_size in batch_sizes:
        column = f"latency_b{batch_size}_ms"
        table[f"latency_b{batch_size}_ratio"] = table[column].values / reference[column].values
    return table


def to_markdown(table: pd.DataFrame, num_threads: int, calibration_images: int) -> str:
    """The results table as Markdown (no extra dependency: pandas' to_markdown needs tabulate)."""
    try:
        from .sysinfo import cpu_name
    except ImportError:  # pragma: no cover - sysinfo is part of the package
        import platform

        def cpu_name() -> str:
            return platform.processor() or "unknown"

    formats = {"accuracy": "{:.2f}", "accuracy_change": "{:+.2f}", "size_bytes": "{:,}",
               "size_ratio": "{:.3f}"}
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = []
        for column in header:
            value = row[column]
            fmt = formats.get(column, "{:.3f}" if isinstance(value, float) else "{}")
            cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        "# FP32 vs INT8 (written by `python -m qlib.bench`)", "",
        f"torch {torch.__version__}, CPU: {cpu_name()}, {num_threads} intra-op thread(s); "
        f"INT8 = eager-mode static quantization with each engine's default qconfig, "
        f"calibrated on {calibration_images} training images. Accuracy: full test split "
        f"(10,000 images). Latency: median ms per forward pass of one batch; ratios are "
        f"INT8/FP32 measured in the same run. Size: serialised state dict.", "",
        *lines, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for latency (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per latency figure")
    parser.add_argument("--calibration-images", type=int, default=2048)
    parser.add_argument("--engines", nargs="*", default=None, help="default: every available engine")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from .quiet import quiet_deprecations

    quiet_deprecations()
    start = time.perf_counter()
    table = benchmark(engines=args.engines, calibration_images=args.calibration_images,
                      num_threads=args.threads, repeats=args.repeats)
    text = to_markdown(table, args.threads, args.calibration_images)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text += (f"\nWhole run: {time.perf_counter() - start:.0f} s. System load average at the end "
             f"(1, 5, 15 min): {load} on {os.cpu_count()} CPUs; other processes competing for the "
             "cores make single timings noisy, so compare ratios from one run.\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
