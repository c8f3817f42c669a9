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
Notebook 08, sections 4 and 8.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import check_choice
from . import elementwise, fixedpoint, integer, onednn, quirks, requantize
from .cpu import CpuProfile
from .runstate import offline

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


def fbgemm_path(geometry: dict, cpu: CpuProfile) -> str:
    """FBGEMM's kernel for a layer (FbgemmConv.cc ConvFastPath): "depthwise", "groupwise",
    "pointwise", "im2col" for convs, "gemm" for linear layers."""
    if geometry.get("op") == "linear":
        return "gemm"
    c, oc, g = geometry["in_channels"], geometry["out_channels"], geometry["groups"]
    (kh, kw), stride, pad, dilation = geometry["kernel"], geometry["stride"], geometry["padding"], geometry["dilation"]
    square = kh == kw and stride[0] == stride[1] and pad[0] == pad[1] and dilation == (1, 1)
    k, s, p = kh, stride[0], pad[0]
    if square and g == c and oc in (g, 2 * g) and g % 8 == 0 and s in (1, 2) and k in (3, 5, 7) and p == (k - 1) // 2:
        return "depthwise"
    per_group, out_per_group = c // g, oc // g
    together = max((64 if cpu.avx512 else 32) // out_per_group // max(per_group, 4), 1)
    if (square and per_group == out_per_group and per_group in (2, 4, 8, 16) and g >= together and k == 3
            and p == 1 and s in (1, 2)):
        return "groupwise"
    if square and k == 1 and s == 1 and p == 0:
        return "pointwise"
    return "im2col"


def weighted(op: str, engine: str, cpu: CpuProfile, requant: str = "exact", geometry: dict | None = None,
             symmetric: bool = True) -> Callable[..., WeightedArithmetic]:
    """The arithmetic of a conv ("conv") or linear ("linear") layer, as a function of the call:
    choose(batch, out_hw) -> WeightedArithmetic. `geometry`: the layer's shape (in / out channels,
    kernel, stride, padding, dilation, groups), which with the input's shape picks the kernel."""
    geometry = {"op": op, "groups": 1, **(geometry or {})}
    if requant == "fixedpoint":
        fixed = WeightedArithmetic("fixedpoint", None, None)
        return lambda batch=1, out_hw=(1, 1): fixed
    library = library_for(op, engine, cpu, geometry["groups"], symmetric)
    if library == "fbgemm":
        path = fbgemm_path(geometry, cpu)
        pairs = functools.partial(quirks.pairs_of, "fbgemm") if cpu.fbgemm_int16_pairs(path) else None
        chosen = WeightedArithmetic(f"fbgemm {path}", pairs, functools.partial(requantize.requantize_fbgemm, path=path))
        return lambda batch=1, out_hw=(1, 1): chosen
    if library == "qnnpack":
        chosen = WeightedArithmetic("qnnpack", None, requantize.requantize_qnnpack)
        return lambda batch=1, out_hw=(1, 1): chosen

    def choose(batch=1, out_hw=(1, 1)):
        if op == "conv":
            kernel = onednn.conv_kernel(cpu.onednn, geometry, batch, out_hw, cpu.aten_threads())
        else:
            kernel = onednn.linear_kernel(cpu.onednn, batch, geometry["in_channels"], geometry["out_channels"])
        saturates = kernel.pairs if cpu.int16_saturation is None else cpu.int16_saturation and kernel.pairs
        pairs = functools.partial(quirks.pairs_of, "onednn") if saturates else None
        return WeightedArithmetic(f"onednn {kernel.name} ({kernel.scales.replace('_', ' ')})", pairs,
                                  functools.partial(requantize.requantize_onednn, scales=kernel.scales,
                                                    linear=op == "linear"))
    return choose


def _same_memory_order(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.is_contiguous() and b.is_contiguous()) or (
        a.dim() == b.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)
        and b.is_contiguous(memory_format=torch.channels_last))


def add_library(engine: str, requant: str = "exact", same_shape: bool = True) -> str:
    """Whose quantized add runs: QNNPACK's integer add under engine qnnpack (inputs of one shape),
    ATen's float32 add elsewhere, the paper's fixed-point add with requant="fixedpoint"."""
    if requant == "fixedpoint":
        return "fixedpoint"
    return "qnnpack" if engine == "qnnpack" and same_shape else "aten"


