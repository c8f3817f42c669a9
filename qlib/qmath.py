"""Affine quantization math, written out with plain tensor arithmetic, bit-exact with PyTorch.

A quantized tensor stores integers q and two numbers, a scale S and a zero point Z, that map
them back to reals: r = S * (q - Z). Every function here reproduces what torch 2.14.1 computes
on an x86 CPU with AVX2, bit for bit, without calling any quantized op (tests/test_qmath.py
compares them with torch on random and adversarial inputs). Measured on the pinned torch:

    quantize (quint8, qint8)  inv = f32(1 / f32(S))
                              q   = clamp(wrap32(rne(f32(x * inv)) + Z), qmin, qmax)
    quantize (qint32)         q   = clamp(f32(rne(f32(x * inv)) + f32(Z)), qmin, qmax)
    quantize_per_channel      as qint32 above, with channel c's S and Z, for every dtype
    dequantize                r   = f32(f32(wrap32(q - Z)) * f32(S))
    dequantize_per_channel    r   = f32(f32(f32(q) - f32(Z_c)) * S_c), the product in double

f32 = round to float32, rne = round half to even, wrap32 = two's-complement int32 overflow.
The zero point is added *after* rounding: round(x / S) + Z, not round(x / S + Z) (as many
textbooks write it; the two differ on exact ties such as x / S = 2.5 when Z is odd).
Notebook 01.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import BadInputError

# torch's quantized dtype -> (qmin, qmax, the integer dtype of .int_repr())
QRANGES = {
    torch.quint8: (0, 255, torch.uint8),
    torch.qint8: (-128, 127, torch.int8),
    torch.qint32: (-(2**31), 2**31 - 1, torch.int32),
}
INT_REPR_TO_QDTYPE = {torch.uint8: torch.quint8, torch.int8: torch.qint8, torch.int32: torch.qint32}
EPS = torch.finfo(torch.float32).eps  # observers' floor on the scale
# Largest float32 below 2**31: fbgemm's AVX2 quantize clips x / S there before converting to int32.
INT32_FLOAT_MAX = 2**31 - 128


def _f32(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32)


def check_dtype(dtype, allowed=tuple(QRANGES)) -> torch.dtype:
    if dtype not in allowed:
        names = ", ".join(f"torch.{str(d).split('.')[-1]}" for d in allowed)
        raise BadInputError(f"dtype={dtype!r} is not supported here; use one of {names}.")
    return dtype


def qrange(dtype=torch.quint8, reduce_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of `dtype`; `reduce_range` drops one bit (0..127, -64..63) as the x86 qconfig does."""
    check_dtype(dtype)
    qmin, qmax, _ = QRANGES[dtype]
    if reduce_range:
        if dtype == torch.qint32:
            raise BadInputError("reduce_range only applies to 8-bit dtypes (torch.quint8, torch.qint8).")
        qmin, qmax = (0, 127) if dtype == torch.quint8 else (-64, 63)
    return qmin, qmax


def check_scale(scale, name: str = "scale") -> float:
    """`scale` rounded to float32 (what the kernels use), or a ValueError saying why it is unusable."""
    try:
        as_double = float(scale)
    except (TypeError, ValueError, RuntimeError):
        raise BadInputError(f"{name} must be one positive number, not {scale!r}.") from None
    if not math.isfinite(as_double):
        raise BadInputError(f"{name}={as_double} is not finite; a scale is the (positive, finite) step "
                         "between two neighbouring quantized values.")
    if as_double <= 0:
        raise BadInputError(f"{name}={as_double} must be > 0: it is the step between two neighbouring "
                         "quantized values (compute it with qlib.qmath.qparams).")
    s32 = _f32(as_double)
    if not torch.isfinite(s32):
        raise BadInputError(f"{name}={as_double} overflows float32, the precision the kernels use.")
    if s32 == 0 or not torch.isfinite(1 / s32):
        raise BadInputError(f"{name}={as_double} is so small that 1/{name} overflows float32 (or the scale "
                         "rounds to 0): torch would then map 0.0 to qmax. Use a scale >= 3e-39, as "
                         "observers do (their floor is float32 eps = 1.19e-07).")
    return float(s32)


