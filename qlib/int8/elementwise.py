"""Quantized ops without weights, as ATen and QNNPACK compute them: add, mul, cat, pooling, activations.

Most of these dequantize to float32, compute, and quantize again, and bit-exactness is in the
details, each measured on torch 2.14.1 (0 mismatches in >= 10^6 outputs per op, layout and CPU
capability, plus probes that pin which formula each position follows):

    DQ_S(q) = f32(s) * f32(q - zp)                      scalar dequantize: two roundings
    DQ_V(q) = fma(f32(s), q, f32(s * -zp))              vector dequantize (AVX2 build): one rounding
    Q(x)    = clamp(rne(x * f32(1 / s)) + zp, 0, 255)    every quantize: zero point after rounding

A vector loop uses DQ_V and leaves a scalar tail to DQ_S; which positions those are is CPU
knowledge (quirks.py), passed in here as a mask. QNNPACK (engine qnnpack) has its own kernels for
several ops: fixed point, tables, and two of its quirks (a divisor that ignores padding settings;
max pooling that clamps taps to the image edge). Notebook 08, section 3.

Where to read the C++ (QNNPACK: PyTorch's copy, paths relative to
aten/src/ATen/native/quantized/cpu/qnnpack; each function below names its own kernel):
Reproduces: aten/src/ATen/native/quantized/AffineQuantizerBase.cpp (quantize_val, dequantize_val).
Reproduces: aten/src/ATen/cpu/vec/vec256/vec256_qint.h (Vectorized<c10::quint8>::dequantize).
Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qadd_kernel).
"""

from __future__ import annotations

import math

import torch

from .. import qmath
from .fixedpoint import rounding_divide_by_pot
from .requantize import F32, f32, rne

# --- quantize / dequantize -------------------------------------------------------------------------------


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """QuantStub: float in, uint8 integers out (qlib.qmath, bit-exact with torch).

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
        (quantize_tensor_per_tensor_affine_cpu).
    Reproduces: FBGEMM: include/fbgemm/QuantUtils.h (Quantize).
    """
    return qmath.quantize(x, scale, zero_point, torch.quint8)


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """DeQuantStub: uint8 integers in, float32 out: f32(q - zp) * f32(scale).

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
        (dequantize_tensor_per_tensor_affine_cpu).
    Reproduces: FBGEMM: include/fbgemm/QuantUtils.h (Dequantize).
    """
    return qmath.dequantize(q, scale, zero_point, torch.quint8)


def dequantize_vector(q, scale, zp) -> torch.Tensor:
    """DQ_V, ATen's Vectorized<quint8>::dequantize: fma(scale, q, scale * -zp), rounded once.

    q has only 256 possible values, so the fused multiply-add is worked out exactly (in float64,
    one rounding to float32) for each of them and looked up.

    Reproduces: aten/src/ATen/cpu/vec/vec256/vec256_qint.h (Vectorized<c10::quint8>::dequantize).
    """
    s = f32(scale)
    table = (s.double() * torch.arange(256, dtype=torch.float64) + (s * f32(-zp)).double()).to(F32)
    return table[q.long()]


def dequantize_scalar(q, scale, zp) -> torch.Tensor:
    """DQ_S, ATen's dequantize_val (and fbgemm::Dequantize): scale * (q - zp), two roundings.

    Reproduces: aten/src/ATen/native/quantized/AffineQuantizerBase.cpp (dequantize_val).
    Reproduces: FBGEMM: include/fbgemm/QuantUtils.h (Dequantize).
    """
    return f32(scale) * (q.to(torch.int32) - zp).to(F32)


def dequantize_mixed(q, scale, zp, scalar) -> torch.Tensor:
    """DQ_S where `scalar` is True (a vector loop's tail; True: everywhere), DQ_V elsewhere.

    Course helper: picks DQ_S or DQ_V per position, as ATen's vectorized_loop
    (aten/src/ATen/native/cpu/Loops.h) leaves its tail to the scalar function.
    """
    if scalar is True:
        return dequantize_scalar(q, scale, zp)
    if scalar is None or not bool(scalar.any()):
        return dequantize_vector(q, scale, zp)
    return torch.where(scalar, dequantize_scalar(q, scale, zp), dequantize_vector(q, scale, zp))


