"""The one place that decides whose arithmetic an op follows: (op, engine, CPU, requant) -> functions.

Layers never ask which engine or CPU they run on: they ask `arithmetic(op, ...)` once and call
what it returns. The decisions, in the order PyTorch makes them:

1. requant="fixedpoint": every op uses fixedpoint.py, whatever the engine or CPU.
2. conv / linear: which library runs the layer (`library_for`): the engine's own, except that
   engine x86 sends a conv to oneDNN where PyTorch's should_use_onednn_quant says so (Linux,
   AVX-512 VNNI, groups <= 100, symmetric weights) and everything else to FBGEMM. Then that
   library's requantization (requantize.py) and, on CPUs without VNNI, its int16 pairs (quirks.py).
3. ops without weights: QNNPACK's own kernels under engine qnnpack (the fixed-point add), ATen's
   elsewhere, with the CPU's vector width and lanes deciding which positions take the scalar form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from . import elementwise, fixedpoint, quirks, requantize
from .cpu import CpuProfile

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
REQUANT_MODES = ("exact", "fixedpoint")


@dataclass(frozen=True)
class WeightedArithmetic:
    """How a conv or linear layer computes: its kernel library, int16 pairs, requantization."""

    library: str                     # "fbgemm", "onednn", "qnnpack" or "fixedpoint"
    pairs: Callable | None           # (channels, taps, groups) -> index pairs, or None: exact int32 sums
    requantize: Callable | None      # (acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel) -> ints

    @property
    def label(self) -> str:
        return self.library + (" (int16 pairs)" if self.pairs else "")


def library_for(op: str, engine: str, cpu: CpuProfile, groups: int = 1, symmetric: bool = True) -> str:
    """The library whose kernel PyTorch runs for a conv or linear layer converted under `engine`."""
    if engine != "x86":
        return engine
    if op == "conv" and cpu.x86_conv_prefers_onednn and groups <= 100 and symmetric:
        return "onednn"
    return "fbgemm"


def weighted(op: str, engine: str, cpu: CpuProfile, requant: str = "exact", groups: int = 1,
             symmetric: bool = True) -> WeightedArithmetic:
    """The arithmetic of a conv ("conv") or linear ("linear") layer."""
    if requant == "fixedpoint":
        return WeightedArithmetic("fixedpoint", None, None)
    library = library_for(op, engine, cpu, groups, symmetric)
    if library == "fbgemm":
        pairs = functools.partial(quirks.pairs_of, "fbgemm") if cpu.fbgemm_int16_pairs else None
        return WeightedArithmetic("fbgemm", pairs, requantize.requantize_fbgemm)
    if library == "onednn":
        pairs = functools.partial(quirks.pairs_of, "onednn") if cpu.onednn_int16_pairs else None
        return WeightedArithmetic("onednn", pairs, functools.partial(requantize.requantize_onednn,
                                                                     scales=cpu.onednn_scales))
    return WeightedArithmetic("qnnpack", None, requantize.requantize_qnnpack)


def binary(op: str, engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """add / mul (relu or not): f(a, sa, za, b, sb, zb, s, z, relu, channels_last) -> ints."""
    if requant == "fixedpoint":
        fn = fixedpoint.add_fixedpoint if op == "add" else fixedpoint.mul_fixedpoint
        return lambda *args, channels_last=False: fn(*args)
    if op == "mul":
        return lambda *args, channels_last=False: elementwise.mul_float(*args)
    if engine == "qnnpack":
        return lambda *args, channels_last=False: elementwise.add_qnnpack(*args)

    def add(a, sa, za, b, sb, zb, s, z, relu, channels_last=False):
        tail = quirks.tail_positions(a.shape, channels_last, cpu)
        return elementwise.add_float(a, sa, za, b, sb, zb, s, z, relu, tail)
    return add


def move_qparams(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """cat's requantization of one input: f(q, s_in, z_in, s, z, nhwc) -> ints."""
    if requant == "fixedpoint":
        return lambda q, s_in, z_in, s, z, nhwc=False: fixedpoint.requantize_values(q, s_in, z_in, s, z)

    def move(q, s_in, z_in, s, z, nhwc=False):
        if not nhwc:                    # generic path: dequantize, torch.cat, quantize_per_tensor
            return elementwise.requantize_lanes(q, s_in, z_in, s, z)
        if (s_in, z_in) == (s, z):      # qcat_nhwc_kernel copies inputs with the output's qparams
            return q
        return elementwise.requantize_lanes(q, s_in, z_in, s, z, quirks.vector_lanes(q.shape[1], cpu))
    return move


def average(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """Average pooling's division: f(acc, s_in, divisor, zp, nhwc) -> ints (output keeps s_in, zp)."""
    if requant == "fixedpoint":
        return lambda acc, s_in, divisor, zp, nhwc=False: (fixedpoint.divide_fixedpoint(acc, divisor) + zp).clamp(0, 255)

    def divide(acc, s_in, divisor, zp, nhwc=False):
        lanes = quirks.vector_lanes(acc.shape[1], cpu) if nhwc else None
        return elementwise.avg_pool_requantize(acc, s_in, s_in, divisor, zp, lanes)
    return divide


def adaptive_average(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """Adaptive average pooling's division, one window size at a time: f(acc, s_in, size, zp)."""
    if requant == "fixedpoint":
        return lambda acc, s_in, size, zp: fixedpoint.divide_fixedpoint(acc, torch.tensor(size)) + zp
    return lambda acc, s_in, size, zp: elementwise.avg_pool_requantize(acc, s_in, s_in, torch.tensor(size), zp)


def check(engine: str, requant: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one the interpreter knows; choose one of {ENGINES}.")
    if requant not in REQUANT_MODES:
        raise ValueError(f"requant must be one of {REQUANT_MODES}, got {requant!r}.")
