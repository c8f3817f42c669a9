"""Integer-arithmetic-only inference: a converted model re-executed by readable Python.

PyTorch runs a converted (int8) model in C++/assembly kernels (fbgemm, QNNPACK, oneDNN). This
module reads the scales, zero points, int8 weights and biases out of the converted modules and
redoes every op itself: the multiply-accumulate on integer tensors (im2col + int32 matmul), the
zero-point terms, the bias, the requantization, the clamp and the fused ReLU, each written the
way the engine the model was converted under computes it. `run(qmodel, x)` equals `qmodel(x)`
bit for bit (`torch.equal`); `requant="fixedpoint"` swaps the engines' float32 requantization
for the integer-only one of Jacob et al. 2018 (gemmlowp / TFLite) to measure what it changes.

How a model is followed: its own forward() runs on a copy of its module tree in which every
quantized leaf is replaced by an interpreter module. Activations stay torch quantized tensors,
used only as a container (uint8 values + scale + zero point), so that float glue such as
torch.flatten works; a guard refuses any other torch function on them (UnsupportedModuleError).

Saturation: without VNNI the fbgemm / oneDNN u8 x s8 kernels add products two by two into an
int16 with saturation (`vpmaddubsw`). The interpreter knows which products each kernel pairs
(measured on this AVX2 CPU, see pairs_of) and clips exactly those pairs, so it stays bit-exact
even where activations use all 8 bits (onednn's default qconfig); `Interpreter.saturation`
counts the clipped pairs per layer, and int16_saturation=False computes what a VNNI CPU would.
Activations calibrated with reduce_range (x86 / fbgemm qconfigs, 0..127) fit: 127*128*2 < 2**15.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import ptq, qmath
from .sysinfo import has_vnni

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
REQUANT_MODES = ("exact", "fixedpoint")
F32 = torch.float32


class UnsupportedModuleError(TypeError):
    """A model contains a module or calls a function the interpreter has no integer form of."""


def f32(value) -> torch.Tensor:
    """A float32 scalar tensor: every float step below rounds to float32, as the C++ does."""
    return torch.as_tensor(value, dtype=torch.float64).to(F32)


def rne(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (nearbyint / cvtps2dq); stays float32 (integer values) for speed."""
    return torch.round(x)


# --- 1. quantize / dequantize -------------------------------------------------------------------

# The interpreter's activations are quint8; notebook 01's qlib.qmath holds the formulas, bit-exact
# with torch: q = clamp(rne(x * f32(1/scale)) + zp, 0, 255) and x = f32(q - zp) * f32(scale).

def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """QuantStub: float in, uint8 integers out."""
    return qmath.quantize(x, scale, zero_point, torch.quint8)


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """DeQuantStub: uint8 integers in, float32 out."""
    return qmath.dequantize(q, scale, zero_point, torch.quint8)


# --- 2. the multiply-accumulate: exact integer sums --------------------------------------------

def im2col(xq: torch.Tensor, x_zp: int, kernel, stride, padding, dilation):
    """The sliding windows of uint8 x: [N, C*kh*kw, OH*OW] (padding holds x_zp, i.e. real 0)."""
    x = F.pad(xq, (padding[1], padding[1], padding[0], padding[0]), value=x_zp)
    span_h, span_w = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    windows = x.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
    windows = windows[..., ::dilation[0], ::dilation[1]]          # [N, C, OH, OW, kh, kw]
    n, c, oh, ow = windows.shape[:4]
    cols = torch.empty(n, c, kernel[0], kernel[1], oh, ow, dtype=torch.int32)
    cols.copy_(windows.permute(0, 1, 4, 5, 2, 3))                  # one copy, uint8 -> int32
    return cols.view(n, c * kernel[0] * kernel[1], oh * ow), (oh, ow)