def binary(op: str, engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """add / mul (relu or not): f(a, sa, za, b, sb, zb, s, z, relu) -> ints; a and b are integer
    tensors in the memory order of PyTorch's (the vector loop walks memory)."""
    if requant == "fixedpoint":
        return fixedpoint.add_fixedpoint if op == "add" else fixedpoint.mul_fixedpoint
    if op == "mul":
        return elementwise.mul_float

    def add(a, sa, za, b, sb, zb, s, z, relu):
        if add_library(engine, requant, a.shape == b.shape) == "qnnpack":
            with offline():   # QNNPACK's multipliers: float at set-up, like every other constant
                multipliers = elementwise.qnnpack_add_multipliers(sa, sb, s)
            return elementwise.add_qnnpack(a, za, b, zb, z, relu, *multipliers)
        # operands in different memory orders: TensorIterator runs no vector loop at all
        scalar = quirks.tail_mask(a, cpu) if _same_memory_order(a, b) else True
        return elementwise.add_float(a, sa, za, b, sb, zb, s, z, relu, scalar)
    return add


def cat(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """cat: f(parts [(ints, scale, zp)], s, z, nhwc) -> each part in the output's qparams.
    `nhwc`: every input channels_last and dim 1 (qcat_nhwc_kernel), else the generic path."""
    def move(parts, s, z, nhwc):
        out = []
        for q, st, zt in parts:
            if requant == "fixedpoint":
                out.append(q if (st, zt) == (s, z) else fixedpoint.requantize_values(q, st, zt, s, z))
            elif not nhwc:                   # dequantize (DQ_S), float torch.cat, quantize
                out.append(elementwise.requantize_float(q, st, zt, s, z, scalar=True))
            elif (st, zt) == (s, z):         # the NHWC kernel copies inputs with the output's qparams
                out.append(q)
            else:
                out.append(elementwise.requantize_float(q, st, zt, s, z, quirks.scalar_channels(q.shape[1], cpu)))
        return out
    return move


def average(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """Average pooling's division: f(acc, divisor, window, scale, zp, nhwc, ceil_mode) -> ints.
    acc = sum of (q - zp) over the window's valid part; divisor: what ATen divides by
    (count_include_pad / divisor_override), window: kh * kw (what QNNPACK divides by)."""
    def divide(acc, divisor, window, scale, zp, nhwc, ceil_mode):
        if requant == "fixedpoint":
            return (fixedpoint.divide_fixedpoint(acc, divisor) + zp).clamp(0, 255)
        if uses_qnnpack_pooling(engine, "avg", ceil_mode):
            return elementwise.avg_pool_qnnpack(acc, scale, window, zp)
        return elementwise.avg_pool_nhwc(acc, divisor, zp) if nhwc else elementwise.avg_pool_nchw(acc, divisor, zp)
    return divide


def adaptive_average(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """One window of adaptive average pooling: f(acc, raw_sum, kh, kw, scale, zp, nhwc, divides);
    `divides`: the output size divides the input's (QNNPACK takes those, as plain pooling)."""
    def divide(acc, raw_sum, kh, kw, scale, zp, nhwc, divides):
        if requant == "fixedpoint":
            return (fixedpoint.divide_fixedpoint(acc, torch.tensor(kh * kw)) + zp).clamp(0, 255)
        if uses_qnnpack_pooling(engine, "adaptive", divides=divides):
            return elementwise.avg_pool_qnnpack(acc, scale, kh * kw, zp)
        if nhwc:
            return elementwise.adaptive_avg_nhwc(acc, kh * kw, zp)
        return elementwise.adaptive_avg_nchw(raw_sum, kh, kw)
    return divide


def uses_qnnpack_pooling(engine: str, op: str, ceil_mode: bool = False, divides: bool = True) -> bool:
    """Under engine qnnpack, PyTorch sends pooling of quint8 tensors to QNNPACK when it can:
    average / max pooling without ceil_mode, adaptive pooling whose output divides the input."""
    if engine != "qnnpack":
        return False
    return divides if op == "adaptive" else not ceil_mode


def max_windows(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """Max pooling's windows: f(ints, pool module) -> [..., OH, OW, kh, kw]. QNNPACK clamps taps
    outside the image to its edge instead of skipping them (it matters with dilation and padding)."""
    def windows(q, p):
        if requant == "exact" and uses_qnnpack_pooling(engine, "max", p.ceil_mode):
            return integer.edge_clamped_windows(q, p.kernel_size, p.stride, p.padding, p.dilation)
        return integer.pool_windows(q, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode, -1, -1)
    return windows


def clamp(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """clamp / hardtanh / relu6 with quantized bounds: f(ints, low, high, nhwc) -> (ints, scrambled).
    Under engine qnnpack a channels_last input comes back with its bytes in N, H, W, C order but
    labelled N, C, H, W (a PyTorch bug, measured): so does the interpreter's."""
    def apply(q, low, high, nhwc):
        r = q.clamp(low, high)
        if engine == "qnnpack" and requant == "exact" and nhwc:
            return r.permute(0, 2, 3, 1).reshape(-1).view(r.shape), True
        return r, False
    return apply


def mean(engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """x.mean([2, 3]) of a 4-D int8 tensor: f(ints, scale, zp, nhwc) -> [N, C] ints."""
    def reduce(q, scale, zp, nhwc):
        n, c, h, w = q.shape
        acc = q.to(torch.int64).sum((2, 3)) - zp * h * w
        if requant == "fixedpoint":
            return (fixedpoint.divide_fixedpoint(acc, torch.tensor(h * w)) + zp).clamp(0, 255)
        if engine == "qnnpack":
            return elementwise.avg_pool_qnnpack(acc, scale, h * w, zp)   # QNNPACK's global average pooling
        if not nhwc:
            return elementwise.mean_inner(q.to(torch.int64).sum((2, 3)), h * w)
        return elementwise.mean_float(q, scale, zp)
    return reduce


def activation(op: str, engine: str, cpu: CpuProfile, requant: str = "exact") -> Callable:
    """hardswish / hardsigmoid: f(ints, scale, zp, s_out, zp_out) -> ints. QNNPACK uses a
    256-entry table; ATen dequantizes with the vector loop's DQ_V / DQ_S split."""
    if requant == "fixedpoint":
        def table(q, s, zp, s_out, zp_out):
            with offline():                     # a table of 256 values, built once: float allowed
                x = elementwise.dequantize_scalar(torch.arange(256), s, zp)
                y = (elementwise.hardswish_float(x, s_out, zp_out) if op == "hardswish"
                     else elementwise.hardsigmoid_float(x)).to(torch.int64)
            return y[q.long()]
        return table

    def apply(q, s, zp, s_out, zp_out):
        if engine == "qnnpack":
            t = (elementwise.hardswish_qnnpack_table(s, zp, s_out, zp_out) if op == "hardswish"
                 else elementwise.hardsigmoid_qnnpack_table(s, zp))
            return t[q.long()]
        x = elementwise.dequantize_mixed(q, s, zp, quirks.tail_mask(q, cpu))
        return elementwise.hardswish_float(x, s_out, zp_out) if op == "hardswish" else elementwise.hardsigmoid_float(x)
    return apply


def check_engine(engine) -> str:
    """`engine` if the interpreter follows its arithmetic, else BadInputError naming the valid ones."""
    return check_choice(engine, "engine", ENGINES, f"an engine the integer interpreter knows (it follows the "
                        f"arithmetic of {', '.join(ENGINES)} only)", ", or engine=None for the one the model "
                        "was converted under")


def check_requant(requant) -> str:
    """`requant` if it is a requantization mode of the interpreter, else BadInputError."""
    return check_choice(requant, "requant", REQUANT_MODES, "a requantization mode of the interpreter: it has "
                        "\"exact\" (the engines' float32 requantization, bit-exact with PyTorch) and "
                        "\"fixedpoint\" (Jacob et al.'s integer-only one)")


def check(engine: str, requant: str) -> None:
    check_engine(engine)
    check_requant(requant)
