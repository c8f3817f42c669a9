"""FP32 vs INT8: accuracy, size and latency, measured in one run (`python -m qlib.bench`), and the
measurements that explain the latency: where the time goes (torch.profiler), what one call costs.

Timings come from qlib.timing: every model warmed up first, interleaved rounds, medians and
their spread, torch's intra-op thread count fixed (and reported), because thread count changes
the answer more than anything else. Ratios
INT8/FP32 are only meaningful within one run on one machine, so every run measures both sides. A
model converted under one quantized engine runs with that engine active (see qlib.engines).
`python -m qlib.bench` writes its tables and figures to build/bench/ (not tracked: they describe
one machine on one day). Notebook 07, "The latency story".
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import re
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import timing
from .engines import engine_active, engine_of
from .errors import BadInputError, check_whole
from .metrics import as_tensors, evaluate
from .paths import REPO_ROOT

OUTPUT_DIR = REPO_ROOT / "build" / "bench"

ALL_THREADS = timing.ALL_THREADS
threads = timing.threads     # one place for the thread count: qlib.timing


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


def random_batch(batch_size: int, input_shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    check_whole(batch_size, "batch_size", 1)
    return torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed))


def latency(model: nn.Module, batch_size: int = 1, input_shape=(1, 28, 28), warmup: int = 5,
            repeats: int = 30, num_threads: int | None = 1, seed: int = 0) -> Latency:
    """Time `repeats` forward passes of a random batch after `warmup` untimed ones (one model;
    to compare models, qlib.timing.compare interleaves them)."""
    x = random_batch(batch_size, input_shape, seed)
    t = timing.compare({"model": model}, x, rounds=1, repeats=repeats, warmup=warmup, num_threads=num_threads)["model"]
    return Latency(batch_size, t.threads, repeats, t.median_ms, t.fastest_ms, t.high_ms)


def latency_grid(models: dict[str, nn.Module], batch_sizes=(1, 64), thread_counts=(1, None), repeats: int = 10,
                 rounds: int = 3, warmup: int = 2, progress: bool = True) -> pd.DataFrame:
    """Latency of every model at every batch size and thread count (None: all, torch's default).

    For each (threads, batch size), the models are timed together by qlib.timing.compare: all
    warmed up first, then `rounds` interleaved rounds of `repeats` calls. One row per (variant,
    threads, batch_size): median_ms (the median of the round medians) with its spread low_ms ..
    high_ms, latency_ms (the fastest single pass: the least disturbed one) and per_image_ms
    (median_ms / batch). Columns also: variant, engine ("-" for a float model), threads.
    """
    check_whole(rounds, "rounds", 1, example=3)
    counts = [ALL_THREADS if count is None else check_whole(count, "threads", 1) for count in thread_counts]
    counts = list(dict.fromkeys(counts))  # one core: "1" and "all" are the same cell
    cells = [(count, batch) for count in counts for batch in batch_sizes]
    measured = {(count, batch): timing.compare(models, random_batch(batch), rounds=rounds, repeats=repeats,
                                               warmup=warmup, num_threads=count)
                for count, batch in tqdm(cells, desc="latency grid", disable=not progress, leave=False)}
    rows = [dict(variant=name, engine=engine_of(model) or "-", threads=count, batch_size=batch,
                 latency_ms=t.fastest_ms, median_ms=t.median_ms, low_ms=t.low_ms, high_ms=t.high_ms,
                 per_image_ms=t.median_ms / batch)
            for name, model in models.items() for (count, batch) in cells
            for t in [measured[count, batch][name]]]
    return pd.DataFrame(rows)


def timings_of(grid: pd.DataFrame, rounds: int, repeats: int, **where) -> dict[str, timing.Timing]:
    """The grid's rows selected by column values (e.g. model="SeedNet", threads=1, batch_size=1) as
    {variant: qlib.timing.Timing}, for timing.verdict and timing.fastest."""
    rows = grid
    for column, value in where.items():
        rows = rows[rows[column] == value]
    if rows.variant.duplicated().any() or rows.empty:
        raise BadInputError(f"{where} selects {len(rows)} rows with {rows.variant.nunique()} variants: select one "
                            "model, thread count and batch size, so that each variant has one row.")
    return {r.variant: timing.Timing(r.variant, r.median_ms, r.low_ms, r.high_ms, r.latency_ms, rounds, repeats,
                                     int(r.threads)) for r in rows.itertuples()}


# --- where the time goes ------------------------------------------------------------------------

# Self time of each op, in categories that explain an INT8/FP32 ratio: the multiply-accumulate work
# int8 kernels speed up, and everything around it that they do not.
OP_CATEGORIES = (
    ("conv / linear", ("conv", "linear", "addmm", "matmul", "aten::mm")),
    ("quantize / dequantize", ("quantize_per_tensor", "dequantize")),
    ("add", ("add",)),
    ("batch norm", ("batch_norm",)),
    ("relu / pooling", ("relu", "clamp", "pool", "mean", "max")),
)


def op_category(name: str) -> str:
    """The category of a profiler op name (see OP_CATEGORIES); "other" for bookkeeping ops
    (allocations, views, reading a scale) and anything unlisted."""
    for category, words in OP_CATEGORIES:
        if any(word in name for word in words):
            return category
    return "other"


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide what C++ writes to file descriptor 2 inside the block: the profiler's start / stop
    log lines (and a CUDA probe's complaint on machines without a GPU), which say nothing here."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def op_times(model: nn.Module, batch_size: int = 64, input_shape=(1, 28, 28), num_threads: int | None = 1,
             repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """Self CPU time of every op of one forward pass (torch.profiler), after a warm-up. One row per
    op name: calls (per pass), self_ms (per pass), category. Each of `repeats` passes is profiled
    on its own and each op keeps its fastest pass, the least disturbed by other work.

    Self time excludes the ops an op calls, so the column sums to the time spent inside ops; the
    rest of a forward pass (Python, module calls) is not in the table.
    """
    from torch.profiler import ProfilerActivity, profile

    check_whole(repeats, "repeats", 1, example=3)
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed))
    model.eval()
    passes = []
    with threads(num_threads), engine_active(engine_of(model)), torch.inference_mode():
        model(x)
        for _ in range(repeats):
            with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
            passes.append({event.key: (event.count, event.self_cpu_time_total / 1e3) for event in prof.key_averages()})
    rows = [dict(op=op, calls=calls, self_ms=min(p[op][1] for p in passes if op in p), category=op_category(op))
            for op, (calls, _) in passes[0].items()]
    return pd.DataFrame(rows).sort_values("self_ms", ascending=False, ignore_index=True)


def time_shares(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Self time per category (ms per pass), one column per profiled variant."""
    order = [category for category, _ in OP_CATEGORIES] + ["other"]
    return pd.DataFrame({name: table.groupby("category").self_ms.sum() for name, table in tables.items()}
                        ).reindex(order).fillna(0.0)


# --- what one call costs ------------------------------------------------------------------------

def conv_call_us(engine: str | None, batch_size: int = 1, in_channels: int = 16, out_channels: int = 32,
                 size: int = 1, kernel: int = 3, repeats: int = 100, rounds: int = 10, num_threads: int | None = 1,
                 seed: int = 0) -> float:
    """Microseconds per call of one conv layer (3x3, padding 1) on a [batch, in_channels, size, size]
    input: the float nn.Conv2d (engine None), or a quantized conv with its weights packed for
    `engine`, fed channels-last int8 input as it gets inside a converted model (every engine's
    convs return channels-last). The fastest of `rounds` averages of `repeats` calls. On a 1x1
    input the arithmetic is a few hundred multiply-adds, so the time is what a call costs whatever
    it computes.
    """
    import torch.ao.nn.quantized as nnq

    for name, value, low in (("batch_size", batch_size, 1), ("size", size, 1), ("repeats", repeats, 1),
                             ("rounds", rounds, 1)):
        check_whole(value, name, low)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) * 0.1
    bias = torch.randn(out_channels, generator=generator)
    x = torch.randn(batch_size, in_channels, size, size, generator=generator)
    if engine is None:
        layer = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2).eval()
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        call = lambda: layer(x)  # noqa: E731
    else:
        with engine_active(engine):
            layer = nnq.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
            scales = weight.abs().amax((1, 2, 3)).double() / 127
            layer.set_weight_bias(torch.quantize_per_channel(weight, scales, torch.zeros(out_channels, dtype=torch.long),
                                                             0, torch.qint8), bias)
            layer.scale, layer.zero_point = 0.05, 64
        xq = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), 0.03, 64, torch.quint8)
        call = lambda: layer(xq)  # noqa: E731
    averages = []
    with threads(num_threads), engine_active(engine), torch.inference_mode():
        for _ in range(min(repeats, 20)):
            call()
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            averages.append((time.perf_counter() - start) / repeats * 1e6)
    return min(averages)