def check_zero_point(zero_point, dtype, name: str = "zero_point") -> int:
    qmin, qmax, _ = QRANGES[dtype]
    if isinstance(zero_point, torch.Tensor):
        if zero_point.numel() != 1 or zero_point.is_floating_point():
            raise BadInputError(f"{name} must be one integer, not a tensor of shape "
                             f"{tuple(zero_point.shape)} and dtype {zero_point.dtype}.")
        zero_point = zero_point.item()
    whole_float = isinstance(zero_point, float) and zero_point.is_integer()
    if isinstance(zero_point, bool) or not (isinstance(zero_point, numbers.Integral) or whole_float):
        raise BadInputError(f"{name}={zero_point!r} must be an integer: it is the integer that stands "
                         "for 0.0 (so that 0.0 is represented exactly).")
    zero_point = int(zero_point)
    if not qmin <= zero_point <= qmax:
        raise BadInputError(f"{name}={zero_point} is outside {dtype}'s range [{qmin}, {qmax}]; the zero "
                         "point is itself a quantized value.")
    return zero_point


def _check_input(x, allow_nan: bool = False) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.float32)
    if x.dtype != torch.float32:
        raise BadInputError(f"x has dtype {x.dtype}; torch quantizes float32 tensors only. Convert "
                         "it first with x.float().")
    if not allow_nan and torch.isnan(x).any():
        raise BadInputError(f"x contains {int(torch.isnan(x).sum())} NaN value(s); NaN has no quantized "
                         "value (torch silently writes qmax or qmin for it). Remove or replace them.")
    return x


def _wrap_int32(v: torch.Tensor) -> torch.Tensor:
    """int64 -> the int32 two's-complement result the C++/SIMD code gets on overflow."""
    return ((v + 2**31) % 2**32) - 2**31


def _round_then_add_zero_point(t: torch.Tensor, zero_point, dtype) -> torch.Tensor:
    """Integer result (int64) of t = f32(x * inv) for `dtype`, zero point added after rounding."""
    qmin, qmax, _ = QRANGES[dtype]
    rounded = torch.round(t)  # float32, round half to even (nearbyint / cvtps2dq)
    if dtype == torch.qint32:
        # fbgemm's scalar path: f32(Z + rne(t)) (a float32 addition), clamped in double.
        total = rounded + _f32(zero_point)
        total = total.double().clamp(qmin, qmax)
        total = torch.where(torch.isnan(total), torch.full_like(total, qmin), total)
        return total.to(torch.int64)
    # fbgemm's AVX2 path: clip at INT32_FLOAT_MAX (NaN becomes it), convert to int32 (values below
    # -2**31 become -2**31), add Z in int32 (which wraps), then clamp to [qmin, qmax].
    clipped = torch.where(torch.isnan(rounded) | (rounded > INT32_FLOAT_MAX),
                          _f32(INT32_FLOAT_MAX), rounded)
    as_int = clipped.double().clamp(min=-(2**31)).to(torch.int64)
    return _wrap_int32(as_int + zero_point).clamp(qmin, qmax)


def quantize(x, scale, zero_point, dtype=torch.quint8) -> torch.Tensor:
    """The integers of torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr(), bit for bit.

    q = clamp(round_half_even(f32(x * f32(1 / f32(scale)))) + zero_point, qmin, qmax).
    Values beyond the range saturate to qmin / qmax, and so do -inf / +inf, except where torch's
    AVX2 kernel overflows int32 when it adds the zero point; we keep that quirk, to stay exact:
    quint8 with zero_point >= 128: x / scale >= 2**31 - zero_point (+inf included) gives 0, not 255;
    qint8 with zero_point < 0: x / scale <= -2**31 (-inf included) gives 127, not -128.
    qint32 (another kernel) saturates correctly. NaN in x is refused (torch writes qmax or qmin).
    """
    check_dtype(dtype)
    x = _check_input(x)
    scale = check_scale(scale)
    zero_point = check_zero_point(zero_point, dtype)
    inv = 1 / _f32(scale)
    t = x * inv
    return _round_then_add_zero_point(t, zero_point, dtype).to(QRANGES[dtype][2])


