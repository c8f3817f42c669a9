"""Quantized ops without weights, as ATen and QNNPACK compute them: add, mul, cat, pooling.

Most of these dequantize to float32, compute, and quantize again; bit-exactness is in the
details: a vector loop dequantizes with a fused multiply-add, its scalar tail without; a
multiplier is applied directly or as the reciprocal of a reciprocal. Where a kernel treats some
positions differently, the function takes those positions (or a lane mask) as an argument: which
ones they are is CPU knowledge, computed in quirks.py and chosen in dispatch.py.
"""

from __future__ import annotations

import math

import torch

from .. import qmath
from .fixedpoint import rounding_divide_by_pot
from .requantize import F32, f32, rne

# --- quantize / dequantize (QuantStub, DeQuantStub): qlib.qmath, bit-exact with torch --------------


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """QuantStub: float in, uint8 integers out: clamp(rne(x * f32(1/scale)) + zp, 0, 255)."""
    return qmath.quantize(x, scale, zero_point, torch.quint8)


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """DeQuantStub: uint8 integers in, float32 out: f32(q - zp) * f32(scale)."""
    return qmath.dequantize(q, scale, zero_point, torch.quint8)


def dequantize_vector(q, scale, zp) -> torch.Tensor:
    """ATen's Vectorized<quint8>::dequantize: fma(scale, q, scale * -zp), rounded once.

    q has only 256 possible values, so the fused multiply-add is worked out exactly (in
    float64, one rounding to float32) for each of them and looked up.
    """
    s = f32(scale)
    table = (s.double() * torch.arange(256, dtype=torch.float64) + (s * f32(-zp)).double()).to(F32)
    return table[q.long()]


def dequantize_scalar(q, scale, zp) -> torch.Tensor:
    """ATen's scalar dequantize_val: scale * (q - zp), two roundings."""
    return f32(scale) * (q - zp).to(F32)


def quantize_float(x, scale, zp, qmin=0, qmax=255) -> torch.Tensor:
    """ATen's quantize (vector and scalar alike): rne(x * f32(1/scale)) + zp, clamped."""
    return (rne(x * (f32(1.0) / f32(scale))) + zp).clamp(qmin, qmax)


# --- add and mul ---------------------------------------------------------------------------------------


def add_float(a, sa, za, b, sb, zb, s, z, relu, tail=None) -> torch.Tensor:
    """fbgemm / x86 / oneDNN quantized add: dequantize both, add in float32, requantize.

    The vector loop dequantizes with an FMA, the scalar tail without: the two differ in the
    last bit now and then, so `tail` (flat NCHW indices, from quirks.tail_positions) takes the
    scalar formula.
    """
    a, b = a.contiguous(), b.contiguous()                  # tail: flat NCHW indices
    da, db = dequantize_vector(a, sa, za), dequantize_vector(b, sb, zb)
    if tail is not None and len(tail):
        fa, fb, fda, fdb = a.reshape(-1), b.reshape(-1), da.view(-1), db.view(-1)
        fda[tail], fdb[tail] = dequantize_scalar(fa[tail], sa, za), dequantize_scalar(fb[tail], sb, zb)
    c = da.add_(db)
    if relu:
        c.clamp_min_(0)
    return quantize_float(c, s, z)


def add_qnnpack(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """QNNPACK's quantized add: fixed-point multipliers, then gemmlowp's RoundingDivideByPOT
    (QNNPACK writes the same rounding as `rem - (acc < 0) > mask >> 1`)."""
    a_over, b_over = (f32(sa) / f32(s)).item(), (f32(sb) / f32(s)).item()
    shift = 21 - (math.frexp(max(a_over, b_over))[1] - 1)
    am, bm = round(a_over * 2 ** shift), round(b_over * 2 ** shift)
    acc = -(am * za + bm * zb) + a.to(torch.int64) * am + b.to(torch.int64) * bm
    return (rounding_divide_by_pot(acc, shift) + z).clamp(z if relu else 0, 255)


def mul_float(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """Quantized mul (all engines): exact integer product, one float32 multiplier."""
    multiplier = (f32(sa) * f32(sb)) * (f32(1.0) / f32(s))
    c = (a.to(torch.int64) - za) * (b.to(torch.int64) - zb)
    return (rne(c.to(F32) * multiplier) + z).clamp(z if relu else 0, 255)


# --- moving values to other qparams: cat -----------------------------------------------------------------


def requantize_float(q, s_in, z_in, s, z, vector: bool = True, relu: bool = False) -> torch.Tensor:
    """Move values to another scale/zero point the way qcat does (dequantize, requantize)."""
    x = dequantize_vector(q, s_in, z_in) if vector else dequantize_scalar(q, s_in, z_in)
    if relu:
        x = x.clamp_min(0)
    return quantize_float(x, s, z)


def requantize_lanes(q, s_in, z_in, s, z, lanes=None) -> torch.Tensor:
    """requantize_float with the vector formula where `lanes` is True, the scalar one elsewhere
    (None: all vector)."""
    if lanes is None:
        return requantize_float(q, s_in, z_in, s, z, vector=True)
    return torch.where(lanes, requantize_float(q, s_in, z_in, s, z, True),
                       requantize_float(q, s_in, z_in, s, z, False))


# --- average pooling -------------------------------------------------------------------------------------


def avg_pool_requantize(acc, in_s, out_s, divisor, zp, direct_lanes=None) -> torch.Tensor:
    """Average pooling's requantization: acc = sum(q - zp), times f32(in_s/out_s/divisor).

    The vector lanes of the NHWC avg_pool kernel multiply by that multiplier directly; every other
    path quantizes with scale 1/multiplier, i.e. multiplies by f32(1 / f32(1 / multiplier)).
    """
    m = (f32(in_s) / f32(out_s)) / torch.as_tensor(divisor).to(F32)
    inverse = f32(1.0) / (f32(1.0) / m)
    factor = inverse if direct_lanes is None else torch.where(direct_lanes, m, inverse)
    return (rne(acc.to(F32) * factor) + zp).clamp(0, 255)