@lru_cache(maxsize=1)
def qnnpack_microkernels() -> tuple[str, ...]:
    """Names of the QNNPACK conv / gemm micro-kernels compiled into this torch (read from its
    libtorch_cpu library): their suffix names the instruction set (sse2 on x86, neon on ARM).
    Empty when the library is not where torch keeps it."""
    library_dir = Path(torch.__file__).parent / "lib"
    found: set[str] = set()
    pattern = re.compile(rb"pytorch_q8(?:conv|gemm)_ukernel_\w+")
    for path in sorted(library_dir.glob("libtorch_cpu*")):
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found.update(match.decode() for match in pattern.findall(data))
    return tuple(sorted(found))


# --- the script --------------------------------------------------------------------------------

def _variants(name: str, engines: list[str], calibration) -> dict[str, nn.Module]:
    """FP32 and one INT8 model per engine (each engine's default qconfig) of checkpoint `name`."""
    from .pretrained import load
    from .ptq import quantize_static

    fp32 = load(name, quantizable=True)
    return {"FP32": fp32, **{f"INT8 {engine}": quantize_static(fp32, calibration, engine=engine, progress=False)
                            for engine in engines}}


def measure(names=("seednet-fmnist", "resnet18-fmnist"), engines=None, calibration_images: int = 2048,
            batch_sizes=(1, 64), thread_counts=(1, None), repeats: int = 30, rounds: int = 3,
            progress: bool = True, test_images: int = 10_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, grid): one summary row per (checkpoint, FP32 or INT8 engine) with test accuracy
    and size; one grid row per (checkpoint, variant, threads, batch size) with its latency.

    Accuracy is on the full test split unless `test_images` asks for a (seeded) subset.
    """
    from .data import calibration_subset, evaluation_subset
    from .engines import available_engines, check_engine
    from .inspection import size_bytes
    from .pretrained import available, spec

    engines = [check_engine(e) for e in (engines or available_engines())]
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        spec(name)  # a misspelt name is an error, not a silent skip
    test = as_tensors(evaluation_subset(test_images))
    calibration = calibration_subset(calibration_images)
    summary, grids = [], []
    for name in names:
        if name not in available():
            print(f"skipping {name}: checkpoint not found", file=sys.stderr)
            continue
        variants = _variants(name, engines, calibration)
        for label, model in variants.items():
            summary.append(dict(model=name, precision=label.split()[0], engine=engine_of(model) or "-",
                                accuracy=evaluate(model, test, progress=progress), size_bytes=size_bytes(model)))
            if progress:
                print(f"{name:16s} {label:14s} acc {summary[-1]['accuracy']:.2f}%", file=sys.stderr)
        grid = latency_grid(variants, batch_sizes, thread_counts, repeats=repeats, rounds=rounds, progress=progress)
        grids.append(grid.assign(model=name))
    grid = pd.concat(grids, ignore_index=True) if grids else pd.DataFrame()
    if len(grid):
        grid["precision"] = grid.variant.str.split().str[0]
        fp32 = grid[grid.precision == "FP32"].set_index(["model", "threads", "batch_size"]).median_ms
        grid["ratio_to_fp32"] = grid.median_ms.values / fp32.loc[list(zip(grid.model, grid.threads,
                                                                         grid.batch_size))].values
    return pd.DataFrame(summary), grid


def benchmark(names=("seednet-fmnist", "resnet18-fmnist"), engines=None, calibration_images: int = 2048,
              batch_sizes=(1, 64), num_threads: int = 1, repeats: int = 30, progress: bool = True,
              test_images: int = 10_000, rounds: int = 3) -> pd.DataFrame:
    """One row per (checkpoint, FP32 or INT8 engine): test accuracy, size, and the latency at each
    batch size with `num_threads` threads (latency_b{batch}_ms), with ratios against FP32."""
    summary, grid = measure(names, engines, calibration_images, batch_sizes, (num_threads,), repeats, rounds,
                            progress, test_images)
    return add_ratios(with_latency_columns(summary, grid, num_threads, batch_sizes), batch_sizes)


def with_latency_columns(summary: pd.DataFrame, grid: pd.DataFrame, num_threads: int,
                         batch_sizes=(1, 64)) -> pd.DataFrame:
    """The summary with one latency_b{batch}_ms column per batch size, read from the grid at `num_threads`."""
    table = summary.copy()
    at = grid[grid.threads == num_threads].set_index(["model", "engine", "batch_size"]).median_ms
    for batch_size in batch_sizes:
        table[f"latency_b{batch_size}_ms"] = [at[model, engine, batch_size]
                                              for model, engine in zip(table.model, table.engine)]
    return table


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


def markdown_table(table: pd.DataFrame) -> str:
    """A table as Markdown (no extra dependency: pandas' to_markdown needs tabulate)."""
    formats = {"accuracy": "{:.2f}", "accuracy_change": "{:+.2f}", "size_bytes": "{:,}", "size_ratio": "{:.3f}"}
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = []
        for column in header:
            value = row[column]
            fmt = formats.get(column, "{:.3f}" if isinstance(value, float) else "{}")
            cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(table: pd.DataFrame, num_threads: int, calibration_images: int, grid: pd.DataFrame | None = None) -> str:
    """The results as Markdown: the summary table and, when given, the latency grid."""
    from .sysinfo import cpu_name

    text = ["# FP32 vs INT8 (written by `python -m qlib.bench`)", "",
            f"torch {torch.__version__}, CPU: {cpu_name()}, {os.cpu_count()} logical CPU(s); INT8 = eager-mode "
            f"static quantization with each engine's default qconfig, calibrated on {calibration_images} training "
            f"images. Accuracy: test split. Latency: ms per forward pass of one batch with {num_threads} "
            "intra-op thread(s), the median of interleaved rounds' medians (qlib.timing; low_ms .. high_ms: the "
            "fastest and slowest round); ratios are INT8/FP32 medians measured in the same run. "
            "Size: serialised state dict.", "", markdown_table(table), ""]
    if grid is not None and len(grid):
        columns = ["model", "variant", "threads", "batch_size", "median_ms", "low_ms", "high_ms", "per_image_ms",
                   "ratio_to_fp32"]
        text += ["## Latency grid (every engine, thread count and batch size)", "", markdown_table(grid[columns]), ""]
    return "\n".join(text)


# --- figures ------------------------------------------------------------------------------------

def plot_latency(grid: pd.DataFrame, model: str | None = None, axes=None):
    """Bars of latency per variant: one panel per batch size, one bar per thread count (ms per batch)."""
    import matplotlib.pyplot as plt

    grid = grid if model is None or "model" not in grid else grid[grid.model == model]
    batches, counts = sorted(grid.batch_size.unique()), sorted(grid.threads.unique())
    variants = list(dict.fromkeys(grid.variant))
    if axes is None:
        _, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.2), squeeze=False)
        axes = axes[0]
    width = 0.8 / len(counts)
    for ax, batch in zip(axes, batches):
        at = grid[grid.batch_size == batch].set_index(["variant", "threads"])
        for k, count in enumerate(counts):
            cells = [at.loc[(v, count)] if (v, count) in at.index else None for v in variants]
            median = [c.median_ms if c is not None else float("nan") for c in cells]
            spread = [[m - c.low_ms if c is not None else 0 for m, c in zip(median, cells)],
                      [c.high_ms - m if c is not None else 0 for m, c in zip(median, cells)]]
            ax.bar([i + k * width for i in range(len(variants))], median, width, yerr=spread, capsize=2,
                   label=f"{count} thread{'s' if count > 1 else ''}")
        ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(variants))], variants, rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylabel("ms per batch (median, round spread)")
        ax.set_title(f"{model + ', ' if model else ''}batch {batch}", fontsize=10)
        ax.legend(fontsize=8)
    plt.tight_layout()
    return axes[0].figure


