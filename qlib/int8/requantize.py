"""From an int32 accumulator to uint8: each engine's float32 requantization, step by step.

After the exact integer sum (integer.py), every CPU engine of PyTorch leaves integers: it
multiplies by the real multiplier M = S_x * S_w / S_out in float32, adds a bias, rounds half to
even, adds the output zero point and clamps (a fused ReLU raises the floor to the zero point).
The engines differ in where the bias enters, in which order the float32 products are rounded,
and whether the zero point is added before or after rounding: differences of one step, now and
then, which is why `int8.run` follows the engine the model was converted under. Notebook 08,
section 4 puts them side by side; fixedpoint.py is the paper's integer-only alternative.
"""

from __future__ import annotations

import torch

F32 = torch.float32


def f32(value) -> torch.Tensor:
    """A float32 scalar tensor: every float step below rounds to float32, as the C++ does."""
    return torch.as_tensor(value, dtype=torch.float64).to(F32)


def rne(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (nearbyint / cvtps2dq); stays float32 (integer values) for speed."""
    return torch.round(x)


def per_channel(v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Per-output-channel values shaped to broadcast against acc ([N, OC] or [N, OC, H, W])."""
    return v.view(-1, *([1] * (acc.dim() - 2)))


def requantize_fbgemm(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights,
                      bias_by_reciprocal=None) -> torch.Tensor:
    """fbgemm's ReQuantizeOutput: float bias added to the accumulator in units of in_s*w_s.

    With per-tensor weights, the kernel multiplies the bias by f32(1 / ats) instead of dividing
    by ats (`bias_by_reciprocal`, default: per-tensor weights); the two differ in the last bit
    now and then.
    """
    ats = f32(in_s) * w_s.to(F32)                      # act_times_w_scale per output channel
    mult = ats / f32(out_s)
    raw = acc.to(F32)                                  # int32 -> float32 (cvtepi32_ps)
    if bias is not None:
        reciprocal = not per_channel_weights if bias_by_reciprocal is None else bias_by_reciprocal
        b = bias.to(F32) * (f32(1.0) / ats) if reciprocal else bias.to(F32) / ats
        raw += per_channel(b, acc)
    raw *= per_channel(mult, acc)
    return rne(raw).add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_qnnpack(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights=True) -> torch.Tensor:
    """QNNPACK: bias rounded to int32 (scale in_s*w_s), then one float multiplier."""
    if bias is not None:
        bq = rne(bias.to(F32) * (f32(1.0) / (w_s.to(F32) * f32(in_s)))).to(torch.int32)
        acc = acc + per_channel(bq, acc)
    req = (w_s.to(F32) * f32(in_s)) * (f32(1.0) / f32(out_s))
    raw = acc.to(F32).mul_(per_channel(req, acc))
    return rne(raw).add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_onednn(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights=True,
                      scales="combined") -> torch.Tensor:
    """oneDNN: scale the accumulator to real units, add the float bias, ReLU, then the zero point.

    PyTorch hands oneDNN the reciprocals of the scales (hence the double reciprocal below).
    `scales="combined"` (jit and AMX kernels) multiplies once by f32(s_in * s_w);
    `"one_by_one"` (brgemm kernels with VNNI) multiplies by s_in, then by s_w: the rounding
    after the first product moves an output by one step now and then.
    """
    s = f32(1.0) / f32(1.0 / in_s)
    if scales == "one_by_one":
        t = acc.to(F32).mul_(s).mul_(per_channel(w_s.to(F32), acc))
    else:
        t = acc.to(F32).mul_(per_channel(s * w_s.to(F32), acc))
    if bias is not None:
        t += per_channel(bias.to(F32), acc)
    if relu:
        t.clamp_min_(0)
    d = f32(1.0) / (f32(1.0) / f32(1.0 / out_s))
    return rne(t.mul_(d).add_(f32(out_zp))).clamp_(out_zp if relu else 0, 255)


# The three formulas by engine name, for tables that put them side by side (notebook 08).
REQUANTIZE = {"fbgemm": requantize_fbgemm, "qnnpack": requantize_qnnpack, "onednn": requantize_onednn}