def _dtype_of(q: torch.Tensor, dtype):
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        what = f"a tensor of {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise BadInputError(f"q must be an integer tensor (e.g. quantize(...) or .int_repr()), not {what}.")
    if dtype is None:
        if q.dtype not in INT_REPR_TO_QDTYPE:
            raise BadInputError(f"q has dtype {q.dtype}, which names no quantized dtype; pass dtype= "
                             "(torch.quint8, torch.qint8 or torch.qint32).")
        dtype = INT_REPR_TO_QDTYPE[q.dtype]
    check_dtype(dtype)
    qmin, qmax, _ = QRANGES[dtype]
    if q.numel() and (q.min() < qmin or q.max() > qmax):
        raise BadInputError(f"q holds values outside {dtype}'s range [{qmin}, {qmax}] "
                         f"(min {int(q.min())}, max {int(q.max())}).")
    return dtype


def dequantize(q: torch.Tensor, scale, zero_point, dtype=None) -> torch.Tensor:
    """What `.dequantize()` returns for integers q, bit for bit: f32(f32(q - Z) * f32(S)).

    `dtype` defaults to the one q's integer dtype stands for (uint8 -> quint8, ...). For qint32,
    q - Z is an int32 subtraction that wraps, as in torch.
    """
    dtype = _dtype_of(q, dtype)
    scale = check_scale(scale)
    zero_point = check_zero_point(zero_point, dtype)
    diff = _wrap_int32(q.to(torch.int64) - zero_point)
    return diff.to(torch.float32) * _f32(scale)