def quantize_float(x, scale, zp, qmin=0, qmax=255) -> torch.Tensor:
    """Q, every quantize in ATen: rne(x * f32(1/scale)) + zp, clamped.

    Reproduces: FBGEMM: include/fbgemm/QuantUtils.h (Quantize).
    Reproduces: FBGEMM: src/QuantUtilsAvx2.cc (QuantizeAvx2).
    """
    return (rne(x * (f32(1.0) / f32(scale))) + zp).clamp(qmin, qmax)


def quantize_bound(value: float, scale, zp) -> int:
    """A float bound (clamp's min / max, ReLU6's 6) quantized as the kernels do.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qclamp_kernel).
    """
    return int(quantize_float(f32(value), scale, zp))


# --- add and mul -----------------------------------------------------------------------------------------


def add_float(a, sa, za, b, sb, zb, s, z, relu, scalar=None) -> torch.Tensor:
    """ATen's quantized add (engines fbgemm, x86, onednn): dequantize both, add in float32, ReLU in
    float, requantize. `scalar` marks the positions of the vector loop's scalar tail (DQ_S there).

    Reproduces: aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (qadd).
    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qadd_kernel).
    """
    c = dequantize_mixed(a, sa, za, scalar) + dequantize_mixed(b, sb, zb, scalar)
    if relu:
        c = c.clamp_min(0)
    return quantize_float(c, s, z)


def qnnpack_add_multipliers(sa, sb, s) -> tuple[int, int, int]:
    """QNNPACK's add, set-up: each input's scale over the output's as an integer multiplier with
    a common shift (21 bits for the larger ratio).

    Reproduces: QNNPACK: src/add.c (pytorch_qnnp_create_add_nc_q8).
    Reproduces: QNNPACK: src/qnnpack/requantization.h
        (pytorch_qnnp_compute_add_quantization_params).
    """
    a_over, b_over = (f32(sa) / f32(s)).item(), (f32(sb) / f32(s)).item()
    shift = 21 - (math.frexp(max(a_over, b_over))[1] - 1)
    return round(a_over * 2 ** shift), round(b_over * 2 ** shift), shift


def add_qnnpack(a, za, b, zb, z, relu, am, bm, shift) -> torch.Tensor:
    """QNNPACK's quantized add: integer multipliers, then gemmlowp's RoundingDivideByPOT
    (QNNPACK writes the same rounding as `rem - (acc < 0) > mask >> 1`).

    Reproduces: aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (qnnpack_add).
    Reproduces: QNNPACK: src/q8vadd/sse2.c (pytorch_q8vadd_ukernel__sse2).
    Reproduces: QNNPACK: src/q8vadd/neon.c (pytorch_q8vadd_ukernel__neon).
    """
    acc = -(am * za + bm * zb) + a.to(torch.int64) * am + b.to(torch.int64) * bm
    return (rounding_divide_by_pot(acc, shift) + z).clamp(z if relu else 0, 255)


