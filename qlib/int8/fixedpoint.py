"""Integer-only requantization, as Jacob et al. (2018), gemmlowp and TFLite do it.

PyTorch's CPU engines requantize in float32 (requantize.py). The paper instead writes the real
multiplier M = S_x * S_w / S_out as M0 * 2**-n with M0 an int32 in [2**30, 2**31) (Q31), computed
once per layer, and applies it with two integer primitives: a rounding "doubling high multiply"
and a rounding right shift. `Interpreter(qmodel, requant="fixedpoint")` runs every op this way
(no float tensor is created between QuantStub and DeQuantStub, and a guard checks it); notebook 08,
section 5 measures what it changes against PyTorch.

None of this is a PyTorch CPU kernel; the primitives are gemmlowp's, where to read them:
Reproduces: gemmlowp: fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul).
Reproduces: gemmlowp: fixedpoint/fixedpoint.h (RoundingDivideByPOT).
Reproduces: gemmlowp: internal/output.h
    (OutputStageEvalBufferImpl<OutputStageScaleInt32ByFixedPointAndExponent>::Eval).
"""

from __future__ import annotations

import math

import torch

from ..errors import BadInputError

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
ADD_LEFT_SHIFT = 20  # TFLite's integer add: both inputs scaled up by 2**20 before summing


# --- the primitives ---------------------------------------------------------------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """M = M0 * 2**-shift with M0 an int32 Q31 value in [2**30, 2**31): (M0, shift).

    Done once per layer, offline: float is fine here, never at inference time.

    Reproduces: gemmlowp: doc/quantization_example.cc (QuantizeMultiplierSmallerThanOne).
    (in float64 rather than float32, and for M >= 1 too: then the shift is negative)
    """
    if not real > 0 or math.isinf(real):
        raise BadInputError(f"requantization multiplier must be a positive finite number, got {real}")
    mantissa, exponent = math.frexp(real)              # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * (1 << 31))
    if m0 == 1 << 31:
        m0, exponent = m0 // 2, exponent + 1
    return m0, -exponent


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul: round(a * b / 2**31), int32 semantics.

    Reproduces: gemmlowp: fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul).
    """
    a = a.to(torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64)
    ab = a * b
    nudge = torch.where(ab >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    total = ab + nudge
    result = torch.div(total, 1 << 31, rounding_mode="trunc")   # C++ integer division
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, torch.tensor(INT32_MAX), result)


def rounding_divide_by_pot(x: torch.Tensor, exponent) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded half away from zero.

    Reproduces: gemmlowp: fixedpoint/fixedpoint.h (RoundingDivideByPOT).
    """
    x = x.to(torch.int64)
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(x: torch.Tensor, m0, shift) -> torch.Tensor:
    """x * M for M = M0 * 2**-shift, integers only (a negative shift is a left shift first).

    Reproduces: gemmlowp: internal/output.h
        (OutputStageEvalBufferImpl<OutputStageScaleInt32ByFixedPointAndExponent>::Eval).
    (the left shift saturates to int32, as gemmlowp's ShiftLeft does)
    """
    m0 = torch.as_tensor(m0, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0)
    x = (x.to(torch.int64) << left).clamp(INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m0), right)


# --- conv / linear -------------------------------------------------------------------------------------


def fixedpoint_constants(in_s: float, w_s: torch.Tensor, bias, out_s: float):
    """Offline, once per layer: the int32 bias (scale in_s*w_s, zero point 0) and, per output
    channel, M = in_s * w_s / out_s as (M0, shift). Float is fine here, not at inference.

    Course helper: the offline constants of the integer-only path (no PyTorch kernel computes them).
    """
    scales = [in_s * s for s in w_s.tolist()]
    bq = None if bias is None else torch.tensor([round(b / a) for b, a in zip(bias.tolist(), scales)])
    multipliers = [quantize_multiplier(a / out_s) for a in scales]
    return bq, torch.tensor([m for m, _ in multipliers]), torch.tensor([n for _, n in multipliers])


def requantize_fixedpoint(acc, constants, out_zp, relu) -> torch.Tensor:
    """Integer-only: acc + int32 bias, times M0 / 2**31 (rounded), >> shift (rounded), + zp, clamp.

    Reproduces: gemmlowp: internal/output.h
        (OutputStageEvalImpl<OutputStageScaleInt32ByFixedPointAndExponentPC>::Eval).
    """
    bq, m0, shift = constants
    acc = acc.to(torch.int64)
    shape = (-1, *([1] * (acc.dim() - 2)))
    if bq is not None:
        acc = acc + bq.view(shape)
    q = multiply_by_quantized_multiplier(acc, m0.view(shape), shift.view(shape)) + out_zp
    return q.clamp(out_zp if relu else 0, 255)


# --- ops without weights -----------------------------------------------------------------------------------


def requantize_values(q, s_in, z_in, s, z, relu=False) -> torch.Tensor:
    """Move int8 values to another scale and zero point: z + (q - z_in) * M, integers only.

    Course helper: the integer-only counterpart of ATen's dequantize-requantize (cat, pooling).
    """
    m0, shift = quantize_multiplier(s_in / s)
    return (multiply_by_quantized_multiplier(q.to(torch.int64) - z_in, m0, shift) + z).clamp(z if relu else 0, 255)


def add_fixedpoint(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """TFLite's integer add: both inputs scaled up by 2**20 onto a common scale, summed, requantized.

    Course helper: TFLite's integer add scheme, not a PyTorch kernel (its primitives are gemmlowp's).
    """
    twice_max = 2 * max(sa, sb)
    ma, na = quantize_multiplier(sa / twice_max)
    mb, nb = quantize_multiplier(sb / twice_max)
    mo, no = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s))
    a_scaled = multiply_by_quantized_multiplier((a.to(torch.int64) - za) << ADD_LEFT_SHIFT, ma, na)
    b_scaled = multiply_by_quantized_multiplier((b.to(torch.int64) - zb) << ADD_LEFT_SHIFT, mb, nb)
    q = multiply_by_quantized_multiplier(a_scaled + b_scaled, mo, no) + z
    return q.clamp(z if relu else 0, 255)


def mul_fixedpoint(a, sa, za, b, sb, zb, s, z, relu) -> torch.Tensor:
    """Integer mul: exact product of the centred values, times M = sa*sb/s in fixed point.

    Course helper: integer-only mul; PyTorch's qmul_kernel applies a float32 multiplier instead.
    """
    m0, shift = quantize_multiplier(sa * sb / s)
    q = multiply_by_quantized_multiplier((a.to(torch.int64) - za) * (b.to(torch.int64) - zb), m0, shift) + z
    return q.clamp(z if relu else 0, 255)


def divide_fixedpoint(acc, divisor, ratio: float = 1.0) -> torch.Tensor:
    """acc * ratio / divisor with integer multipliers (one per distinct divisor): average pooling.

    Course helper: integer-only average pooling; PyTorch's pooling kernels multiply in float32.
    """
    divisor = torch.as_tensor(divisor).expand_as(acc)
    m0 = torch.empty_like(acc, dtype=torch.int64)
    shift = torch.empty_like(acc, dtype=torch.int64)
    for d in torch.unique(divisor).tolist():
        mm, nn_ = quantize_multiplier(ratio / d)
        m0[divisor == d], shift[divisor == d] = mm, nn_
    return multiply_by_quantized_multiplier(acc, m0, shift)