def _channel_view(values: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _check_per_channel(x, scales, zero_points, axis, dtype):
    check_dtype(dtype)
    x = _check_input(x)
    if not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise BadInputError(f"axis={axis!r} is not a dimension of x (x has {x.dim()} dimensions).")
    axis %= x.dim()
    channels = x.shape[axis]
    scales = torch.as_tensor(scales, dtype=torch.float64).flatten()
    zero_points = torch.as_tensor(zero_points).flatten()
    if scales.numel() != channels or zero_points.numel() != channels:
        raise BadInputError(f"x has {channels} channels along axis {axis}, but {scales.numel()} scales and "
                         f"{zero_points.numel()} zero points were given: one of each per channel.")
    for c in range(channels):
        check_scale(scales[c].item(), name=f"scales[{c}]")
    if zero_points.is_floating_point() and not torch.equal(zero_points, zero_points.round()):
        raise BadInputError("zero_points must be integers: each stands for 0.0 in its channel.")
    zero_points = zero_points.to(torch.int64)
    qmin, qmax, _ = QRANGES[dtype]
    outside = (zero_points < qmin) | (zero_points > qmax)
    if outside.any():
        c = int(outside.nonzero()[0])
        raise BadInputError(f"zero_points[{c}]={int(zero_points[c])} is outside {dtype}'s range [{qmin}, {qmax}].")
    return x, scales.to(torch.float32), zero_points, axis


def quantize_per_channel(x, scales, zero_points, axis: int, dtype=torch.qint8) -> torch.Tensor:
    """The integers of torch.quantize_per_channel(x, scales, zero_points, axis, dtype).int_repr().

    Channel c uses its own scale and zero point: q = clamp(f32(rne(f32(x * f32(1 / S_c))) + Z_c),
    qmin, qmax). This kernel saturates +-inf correctly for every zero point (it has no int32
    overflow, unlike `quantize`); NaN in x is refused.
    """
    x, scales, zero_points, axis = _check_per_channel(x, scales, zero_points, axis, dtype)
    inv = _channel_view(1 / scales, x.dim(), axis)
    t = x * inv
    rounded = torch.round(t) + _channel_view(zero_points.to(torch.float32), x.dim(), axis)
    qmin, qmax, int_dtype = QRANGES[dtype]
    return rounded.double().clamp(qmin, qmax).to(torch.int64).to(int_dtype)


def dequantize_per_channel(q: torch.Tensor, scales, zero_points, axis: int, dtype=None) -> torch.Tensor:
    """What `.dequantize()` returns for a per-channel quantized tensor with integers q.

    Unlike the per-tensor kernel, this one subtracts in float32 and multiplies in double, by the
    scale as given (float64, not rounded to float32): f32(f32(f32(q) - f32(Z_c)) * S_c).
    """
    dtype = _dtype_of(q, dtype)
    dummy = torch.zeros(q.shape, dtype=torch.float32)
    _, _, zero_points, axis = _check_per_channel(dummy, scales, zero_points, axis, dtype)
    scales = torch.as_tensor(scales, dtype=torch.float64).flatten()
    diff = q.to(torch.float32) - _channel_view(zero_points.to(torch.float32), q.dim(), axis)
    return (diff.to(torch.float64) * _channel_view(scales, q.dim(), axis)).to(torch.float32)


def _check_range(xmin, xmax, name_min="xmin", name_max="xmax"):
    lo, hi = _f32(xmin), _f32(xmax)
    if lo.shape != hi.shape:
        raise BadInputError(f"{name_min} and {name_max} must have the same shape, not "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}.")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise BadInputError(f"{name_min}={xmin} and {name_max}={xmax} must be finite numbers (a range "
                         "with inf or NaN gives an infinite or undefined scale).")
    if (lo > hi).any():
        raise BadInputError(f"{name_min}={xmin} is above {name_max}={xmax}; pass (min, max) in that order.")
    return lo, hi


def _calculate_qparams(lo, hi, dtype, symmetric, reduce_range):
    """torch's observer `_calculate_qparams` for a torch dtype (and reduce_range)."""
    check_dtype(dtype, (torch.quint8, torch.qint8))
    if symmetric and reduce_range and dtype == torch.quint8:
        raise BadInputError("symmetric=True with reduce_range=True is not defined for quint8 "
                         "(torch's observers refuse it too); use qint8, or the affine scheme.")
    return _range_qparams(lo, hi, *qrange(dtype, reduce_range), symmetric)


def _range_qparams(lo, hi, qmin: int, qmax: int, symmetric: bool):
    """Float32 tensor arithmetic of torch's observer `_calculate_qparams`, step by step, for any
    integer range (torch's own are 0..255, -128..127 and their reduce_range halves)."""
    # 1. Widen the range to include 0, so that 0.0 gets an exact integer (the zero point).
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    eps = _f32([EPS])
    if symmetric:
        # 2s. Centre the grid on 0: the larger of |min|, |max| spans half the integers; Z is 0 on a
        #     signed range, its middle on an unsigned one (128 for quint8).
        bound = torch.maximum(-lo, hi)
        scale = torch.maximum(bound / (float(qmax - qmin) / 2), eps)
        zero_point = torch.full_like(scale, 0 if qmin < 0 else (qmin + qmax + 1) // 2, dtype=torch.int64)
    else:
        # 2a. Spread [min, max] over all the integers; Z is where 0.0 lands, rounded half to even.
        scale = torch.maximum((hi - lo) / float(qmax - qmin), eps)
        zero_point = (qmin - torch.round(lo / scale).to(torch.int64)).clamp(qmin, qmax)
    return scale, zero_point


def representable(scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[float, float]:
    """The real interval a grid covers: [S (qmin - Z), S (qmax - Z)] (notebook 01, section 3)."""
    return scale * (qmin - zero_point), scale * (qmax - zero_point)


def clipped(x: torch.Tensor, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """Which values of x lie more than half a step outside the representable interval: those
    quantization clips rather than rounds."""
    lo, hi = representable(scale, zero_point, qmin, qmax)
    return (x < lo - scale / 2) | (x > hi + scale / 2)


def qparams(xmin, xmax, dtype=torch.quint8, symmetric: bool = False,
            reduce_range: bool = False) -> tuple[float, int]:
    """(scale, zero_point) that MinMaxObserver chooses for data whose min is xmin and max is xmax.

    Same arithmetic as torch's observer, in float32: the range is widened to include 0; affine:
    S = (max - min) / (qmax - qmin), Z = qmin - round_half_even(min / S) clamped to the range;
    symmetric: S = max(-min, max) / ((qmax - qmin) / 2), Z = 0 (qint8) or 128 (quint8);
    finally S >= float32 eps. xmin and xmax are rounded to float32 first, as the observer sees them.
    """
    lo, hi = _check_range(xmin, xmax)
    if lo.numel() != 1:
        raise BadInputError("qparams takes one (xmin, xmax) pair; use qparams_per_channel for many.")
    scale, zero_point = _calculate_qparams(lo.reshape(1), hi.reshape(1), dtype, symmetric, reduce_range)
    return float(scale[0]), int(zero_point[0])


def qparams_per_channel(xmins, xmaxs, dtype=torch.qint8, symmetric: bool = True,
                        reduce_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales float32, zero_points int64) that PerChannelMinMaxObserver chooses from per-channel ranges.

    The defaults (qint8, symmetric) are those of the x86/fbgemm weight observer.
    """
    lo, hi = _check_range(xmins, xmaxs, "xmins", "xmaxs")
    if lo.dim() != 1:
        raise BadInputError(f"xmins and xmaxs must be 1-D (one value per channel), not shape {tuple(lo.shape)}.")
    return _calculate_qparams(lo, hi, dtype, symmetric, reduce_range)


def channel_ranges(x: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each channel of x along `axis` (what PerChannelMinMaxObserver records)."""
    moved = x.detach().float().movedim(axis, 0).flatten(1)
    return moved.amin(dim=1), moved.amax(dim=1)


def qparams_for_range(xmin, xmax, qmin: int, qmax: int, symmetric: bool = False) -> tuple[float, int]:
    """qparams for any integer range [qmin, qmax] (any bit width), by the observers' arithmetic.

    Symmetric puts the zero point at 0 when the range is signed, at its middle otherwise. For
    torch's 8-bit ranges this equals `qparams` (tests check it).
    """
    lo, hi = _check_range(xmin, xmax)
    if not (isinstance(qmin, int) and isinstance(qmax, int) and qmin <= 0 < qmax):
        raise BadInputError(f"[qmin, qmax] = [{qmin}, {qmax}] must be integers with qmin <= 0 < qmax "
                         "(0 must be representable).")
    scale, zero_point = _range_qparams(lo.reshape(1), hi.reshape(1), qmin, qmax, symmetric)
    return float(scale[0]), int(zero_point[0])


def quantize_to_range(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """`quantize`'s arithmetic for any integer range (any bit width), as int64; no int32 quirks.

    q = clamp(round_half_even(f32(x * f32(1 / S))) + Z, qmin, qmax).
    """
    x = _check_input(x)
    scale = check_scale(scale)
    if not qmin <= zero_point <= qmax:
        raise BadInputError(f"zero_point={zero_point} is outside [qmin, qmax] = [{qmin}, {qmax}].")
    rounded = torch.round(x * (1 / _f32(scale)))
    return (rounded.double() + zero_point).clamp(qmin, qmax).to(torch.int64)


def check_same_shape(a, b, what: str, names: tuple[str, str] = ("a", "b")) -> None:
    """Two tensors of one shape, element for element, else BadInputError: the metrics comparing two
    tensors (sqnr_db, fusion.max_abs_difference) would otherwise broadcast them in silence."""
    from .errors import BadInputError, kind_of

    for name, value in zip(names, (a, b)):
        if not isinstance(value, torch.Tensor) or value.is_complex() or value.is_quantized:
            raise BadInputError(f"{what} compares two real tensors, and {name} is {kind_of(value)}. Pass tensors "
                                "(torch.as_tensor(...); .dequantize() a quantized one).")
    if a.shape != b.shape:
        raise BadInputError(f"{what} compares {names[0]} {tuple(a.shape)} with {names[1]} {tuple(b.shape)} element "
                            "for element, but their shapes differ (torch would broadcast them in silence and "
                            "compare unrelated elements). Pass two tensors of the same shape.")
    if a.numel() == 0:
        raise BadInputError(f"{what} of two empty tensors {tuple(a.shape)} is undefined. Pass at least one element.")


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum(ref^2) / sum((ref - approx)^2))."""
    check_same_shape(reference, approximation, "sqnr_db", ("reference", "approximation"))
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def fake_quantize(x, scale, zero_point, dtype=torch.quint8) -> torch.Tensor:
    """dequantize(quantize(x)): x snapped to the quantization grid (and clipped to its range)."""
    return dequantize(quantize(x, scale, zero_point, dtype), scale, zero_point, dtype)