def conv_accumulate(xq, x_zp, wq, w_zp, stride, padding, dilation, groups, pairs=None, stats=None):
    """acc[n, oc, y, x] = sum over the window of (x - x_zp) * (w - w_zp[oc]), int32.

    Computed as the paper does (eq. 7-8): sum x*w' by integer matmul, minus x_zp * sum w'
    (a per-channel constant), with w' = w - w_zp (symmetric weights: w' = w). `pairs` (see
    pairs_of) makes it add products two by two in int16 with saturation, as AVX2 kernels do.
    """
    oc, cg, kh, kw = wq.shape
    cols, (oh, ow) = im2col(xq, x_zp, (kh, kw), stride, padding, dilation)
    n = cols.shape[0]
    cols = cols.view(n, groups, cg * kh * kw, oh * ow)
    w = (wq.to(torch.int32) - w_zp.to(torch.int32).view(-1, 1, 1, 1)).reshape(groups, oc // groups, cg * kh * kw)
    if oh * ow >= 32:
        acc = torch.matmul(w, cols)                                 # [N, G, OC/G, OH*OW]
    else:  # few output pixels: one wide matmul beats N small ones (same integers)
        wide = cols.permute(1, 2, 0, 3).reshape(groups, cg * kh * kw, n * oh * ow)
        acc = torch.matmul(w, wide).view(groups, oc // groups, n, oh * ow).permute(2, 0, 1, 3).contiguous()
    if pairs is not None:
        count = saturate_pairs(acc, cols, wq.to(torch.int32).reshape(w.shape), pairs, xq.flatten(1).amax(1))
        if stats is not None:
            stats["saturated"] = stats.get("saturated", 0) + count
    acc = acc.view(n, oc, oh, ow)
    return acc.sub_((x_zp * w.sum(-1)).view(1, oc, 1, 1)) if x_zp else acc


def linear_accumulate(xq, x_zp, wq, w_zp, pairs=None, stats=None) -> torch.Tensor:
    """acc[n, o] = sum_k (x[n, k] - x_zp) * (w[o, k] - w_zp[o]) = x.w' - x_zp * sum_k w', int32."""
    w = wq.to(torch.int32) - w_zp.to(torch.int32).view(-1, 1)
    x = xq.to(torch.int32).reshape(-1, w.shape[1])
    acc = torch.matmul(w, x.t()).t().contiguous()
    if pairs is not None:
        count = saturate_pairs(acc.view(len(x), 1, -1, 1), x.view(len(x), 1, -1, 1),
                               wq.to(torch.int32).unsqueeze(0), pairs, x.amax(1))
        if stats is not None:
            stats["saturated"] = stats.get("saturated", 0) + count
    acc = acc - x_zp * w.sum(-1) if x_zp else acc
    return acc.reshape(*xq.shape[:-1], w.shape[0])


# --- 2b. int16 saturation of AVX2 kernels (no VNNI) ---------------------------------------------

def pairs_of(kernel: str, channels: int, taps: int = 1, groups: int = 1):
    """Which products an AVX2 u8 x s8 kernel adds together in int16 (vpmaddubsw), as index
    pairs into K = channels * taps in im2col's (channel, tap) order; index K means "nothing".

    Measured here with all-255 inputs and two weights of 127 at chosen places:
    fbgemm pairs neighbours in its (tap, channel) order, channel fastest (K = kh*kw*C/G),
    depthwise and linear included; oneDNN pairs neighbouring channels within one tap, and its
    depthwise and C/G = 6 grouped kernels did not saturate at all.
    """
    k = channels * taps
    if kernel == "fbgemm":
        f = torch.arange(k)
        order = (f % channels) * taps + f // channels            # fbgemm position -> im2col index
    elif kernel == "onednn" and (groups == 1 or channels % 4 == 0):
        c = torch.arange(channels + channels % 2)
        order = torch.stack([torch.where(c < channels, c * taps + t, k) for t in range(taps)]).reshape(-1)
    else:
        return None
    if len(order) % 2:
        order = torch.cat([order, torch.tensor([k])])
    return order.view(-1, 2)


def saturate_pairs(acc, cols, w, pairs, image_max, chunk: int = 1 << 16) -> int:
    """Fix acc [N, G, OC/G, L] in place for pairs whose sum leaves int16; returns how many did.

    cols [N, G, K, L]: raw u8 activations; w [G, OC/G, K]: raw s8 weights; image_max [N]: the
    largest activation of each image (cheap to screen with). Only pairs with
    (x_a + x_b) * max|w| > 32767 are looked at, so it costs little when saturation is rare
    (reduce_range) and stays exact when it is not.
    """
    n_, g_, k, l_ = cols.shape
    ocg = w.shape[1]
    w_max = int(w.abs().max())
    if 2 * 255 * w_max <= 32767:
        return 0
    # only images holding an activation large enough to matter (rare with reduce_range)
    images = (image_max.to(torch.int64) * 2 * w_max > 32767).nonzero().flatten()
    if len(images) == 0:
        return 0
    if len(images) < n_:
        sub = acc[images]
        count = saturate_pairs(sub, cols[images], w, pairs, image_max[images], chunk)
        acc[images] = sub
        return count
    w = torch.cat([w, torch.zeros_like(w[..., :1])], -1)               # index K: the padding
    a, b = pairs[:, 0], pairs[:, 1]
    b_x = torch.where(b < k, b, 0)                                      # padding: any x, weight 0
    xa, xb = cols[:, :, a], cols[:, :, b_x]                             # [N, G, P, L]
    n, g, p, l = ((xa + xb) * w_max > 32767).nonzero(as_tuple=True)
    flat, count = acc.view(-1), 0
    for s in range(0, len(n), chunk):
        ni, gi, pi, li = n[s:s + chunk], g[s:s + chunk], p[s:s + chunk], l[s:s + chunk]
        products = (xa[ni, gi, pi, li].unsqueeze(1) * w[gi, :, a[pi]]
                    + xb[ni, gi, pi, li].unsqueeze(1) * w[gi, :, b[pi]])        # [M, OC/G]
        correction = products.clamp(-32768, 32767) - products
        index = ((ni * g_ + gi).unsqueeze(1) * ocg + torch.arange(ocg)) * l_ + li.unsqueeze(1)
        flat.index_add_(0, index.reshape(-1), correction.reshape(-1))
        count += int((correction != 0).sum())
    return count


# --- 3. requantization, engine by engine --------------------------------------------------------

def _broadcast(v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Per-output-channel values shaped to broadcast against acc ([N, OC] or [N, OC, H, W])."""
    return v.view(-1, *([1] * (acc.dim() - 2)))


def requantize_fbgemm(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel) -> torch.Tensor:
    """fbgemm's ReQuantizeOutput: float bias added to the accumulator in units of in_s*w_s."""
    ats = f32(in_s) * w_s.to(F32)                      # act_times_w_scale per output channel
    mult = ats / f32(out_s)
    raw = acc.to(F32)                                  # int32 -> float32 (cvtepi32_ps)
    if bias is not None:
        b = bias.to(F32) / ats if per_channel else bias.to(F32) * (f32(1.0) / ats)
        raw += _broadcast(b, acc)
    raw *= _broadcast(mult, acc)
    return rne(raw).add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_qnnpack(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel) -> torch.Tensor:
    """QNNPACK: bias rounded to int32 (scale in_s*w_s), then one float multiplier."""
    if bias is not None:
        bq = rne(bias.to(F32) * (f32(1.0) / (w_s.to(F32) * f32(in_s)))).to(torch.int32)
        acc = acc + _broadcast(bq, acc)
    req = (w_s.to(F32) * f32(in_s)) * (f32(1.0) / f32(out_s))
    raw = acc.to(F32).mul_(_broadcast(req, acc))
    return rne(raw).add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_onednn(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel) -> torch.Tensor:
    """oneDNN: scale the accumulator to real units, add the float bias, ReLU, then the zero point."""
    s = f32(1.0) / f32(1.0 / in_s)
    t = acc.to(F32).mul_(_broadcast(s * w_s.to(F32), acc))
    if bias is not None:
        t += _broadcast(bias.to(F32), acc)
    if relu:
        t.clamp_min_(0)
    d = f32(1.0) / (f32(1.0) / f32(1.0 / out_s))
    return rne(t.mul_(d).add_(f32(out_zp))).clamp_(out_zp if relu else 0, 255)


# --- 4. integer-only requantization (Jacob et al. 2018, gemmlowp) -------------------------------

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """M = M0 * 2**-shift with M0 an int32 Q31 value in [2**30, 2**31): (M0, shift).

    Done once per layer, offline: float is fine here, never at inference time.
    """
    if real <= 0:
        raise ValueError(f"requantization multiplier must be positive, got {real}")
    mantissa, exponent = math.frexp(real)              # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * (1 << 31))
    if m0 == 1 << 31:
        m0, exponent = m0 // 2, exponent + 1
    return m0, -exponent


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul: round(a * b / 2**31), int32 semantics."""
    a = a.to(torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64)
    ab = a * b
    nudge = torch.where(ab >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    total = ab + nudge
    result = torch.div(total, 1 << 31, rounding_mode="trunc")   # C++ integer division
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, torch.tensor(INT32_MAX), result)


def rounding_divide_by_pot(x: torch.Tensor, exponent) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(x: torch.Tensor, m0, shift) -> torch.Tensor:
    """x * M for M = M0 * 2**-shift, integers only (a negative shift is a left shift first)."""
    m0 = torch.as_tensor(m0, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0)
    x = (x.to(torch.int64) << left).clamp(INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m0), right)


def fixedpoint_constants(in_s: float, w_s: torch.Tensor, bias, out_s: float):
    """Offline, once per layer: the int32 bias (scale in_s*w_s, zero point 0) and, per output
    channel, M = in_s * w_s / out_s as (M0, shift). Float is fine here, not at inference."""
    scales = [in_s * s for s in w_s.tolist()]
    bq = None if bias is None else torch.tensor([round(b / a) for b, a in zip(bias.tolist(), scales)])
    multipliers = [quantize_multiplier(a / out_s) for a in scales]
    return bq, torch.tensor([m for m, _ in multipliers]), torch.tensor([n for _, n in multipliers])


def requantize_fixedpoint(acc, constants, out_zp, relu) -> torch.Tensor:
    """Integer-only: acc + int32 bias, times M0 / 2**31 (rounded), >> shift (rounded), + zp, clamp."""
    bq, m0, shift = constants
    acc = acc.to(torch.int64)
    if bq is not None:
        acc = acc + _broadcast(bq, acc)
    q = multiply_by_quantized_multiplier(acc, _broadcast(m0, acc), _broadcast(shift, acc)) + out_zp
    return q.clamp(out_zp if relu else 0, 255)


REQUANTIZE = {"fbgemm": requantize_fbgemm, "qnnpack": requantize_qnnpack, "onednn": requantize_onednn}


# --- 5. elementwise ops: add, mul, cat, pooling -------------------------------------------------

def _fma_f32(a, b, c) -> torch.Tensor:
    """fma(a, b, c) rounded once to float32 (exact in float64 here: a is a scale, b an 8-bit int)."""
    return (a.double() * b.double() + c.double()).to(F32)


def _dequantize_vector(q, scale, zp) -> torch.Tensor:
    """ATen's AVX2 Vectorized<quint8>::dequantize: fma(scale, q, scale * -zp)."""
    s = f32(scale)
    return _fma_f32(s, q, s * f32(-zp))


def _dequantize_scalar(q, scale, zp) -> torch.Tensor:
    """ATen's scalar dequantize_val: scale * (q - zp)."""
    return f32(scale) * (q - zp).to(F32)


def _quantize_float(x, scale, zp, qmin=0, qmax=255) -> torch.Tensor:
    """ATen's quantize (vector and 2.14 scalar alike): rne(x * f32(1/scale)) + zp, clamped."""
    return (rne(x * (f32(1.0) / f32(scale))) + zp).clamp(qmin, qmax)


def scalar_tail(numel: int, block: int = 64, grain: int = 32768) -> torch.Tensor:
    """Flat positions (memory order) that ATen's cpu_kernel_vec leaves to its scalar function.

    TensorIterator splits a contiguous range over the threads when it holds at least `grain`
    elements (at::parallel_for: chunks of ceil(n / threads)); each chunk runs blocks of two AVX2
    vectors (64 uint8 values) and finishes its last (length % 64) values one by one.
    """
    threads = min(torch.get_num_threads(), -(-numel // grain)) if numel >= grain else 1
    chunk = -(-numel // threads)
    tails = []
    for start in range(0, numel, chunk):
        length = min(chunk, numel - start)
        tails.append(torch.arange(start + length // block * block, start + length))
    return torch.cat(tails)


def _tail_positions(shape, nhwc: bool) -> torch.Tensor:
    """Flat (NCHW) indices of the values a vector kernel leaves to its scalar tail; the kernel
    walks memory, which for PyTorch's channels_last tensors is N, H, W, C order."""
    tail = scalar_tail(math.prod(shape))
    if not nhwc:
        return tail
    n, c, h, w = shape
    i_n, rest = tail // (h * w * c), tail % (h * w * c)
    i_h, rest = rest // (w * c), rest % (w * c)
    i_w, i_c = rest // c, rest % c
    return ((i_n * c + i_c) * h + i_h) * w + i_w


def add_float(a, sa, za, b, sb, zb, s, z, relu, nhwc: bool = False) -> torch.Tensor:
    """fbgemm / x86 / oneDNN quantized add: dequantize both, add in float32, requantize.

    The vector loop dequantizes with an FMA, the scalar tail without: the two differ in the
    last bit now and then, so the tail positions take the scalar formula. `nhwc`: PyTorch's
    tensors are channels_last, which decides where the tail falls.
    """
    da, db = _dequantize_vector(a, sa, za), _dequantize_vector(b, sb, zb)
    tail = _tail_positions(a.shape, nhwc)
    fa, fb, fda, fdb = a.reshape(-1), b.reshape(-1), da.view(-1), db.view(-1)
    fda[tail], fdb[tail] = _dequantize_scalar(fa[tail], sa, za), _dequantize_scalar(fb[tail], sb, zb)
    c = da.add_(db)
    if relu:
        c.clamp_min_(0)
    return _quantize_float(c, s, z)


def add_qnnpack(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """QNNPACK's quantized add: fixed-point multipliers, rounding half away from zero."""
    a_over, b_over = (f32(sa) / f32(s)).item(), (f32(sb) / f32(s)).item()
    shift = 21 - (math.frexp(max(a_over, b_over))[1] - 1)
    am, bm = round(a_over * 2 ** shift), round(b_over * 2 ** shift)
    acc = -(am * za + bm * zb) + a.to(torch.int64) * am + b.to(torch.int64) * bm
    mask = (1 << shift) - 1
    rem = (acc & mask) - (acc < 0).to(torch.int64)
    acc = (acc >> shift) + (rem > (mask >> 1)).to(torch.int64)
    return (acc + z).clamp(z if relu else 0, 255)


def mul_float(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """Quantized mul (all engines): exact integer product, one float32 multiplier."""
    multiplier = (f32(sa) * f32(sb)) * (f32(1.0) / f32(s))
    c = (a.to(torch.int64) - za) * (b.to(torch.int64) - zb)
    return (rne(c.to(F32) * multiplier) + z).clamp(z if relu else 0, 255)


def requantize_float(q, s_in, z_in, s, z, vector: bool = True, relu: bool = False) -> torch.Tensor:
    """Move values to another scale/zero point the way qcat does (dequantize, requantize)."""
    x = _dequantize_vector(q, s_in, z_in) if vector else _dequantize_scalar(q, s_in, z_in)
    if relu:
        x = x.clamp_min(0)
    return _quantize_float(x, s, z)


def avg_pool_requantize(acc, in_s, out_s, divisor, zp, direct_lanes=None) -> torch.Tensor:
    """Average pooling's requantization: acc = sum(q - zp), times f32(in_s/out_s/divisor).

    The AVX2 lanes of the NHWC avg_pool kernel multiply by that multiplier directly; every other
    path quantizes with scale 1/multiplier, i.e. multiplies by f32(1 / f32(1 / multiplier)).
    """
    m = (f32(in_s) / f32(out_s)) / divisor.to(F32)
    inverse = f32(1.0) / (f32(1.0) / m)
    factor = inverse if direct_lanes is None else torch.where(direct_lanes, m, inverse)
    return (rne(acc.to(F32) * factor) + zp).clamp(0, 255)


# --- 6. the interpreter: one module per quantized module ----------------------------------------

def _uint8(t: torch.Tensor) -> torch.Tensor:
    """The uint8 values inside a quantized tensor (kept by _wrap: saves an int_repr copy)."""
    u = getattr(t, "_int8_values", None)
    return t.int_repr() if u is None else u


def _values(t: torch.Tensor) -> torch.Tensor:
    """The integers inside a quantized tensor, as int32 for arithmetic."""
    return _uint8(t).to(torch.int32)


def _wrap(q: torch.Tensor, scale: float, zero_point: int, channels_last: bool = False) -> torch.Tensor:
    """Integers back into a quantized tensor: only a container, so that torch.flatten & co. work.

    `channels_last` records the memory order PyTorch's kernel would have produced (NHWC for
    conv outputs): it decides which positions fall in a vector loop's scalar tail downstream.
    The values themselves stay in a plain contiguous tensor (no copy needed).
    """
    u = q.to(torch.uint8)
    t = torch._make_per_tensor_quantized_tensor(u, scale, zero_point)
    t._int8_values, t._int8_channels_last = u, channels_last and u.dim() == 4
    return t


def _is_channels_last(t: torch.Tensor) -> bool:
    """Is t (logically) in NHWC memory order, as PyTorch's own tensor would be?"""
    flag = getattr(t, "_int8_channels_last", None)
    if flag is not None:
        return flag
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


@dataclass
class Context:
    """What every interpreter module needs to know: whose arithmetic, and what to record."""

    engine: str
    requant: str = "exact"
    vnni: bool = False
    saturate: bool = True
    record: dict | None = None
    saturation: dict | None = None

    def kernel(self, op: str, symmetric_weights: bool = True, groups: int = 1) -> str:
        """The kernel family that runs `op` ("conv" or "linear") under this engine."""
        if self.requant == "fixedpoint":
            return "fixedpoint"
        if self.engine in ("fbgemm", "qnnpack", "onednn"):
            return self.engine
        # x86: oneDNN for conv only on VNNI CPUs with symmetric weights and groups <= 100
        # (OnednnUtils.h should_use_onednn_quant); fbgemm everywhere else.
        if op == "conv" and self.vnni and symmetric_weights and groups <= 100:
            return "onednn"
        return "fbgemm"

    def store(self, path: str, q: torch.Tensor) -> None:
        if self.record is not None:
            key, k = path, 1
            while key in self.record:
                k += 1
                key = f"{path}#{k}"
            self.record[key] = q.detach().clone()


class Interpreted(nn.Module):
    """Base of the interpreter modules: knows its path in the model and the context."""

    def __init__(self, path: str, original: nn.Module, ctx: Context):
        super().__init__()
        self.path, self.kind, self.ctx = path, type(original).__name__, ctx

    def extra_repr(self) -> str:
        return f"{self.path}: {self.kind}"

    def __call__(self, *args, **kwargs):
        with _inside(self):
            return super().__call__(*args, **kwargs)

    def emit(self, q, scale, zero_point, channels_last=False):
        t = _wrap(q, scale, zero_point, channels_last)
        self.ctx.store(self.path, t._int8_values)
        return t


class QuantizeI(Interpreted):
    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.scale, self.zero_point = float(m.scale), int(m.zero_point)
        if m.dtype != torch.quint8:
            raise UnsupportedModuleError(f"{path} ({type(m).__name__}) quantizes to {m.dtype}; "
                                         "the interpreter handles quint8 activations only.")

    def forward(self, x):
        return self.emit(quantize(x, self.scale, self.zero_point), self.scale, self.zero_point,
                         _is_channels_last(x))


class DeQuantizeI(Interpreted):
    def forward(self, x):
        return dequantize(_values(x), x.q_scale(), x.q_zero_point())


class WeightedI(Interpreted):
    """Conv and Linear: int8 weights, per-tensor or per-channel scales, float bias."""

    def __init__(self, path, m, ctx, relu):
        super().__init__(path, m, ctx)
        w = m.weight()
        self.wq = w.int_repr()
        out_channels = self.wq.shape[0]
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            self.w_scale = w.q_per_channel_scales().to(torch.float64)
            self.w_zp = w.q_per_channel_zero_points().to(torch.int64)
            self.per_channel = True
        else:
            self.w_scale = torch.full((out_channels,), w.q_scale(), dtype=torch.float64)
            self.w_zp = torch.full((out_channels,), w.q_zero_point(), dtype=torch.int64)
            self.per_channel = False
        bias = m.bias()
        self.bias = None if bias is None else bias.detach().to(F32).clone()
        self.scale, self.zero_point, self.relu = float(m.scale), int(m.zero_point), relu
        self.constants = {}  # fixed-point bias and multipliers, per input scale

    def pairs(self, kernel, channels, taps=1, groups=1):
        """The int16 pairs to saturate: only for fbgemm / oneDNN kernels on CPUs without VNNI."""
        if kernel not in ("fbgemm", "onednn") or not self.ctx.saturate:
            return None
        return pairs_of(kernel, channels, taps, groups)

    def count(self, stats):
        if stats.get("saturated"):
            self.ctx.saturation[self.path] = self.ctx.saturation.get(self.path, 0) + stats["saturated"]

    def requantize(self, acc, x, kernel):
        if kernel == "fixedpoint":
            in_s = x.q_scale()
            if in_s not in self.constants:
                with _offline():
                    self.constants[in_s] = fixedpoint_constants(in_s, self.w_scale, self.bias, self.scale)
            return requantize_fixedpoint(acc, self.constants[in_s], self.zero_point, self.relu)
        return REQUANTIZE[kernel](acc, x.q_scale(), self.w_scale, self.bias, self.scale, self.zero_point,
                                  self.relu, self.per_channel)


class ConvI(WeightedI):
    def __init__(self, path, m, ctx, relu):
        super().__init__(path, m, ctx, relu)
        if m.padding_mode != "zeros":
            raise UnsupportedModuleError(f"{path} ({type(m).__name__}) uses padding_mode="
                                         f"{m.padding_mode!r}; only 'zeros' is supported.")
        self.stride, self.padding, self.dilation, self.groups = m.stride, m.padding, m.dilation, m.groups

    def forward(self, x):
        kernel = self.ctx.kernel("conv", bool((self.w_zp == 0).all()), self.groups)
        oc, cg, kh, kw = self.wq.shape
        stats = {}
        acc = conv_accumulate(_uint8(x), x.q_zero_point(), self.wq, self.w_zp, self.stride, self.padding,
                              self.dilation, self.groups, self.pairs(kernel, cg, kh * kw, self.groups), stats)
        self.count(stats)
        return self.emit(self.requantize(acc, x, kernel), self.scale, self.zero_point, channels_last=True)


class LinearI(WeightedI):
    def forward(self, x):
        kernel, stats = self.ctx.kernel("linear"), {}
        acc = linear_accumulate(_uint8(x), x.q_zero_point(), self.wq, self.w_zp,
                                self.pairs(kernel, self.wq.shape[1]), stats)
        self.count(stats)
        return self.emit(self.requantize(acc, x, kernel), self.scale, self.zero_point)


class ReLUI(Interpreted):
    def forward(self, x):
        zp = x.q_zero_point()
        return self.emit(_values(x).clamp_min(zp), x.q_scale(), zp, _is_channels_last(x))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def pool_windows(t, kernel, stride, padding, dilation=1, ceil_mode=False, pad_value=0, extra_value=0):
    """Sliding windows of an integer tensor [..., H, W] -> [..., OH, OW, kh, kw], as PyTorch's
    pooling sizes them: `padding` filled with pad_value, the ceil_mode overhang with extra_value."""
    k, s, p, d = _pair(kernel), _pair(stride if stride is not None else kernel), _pair(padding), _pair(dilation)
    span = [d[i] * (k[i] - 1) + 1 for i in (0, 1)]
    sizes = []
    for i, size in enumerate(t.shape[-2:]):
        out = (size + 2 * p[i] - span[i] + ((s[i] - 1) if ceil_mode else 0)) // s[i] + 1
        if ceil_mode and (out - 1) * s[i] >= size + p[i]:
            out -= 1                                   # the last window must start inside
        sizes.append(out)
    extra = [max(0, (sizes[i] - 1) * s[i] + span[i] - (t.shape[-2 + i] + 2 * p[i])) for i in (0, 1)]
    t = F.pad(t, (p[1], p[1], p[0], p[0]), value=pad_value)
    t = F.pad(t, (0, extra[1], 0, extra[0]), value=extra_value)
    windows = t.unfold(-2, span[0], s[0]).unfold(-2, span[1], s[1])
    return windows[..., :sizes[0], :sizes[1], ::d[0], ::d[1]]


class PoolI(Interpreted):
    """A pooling layer: keeps the original module for its window settings."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.pool = m


class MaxPoolI(PoolI):
    """Max pooling: the largest integer of each window; scale and zero point unchanged."""

    def forward(self, x):
        p = self.pool
        windows = pool_windows(_values(x), p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode, -1, -1)
        return self.emit(windows.amax((-1, -2)), x.q_scale(), x.q_zero_point(), _is_channels_last(x))


class AvgPoolI(PoolI):
    """Average pooling: integer window sums of (q - zp), one multiplier per window size."""

    def forward(self, x):
        p = self.pool
        n, c, h, w = x.shape

        def sums(t, pad_value):
            return pool_windows(t, p.kernel_size, p.stride, p.padding, 1, p.ceil_mode, pad_value).sum((-1, -2))

        acc = sums(_values(x) - x.q_zero_point(), 0)
        ones = torch.ones(h, w, dtype=torch.int32)
        divisor = sums(ones, 1 if p.count_include_pad else 0)   # window size, with or without padding
        if p.divisor_override:
            divisor = torch.full_like(divisor, p.divisor_override)
        s_in, zp = x.q_scale(), x.q_zero_point()
        if self.ctx.requant == "fixedpoint":
            q = divide_fixedpoint(acc, divisor.expand_as(acc), 1.0) + zp
        else:
            lanes = None
            if _is_channels_last(x):  # NHWC kernel: AVX2 lanes for the first C // 8 * 8 channels
                lanes = (torch.arange(c) < c // 8 * 8).view(1, c, 1, 1)
            q = avg_pool_requantize(acc, s_in, s_in, divisor, zp, lanes)
        return self.emit(q.clamp(0, 255), s_in, zp, _is_channels_last(x))


class AdaptiveAvgPoolI(Interpreted):
    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.output_size = m.output_size

    def forward(self, x):
        n, c, h, w = x.shape
        oh, ow = (v if v is not None else d for v, d in zip(_pair(self.output_size), (h, w)))
        q, s_in, zp = _values(x) - x.q_zero_point(), x.q_scale(), x.q_zero_point()
        rows = []
        for i in range(oh):
            h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            cols = []
            for j in range(ow):
                w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                acc = q[:, :, h0:h1, w0:w1].sum((-1, -2))
                size = torch.tensor((h1 - h0) * (w1 - w0))
                if self.ctx.requant == "fixedpoint":
                    cols.append(divide_fixedpoint(acc, size, 1.0) + zp)
                else:
                    cols.append(avg_pool_requantize(acc, s_in, s_in, size, zp))
            rows.append(torch.stack(cols, -1))
        return self.emit(torch.stack(rows, -2).clamp(0, 255), s_in, zp, _is_channels_last(x))


class QFunctionalI(Interpreted):
    """FloatFunctional after convert(): add, add_relu, mul, mul_relu and cat on int8 tensors."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.scale, self.zero_point = float(m.scale), int(m.zero_point)

    def forward(self, *args):
        raise UnsupportedModuleError(f"{self.path} ({self.kind}) is not callable; use its methods.")

    def _binary(self, a, b, op, relu):
        with _inside(self):
            qa, qb = _values(a), _values(b)
            args = (qa, a.q_scale(), a.q_zero_point(), qb, b.q_scale(), b.q_zero_point(),
                    self.scale, self.zero_point, relu)
            if self.ctx.requant == "fixedpoint":
                q = (add_fixedpoint if op == "add" else mul_fixedpoint)(*args)
            elif op == "mul":
                q = mul_float(*args)
            elif self.ctx.engine == "qnnpack":
                q = add_qnnpack(*args)
            else:
                q = add_float(*args, nhwc=_is_channels_last(a))
            return self.emit(q, self.scale, self.zero_point, _is_channels_last(a))

    def add(self, a, b):
        return self._binary(a, b, "add", False)

    def add_relu(self, a, b):
        return self._binary(a, b, "add", True)

    def mul(self, a, b):
        return self._binary(a, b, "mul", False)

    def mul_relu(self, a, b):
        return self._binary(a, b, "mul", True)

    def cat(self, xs, dim=0):
        with _inside(self):
            return self._cat(list(xs), dim)

    def _cat(self, xs, dim):
        s, z = self.scale, self.zero_point
        nhwc = dim in (1, -3) and all(_is_channels_last(t) for t in xs)
        parts = []
        for t in xs:
            q, st, zt = _values(t), t.q_scale(), t.q_zero_point()
            if self.ctx.requant == "fixedpoint":
                parts.append(q if (st, zt) == (s, z) else requantize_fixedpoint_values(q, st, zt, s, z))
            elif nhwc:  # qcat_nhwc_kernel: copy if same qparams; AVX2 lanes for C // 8 * 8 channels
                if (st, zt) == (s, z):
                    parts.append(q)
                else:
                    c = q.shape[1]
                    lanes = (torch.arange(c) < c // 8 * 8).view(1, c, 1, 1)
                    parts.append(torch.where(lanes, requantize_float(q, st, zt, s, z, True),
                                             requantize_float(q, st, zt, s, z, False)))
            else:  # generic path: t.dequantize(), torch.cat, quantize_per_tensor
                parts.append(requantize_float(q, st, zt, s, z, vector=True))
        return self.emit(torch.cat(parts, dim), s, z, nhwc)

    def add_scalar(self, *args):
        raise UnsupportedModuleError(f"{self.path} ({self.kind}).add_scalar is not supported.")

    mul_scalar = matmul = add_scalar


def divide_fixedpoint(acc, divisor, ratio) -> torch.Tensor:
    """acc * ratio / divisor with integer multipliers (one per distinct divisor)."""
    divisor = torch.as_tensor(divisor).expand_as(acc) if torch.as_tensor(divisor).dim() == 0 else divisor
    divisor = divisor.expand_as(acc)
    m0 = torch.empty_like(acc)
    shift = torch.empty_like(acc)
    for d in torch.unique(divisor).tolist():
        mm, nn_ = quantize_multiplier(ratio / d)
        m0[divisor == d], shift[divisor == d] = mm, nn_
    return multiply_by_quantized_multiplier(acc, m0, shift)


def requantize_fixedpoint_values(q, s_in, z_in, s, z) -> torch.Tensor:
    """Move int8 values to another scale and zero point: z + (q - z_in) * M, integers only."""
    m0, shift = quantize_multiplier(s_in / s)
    return (multiply_by_quantized_multiplier(q - z_in, m0, shift) + z).clamp(0, 255)


ADD_LEFT_SHIFT = 20


def add_fixedpoint(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """TFLite's integer add: both inputs scaled up by 2**20 onto a common scale, summed, requantized."""
    twice_max = 2 * max(sa, sb)
    ma, na = quantize_multiplier(sa / twice_max)
    mb, nb = quantize_multiplier(sb / twice_max)
    mo, no = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s))
    a_scaled = multiply_by_quantized_multiplier((a - za) << ADD_LEFT_SHIFT, ma, na)
    b_scaled = multiply_by_quantized_multiplier((b - zb) << ADD_LEFT_SHIFT, mb, nb)
    q = multiply_by_quantized_multiplier(a_scaled + b_scaled, mo, no) + z
    return q.clamp(z if relu else 0, 255)


def mul_fixedpoint(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """Integer mul: exact product of the centred values, times M = sa*sb/s in fixed point."""
    m0, shift = quantize_multiplier(sa * sb / s)
    q = multiply_by_quantized_multiplier((a - za) * (b - zb), m0, shift) + z
    return q.clamp(z if relu else 0, 255)


# --- 7. following forward(): a copy of the module tree with interpreter leaves ------------------

_LOCAL = threading.local()


@contextlib.contextmanager
def _inside(module=None):
    """Inside interpreter modules the guard below steps aside (they only read the integers)."""
    previous = getattr(_LOCAL, "module", None)
    _LOCAL.module = module
    try:
        yield
    finally:
        _LOCAL.module = previous


@contextlib.contextmanager
def _offline():
    """Constants computed once per layer (multipliers, int32 biases): float allowed here."""
    previous = getattr(_LOCAL, "offline", False)
    _LOCAL.offline = True
    try:
        yield
    finally:
        _LOCAL.offline = previous


# Functions forward() may call on an int8 activation: views and metadata, no arithmetic.
GLUE = {"flatten", "reshape", "view", "view_as", "squeeze", "unsqueeze", "contiguous", "size", "dim",
        "numel", "__get__", "__len__", "is_contiguous", "stride", "q_scale", "q_zero_point",
        "int_repr", "qscheme", "dequantize", "__repr__", "__format__", "detach", "clone"}


class _Guard(TorchFunctionMode):
    """Refuses any torch function on an int8 activation that is not pure data movement."""

    def __init__(self, where: list, integer_only: bool = False):
        super().__init__()
        self.where, self.integer_only = where, integer_only

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        inside = getattr(_LOCAL, "module", None)
        if inside is None and name not in GLUE:
            leaves = tree_flatten((args, kwargs))[0]
            if any(isinstance(t, torch.Tensor) and t.is_quantized for t in leaves):
                path, kind = self.where[-1] if self.where else ("", "?")
                raise UnsupportedModuleError(
                    f"{path or '<model>'} ({kind}).forward calls {name}() on an int8 activation, which "
                    "the integer interpreter has no kernel for. Use a module it knows (QFunctional for "
                    "add/mul/cat, ReLU, pooling) or move the op after DeQuantStub.")
        result = func(*args, **kwargs)
        if (self.integer_only and inside is not None and not isinstance(inside, (QuantizeI, DeQuantizeI))
                and not getattr(_LOCAL, "offline", False) and isinstance(result, torch.Tensor)
                and result.is_floating_point()):
            raise AssertionError(f"{inside.path}: {name}() made a float tensor in fixed-point mode.")
        return result


def _leaf_for(module: nn.Module, path: str, ctx: Context):
    """The interpreter module standing in for one converted module (None: keep it as it is)."""
    kind = type(module)
    makers = {nnq.Quantize: QuantizeI, nnq.DeQuantize: DeQuantizeI, nnq.QFunctional: QFunctionalI,
              nn.ReLU: ReLUI, nn.MaxPool2d: MaxPoolI, nn.AvgPool2d: AvgPoolI,
              nn.AdaptiveAvgPool2d: AdaptiveAvgPoolI}
    if kind in makers:
        return makers[kind](path, module, ctx)
    relu = {nnq.Conv2d: False, nniq.ConvReLU2d: True, nnq.Linear: False, nniq.LinearReLU: True}
    if kind in (nnq.Conv2d, nniq.ConvReLU2d):
        return ConvI(path, module, ctx, relu[kind])
    if kind in (nnq.Linear, nniq.LinearReLU):
        return LinearI(path, module, ctx, relu[kind])
    if kind in (nn.Identity, nn.Flatten, nn.Dropout, nnq.Dropout):
        return module  # no arithmetic (Dropout is the identity in eval mode)
    if not list(module.children()):
        raise UnsupportedModuleError(
            f"{path or '<model>'} is a {kind.__module__}.{kind.__name__}, which the integer interpreter "
            f"does not implement. Supported: Quantize, DeQuantize, quantized Conv2d / ConvReLU2d, "
            f"Linear / LinearReLU, QFunctional (add, add_relu, mul, cat), ReLU, MaxPool2d, AvgPool2d, "
            f"AdaptiveAvgPool2d, Flatten, Dropout, Identity.")
    return None


def _copy_tree(module: nn.Module, path: str, leaf, where: list | None) -> nn.Module:
    """A shallow copy of `module` whose leaves are replaced by leaf(module, path) (the original
    model is untouched); `where` tracks the module whose forward() is running, for messages."""
    replacement = leaf(module, path)
    if replacement is not None:
        return replacement
    clone = copy.copy(module)
    for key, value in list(vars(clone).items()):
        if "hook" in key and isinstance(value, dict):
            setattr(clone, key, OrderedDict())
    clone._modules = OrderedDict((name, _copy_tree(child, f"{path}.{name}" if path else name, leaf, where))
                                 for name, child in module._modules.items())
    if where is not None:
        clone.register_forward_pre_hook(lambda m, args: where.append((path, type(module).__name__)))
        clone.register_forward_hook(lambda m, args, out: where.pop() and None)
    return clone


def engine_of(qmodel: nn.Module, engine: str | None = None) -> str:
    """The engine whose arithmetic to follow: given, else set by qlib.ptq, else torch's active one."""
    engine = engine or ptq.engine_of(qmodel) or torch.backends.quantized.engine
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one the interpreter knows; choose one of {ENGINES}.")
    return engine


class Interpreter:
    """A converted model re-executed with integers; call it like the model (float in, float out).

    Build it once and call it many times. After a call, `saturation` maps each layer whose
    int16 pairs were clipped (non-VNNI kernels) to how many (pair, output channel) sums were.
    """

    def __init__(self, qmodel: nn.Module, requant: str = "exact", engine: str | None = None,
                 int16_saturation: bool | None = None):
        if requant not in REQUANT_MODES:
            raise ValueError(f"requant must be one of {REQUANT_MODES}, got {requant!r}.")
        if qmodel.training:
            raise ValueError("The model is in training mode; call .eval() first (Dropout must be off).")
        # int16 pair saturation happens on CPUs without VNNI; None: do what this CPU does.
        vnni = has_vnni()
        saturate = not vnni if int16_saturation is None else int16_saturation
        self.ctx = Context(engine_of(qmodel, engine), requant, vnni, saturate, saturation={})
        self.where: list = []
        self.model = _copy_tree(qmodel, "", lambda m, p: _leaf_for(m, p, self.ctx), self.where)

    @property
    def engine(self) -> str:
        return self.ctx.engine

    @property
    def saturation(self) -> dict:
        return dict(self.ctx.saturation)

    def __call__(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        self.ctx.record = record
        self.ctx.saturation.clear()
        self.where.clear()
        try:
            with torch.inference_mode(), _Guard(self.where, self.ctx.requant == "fixedpoint"):
                out = self.model(x)
        finally:
            self.ctx.record = None
        return out


def run(qmodel: nn.Module, x: torch.Tensor, requant: str = "exact", engine: str | None = None,
        int16_saturation: bool | None = None) -> torch.Tensor:
    """qmodel(x) recomputed with integer arithmetic: equal bit for bit with requant="exact".

    `engine` defaults to the one the model was converted under (qlib.ptq sets `.qengine`).
    Run it on the same batch you compare with: the quantized add's scalar tail depends on the
    tensor's size, as it does in PyTorch.
    """
    return Interpreter(qmodel, requant, engine, int16_saturation)(x)


def trace(layer: "WeightedI", q_in: torch.Tensor, in_scale: float, in_zp: int, index: tuple) -> dict:
    """One output of a conv/linear layer worked out with Python integers, step by step, the way
    fbgemm does it (engines x86/fbgemm): the numbers a learner can check by hand.

    q_in: the layer's input integers for one image ([C, H, W] or [features]); index: (oc, y, x)
    for a conv, (o,) for a linear layer.
    """
    oc = index[0]
    w = layer.wq[oc].to(torch.int64)
    if isinstance(layer, ConvI):
        (s_h, s_w), (p_h, p_w), (d_h, d_w) = layer.stride, layer.padding, layer.dilation
        cg, kh, kw = w.shape
        g = oc // (layer.wq.shape[0] // layer.groups)
        x = F.pad(q_in[g * cg:(g + 1) * cg].to(torch.int64), (p_w, p_w, p_h, p_h), value=in_zp)
        y0, x0 = index[1] * s_h, index[2] * s_w
        window = x[:, y0:y0 + d_h * (kh - 1) + 1:d_h, x0:x0 + d_w * (kw - 1) + 1:d_w]
    else:
        window = q_in.to(torch.int64)
    xs, ws = window.flatten().tolist(), (w - int(layer.w_zp[oc])).flatten().tolist()
    acc = sum((a - in_zp) * b for a, b in zip(xs, ws))              # exact integer dot product
    ats = f32(in_scale) * f32(layer.w_scale[oc])                    # float32, as fbgemm
    bias = f32(0.0) if layer.bias is None else f32(layer.bias[oc]) / ats
    raw = f32(acc) + bias
    scaled = raw * (ats / f32(layer.scale))
    q = int(torch.round(scaled)) + layer.zero_point
    low = layer.zero_point if layer.relu else 0
    return {"inputs": len(xs), "acc = sum (x - x_zp) * w": acc, "bias / (s_x * s_w)": float(bias),
            "M = s_x * s_w / s_out": float(ats / f32(layer.scale)), "(acc + bias) * M": float(scaled),
            "rounded + zero point": q, "clamped": min(max(q, low), 255)}


# --- 8. layer by layer against PyTorch ----------------------------------------------------------

class _Recorder(nn.Module):
    """Runs a converted module unchanged and keeps its int8 output (PyTorch's side of the table)."""

    def __init__(self, path, module, record):
        super().__init__()
        self.path, self.module, self.record = path, module, record

    def _keep(self, out):
        if isinstance(out, torch.Tensor) and out.is_quantized:
            Context("x86", record=self.record).store(self.path, out.int_repr().to(torch.int64))
        return out

    def forward(self, *args, **kwargs):
        return self._keep(self.module(*args, **kwargs))

    def __getattr__(self, name):
        if name in ("add", "add_relu", "mul", "mul_relu", "cat", "add_scalar", "mul_scalar", "matmul"):
            method = getattr(self._modules["module"], name)
            return lambda *a, **k: self._keep(method(*a, **k))
        return super().__getattr__(name)


def _recording_copy(qmodel: nn.Module, record: dict) -> nn.Module:
    def leaf(m, path):
        if type(m) in (nn.Identity, nn.Flatten, nn.Dropout, nnq.Dropout):
            return m
        leaf_like = type(m) is nnq.QFunctional or hasattr(m, "_packed_params") or not list(m.children())
        return _Recorder(path, m, record) if leaf_like else None
    return _copy_tree(qmodel, "", leaf, None)


def compare_layers(qmodel: nn.Module, x: torch.Tensor, requant: str = "exact",
                   engine: str | None = None, int16_saturation: bool | None = None):
    """Per layer: the interpreter's int8 output against PyTorch's (pandas DataFrame)."""
    import pandas as pd

    ours, theirs = {}, {}
    interpreter = Interpreter(qmodel, requant, engine, int16_saturation)
    interpreter(x, record=ours)
    with torch.inference_mode():
        _recording_copy(qmodel, theirs)(x)
    kinds = dict(qmodel.named_modules())
    rows = []
    for key, reference in theirs.items():
        mine = ours.get(key)
        path = key.split("#")[0]
        if mine is None or mine.shape != reference.shape:
            raise RuntimeError(f"{key}: the interpreter produced no comparable output "
                               f"({None if mine is None else tuple(mine.shape)} vs {tuple(reference.shape)}).")
        diff = (mine.to(torch.int64) - reference).abs()
        rows.append({"layer": key, "type": type(kinds[path]).__name__, "elements": reference.numel(),
                     "mismatches": int((diff > 0).sum()), "max_diff": int(diff.max()) if diff.numel() else 0})
    return pd.DataFrame(rows)