def mul_float(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """Quantized mul (every engine; broadcasting allowed): exact integer product, one float32 multiplier.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qmul_kernel).
    """
    multiplier = (f32(sa) * f32(sb)) * (f32(1.0) / f32(s))
    c = (a.to(torch.int64) - za) * (b.to(torch.int64) - zb)
    return (rne(c.to(F32) * multiplier) + z).clamp(z if relu else 0, 255)


# --- cat: moving values to the output's qparams ----------------------------------------------------------


def requantize_float(q, s_in, z_in, s, z, scalar=True) -> torch.Tensor:
    """Dequantize (DQ_S where `scalar`, DQ_V elsewhere), then quantize with other qparams: cat's step.

    Reproduces: aten/src/ATen/native/quantized/cpu/TensorShape.cpp (quantized_cat_impl).
    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qcat_nhwc_kernel).
    """
    return quantize_float(dequantize_mixed(q, s_in, z_in, scalar), s, z)


# --- pooling ---------------------------------------------------------------------------------------------


def avg_pool_nchw(acc, divisor, zp) -> torch.Tensor:
    """ATen's NCHW average pooling: acc * f32(1/d), the zero point added *before* rounding.

    Reproduces: aten/src/ATen/native/quantized/cpu/AveragePool2d.cpp (avg_pool2d_out_frame).
    """
    m = (1.0 / torch.as_tensor(divisor, dtype=torch.float64)).to(F32)
    return rne(acc.to(F32) * m + f32(zp)).clamp(0, 255)


def avg_pool_nhwc(acc, divisor, zp) -> torch.Tensor:
    """ATen's NHWC average pooling (vector lanes and remainder give the same integers for d < 2**16):
    rne(acc * f32(1/d)) + zp.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (_qavg_pool_nhwc_kernel).
    """
    m = f32(1.0) / torch.as_tensor(divisor).to(F32)
    return (rne(acc.to(F32) * m) + zp).clamp(0, 255)


def avg_pool_qnnpack(acc, scale, window: int, zp) -> torch.Tensor:
    """QNNPACK average pooling: always divides by the whole window, with the multiplier
    f32(s / f32(s * K)), which is one ulp off f32(1/K) for some K (6, 196, 784).

    Reproduces: aten/src/ATen/native/quantized/cpu/AveragePool2d.cpp
        (qnnp_avgpool_helper::qnnpack_avg_pool2d).
    Reproduces: QNNPACK: src/average-pooling.c (pytorch_qnnp_create_average_pooling2d_nhwc_q8).
    Reproduces: QNNPACK: src/q8avgpool/up8x9-sse2.c (pytorch_q8avgpool_ukernel_up8x9__sse2).
    """
    m = f32(scale) / (f32(scale) * f32(float(window)))
    return (rne(acc.to(F32) * m) + zp).clamp(0, 255)


def adaptive_avg_nchw(raw_sum, kh: int, kw: int) -> torch.Tensor:
    """ATen's NCHW adaptive average pooling: the mean of the raw integers (no zero point at all),
    f32(f32(1/kh) / kw) as multiplier.

    Reproduces: aten/src/ATen/native/quantized/cpu/AdaptiveAveragePooling.cpp
        (adaptive_avg_pool_single_out_frame).
    """
    r = (f32(1.0) / f32(float(kh))) / f32(float(kw))
    return rne(raw_sum.to(F32) * r).clamp(0, 255)


def adaptive_avg_nhwc(acc, window: int, zp) -> torch.Tensor:
    """ATen's NHWC adaptive average pooling: acc = sum(q - zp), times f32(1 / f32(1 / f32(1/K))), + zp.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
        (_qadaptive_avg_pool_kernel).
    """
    m = f32(1.0) / f32(float(window))
    return (rne(acc.to(F32) * (f32(1.0) / (f32(1.0) / m))) + zp).clamp(0, 255)


# --- mean over H, W (a global average pool written as x.mean([2, 3])) -------------------------------------


def mean_inner(raw_sum, count: int) -> torch.Tensor:
    """ATen's quantized mean over the innermost dims of a contiguous tensor: raw integers, a float
    division, no zero point.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qmean_inner_dim_kernel).
    """
    return rne(raw_sum.to(F32) / f32(float(count))).clamp(0, 255)


def mean_float(x: torch.Tensor, scale, zp) -> torch.Tensor:
    """ATen's quantized mean of a channels_last tensor: dequantize (DQ_S), the float32 mean over
    H and W in ATen's own summation order (`cascade_sum`), quantize. A float reduction in the int8
    model: the one op here that is not integer arithmetic plus a final rounding.

    Reproduces: aten/src/ATen/native/quantized/cpu/ReduceOps.cpp (mean_out_quantized_cpu).
    Reproduces: aten/src/ATen/native/cpu/SumKernel.cpp (cascade_sum).
    """
    n, c, h, w = x.shape
    rows = dequantize_scalar(x, scale, zp).permute(2, 3, 0, 1).reshape(h * w, n, c)
    return quantize_float(cascade_sum(rows) / f32(float(h * w)), scale, zp)


def _multi_row_sum(x: torch.Tensor) -> torch.Tensor:
    """ATen SumKernel's multi_row_sum over x's first dim: blocks of `step` rows summed in order
    into 4 accumulator levels carried upwards, then the levels added.

    Reproduces: aten/src/ATen/native/cpu/SumKernel.cpp (multi_row_sum).
    """
    r = x.shape[0]
    power = max(4, max(r - 1, 0).bit_length() // 4)
    step, mask = 1 << power, (1 << power) - 1
    acc = [torch.zeros(x.shape[1:], dtype=F32) for _ in range(4)]
    i = 0
    while i + step <= r:
        for _ in range(step):
            acc[0] = acc[0] + x[i]
            i += 1
        for j in range(1, 4):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = torch.zeros_like(acc[j - 1])
            if i & (mask << (j * power)):
                break
    while i < r:
        acc[0] = acc[0] + x[i]
        i += 1
    return acc[0] + acc[1] + acc[2] + acc[3]


def _row_sum(x: torch.Tensor) -> torch.Tensor:
    """ATen SumKernel's row_sum: four interleaved multi_row_sums, leftovers into the first.

    Reproduces: aten/src/ATen/native/cpu/SumKernel.cpp (row_sum).
    """
    r, k = x.shape[0], x.shape[0] // 4
    parts = [_multi_row_sum(x[i:4 * k:4]) if k else torch.zeros(x.shape[1:], dtype=F32) for i in range(4)]
    for i in range(4 * k, r):
        parts[0] = parts[0] + x[i]
    return parts[0] + parts[1] + parts[2] + parts[3]


def cascade_sum(x: torch.Tensor, vector: int = 8) -> torch.Tensor:
    """ATen's float32 sum over the rows of x [R, ..., C] (C contiguous): columns in groups of
    4 vectors use multi_row_sum, the rest row_sum (AVX2 build: 8 floats a vector).

    Reproduces: aten/src/ATen/native/cpu/SumKernel.cpp (vectorized_outer_sum).
    """
    c = x.shape[-1]
    g4 = c // (4 * vector) * (4 * vector)
    g1 = g4 + (c - g4) // vector * vector
    out = torch.empty(x.shape[1:], dtype=F32)
    for lo, hi, fn in ((0, g4, _multi_row_sum), (g4, g1, _row_sum), (g1, c, _row_sum)):
        if hi > lo:
            out[..., lo:hi] = fn(x[..., lo:hi])
    return out


# --- activations -----------------------------------------------------------------------------------------


def hardswish_float(x, s_out, zp_out) -> torch.Tensor:
    """ATen's hardswish on dequantized x: x * clamp(x + 3, 0, 6) / 6 (a true division), quantized.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qhardswish_kernel).
    """
    t = (x + f32(3.0)).clamp(0, 6)
    return quantize_float((x * t) / f32(6.0), s_out, zp_out)


def hardsigmoid_float(x) -> torch.Tensor:
    """ATen's hardsigmoid on dequantized x: clamp(x + 3, 0, 6) / 6, quantized with scale 1/256, zp 0.

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (qhardsigmoid_kernel).
    """
    return quantize_float((x + f32(3.0)).clamp(0, 6) / f32(6.0), 1.0 / 256.0, 0)


def hardswish_qnnpack_table(s, zp, s_out, zp_out) -> torch.Tensor:
    """QNNPACK's hardswish: a 256-entry table computed in float, zero point added before rounding.

    Reproduces: QNNPACK: src/hardswish.c (pytorch_qnnp_create_hardswish_nc_q8).
    """
    x = f32(s) * (torch.arange(256) - zp).to(F32)
    y = (x * (x + f32(3.0)).clamp(0, 6)) / f32(6.0)
    return rne(((f32(1.0) / f32(s_out)) * y + f32(float(zp_out))).clamp(0, 255))


def hardsigmoid_qnnpack_table(s, zp) -> torch.Tensor:
    """QNNPACK's hardsigmoid table (equal to ATen's with DQ_S everywhere).

    Reproduces: QNNPACK: src/hardsigmoid.c (pytorch_qnnp_create_hardsigmoid_nc_q8).
    """
    return hardsigmoid_float(dequantize_scalar(torch.arange(256), s, zp))