def plot_summary(summary: pd.DataFrame, column: str, ylabel: str, title: str):
    """One bar per (model, variant) of a summary column (size or accuracy)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{m}\n{p if e == '-' else e}" for m, p, e in zip(summary.model, summary.precision, summary.engine)]
    ax.bar(range(len(summary)), summary[column])
    ax.set_xticks(range(len(summary)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if column == "accuracy":
        low = float(summary[column].min())
        ax.set_ylim(max(0.0, low - 2), min(100.0, float(summary[column].max()) + 1))
    plt.tight_layout()
    return fig


def write_results(summary: pd.DataFrame, grid: pd.DataFrame, output_dir: Path, calibration_images: int,
                  footer: str = "") -> list[Path]:
    """results.md, results.csv, latency.csv and the figures (latency per model, size, accuracy) in output_dir."""
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    batch_sizes = tuple(sorted(grid.batch_size.unique()))
    table = add_ratios(with_latency_columns(summary, grid, 1 if 1 in set(grid.threads) else int(grid.threads.min()),
                                            batch_sizes), batch_sizes)
    written = [output_dir / "results.md", output_dir / "results.csv", output_dir / "latency.csv"]
    written[0].write_text(to_markdown(table, 1, calibration_images, grid) + footer)
    table.to_csv(written[1], index=False)
    grid.to_csv(written[2], index=False)
    for model in dict.fromkeys(grid.model):
        figure = plot_latency(grid, model)
        written.append(output_dir / f"latency-{model}.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    for column, ylabel, title in (("size_bytes", "bytes (state dict)", "size"),
                                  ("accuracy", "test accuracy (%)", "accuracy")):
        figure = plot_summary(table, column, ylabel, title)
        written.append(output_dir / f"{title}.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help=f"intra-op thread counts to time (default: 1 and all, here {ALL_THREADS})")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is the median of their medians, with their spread")
    parser.add_argument("--calibration-images", type=int, default=2048)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--models", nargs="*", default=["seednet-fmnist", "resnet18-fmnist"])
    parser.add_argument("--engines", nargs="*", default=None, help="default: every available engine")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR,
                        help="where tables and figures go (default build/bench/, not tracked)")
    args = parser.parse_args(argv)
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only: no window, no display needed
    from .quiet import quiet_deprecations

    quiet_deprecations()
    start = time.perf_counter()
    summary, grid = measure(args.models, args.engines, args.calibration_images, (1, 64),
                            tuple(args.threads) if args.threads else (1, None), args.repeats, args.rounds,
                            progress=True, test_images=args.test_images)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    footer = (f"\nWhole run: {time.perf_counter() - start:.0f} s. System load average at the end "
              f"(1, 5, 15 min): {load} on {os.cpu_count()} CPUs; other processes competing for the "
              "cores make single timings noisy, so compare ratios from one run.\n")
    written = write_results(summary, grid, args.output_dir, args.calibration_images, footer)
    print(written[0].read_text())
    print(f"tables and figures written to {args.output_dir}:")
    for path in written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
