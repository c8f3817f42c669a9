"""Notebook 02: the observers' range rules and per-channel weight qparams."""

from __future__ import annotations

import math

import torch

from .core import _ZERO_POINTS_ARE_INTEGERS, _call_learner, _checker, _read_number, _read_pair, _read_tensor, report


@_checker("fn: your function fn(batches, c), returning a pair (min, max) of numbers")
def check_moving_average(fn, averaging_constant: float = 0.01) -> bool:
    """Does fn(batches, c) return the (min, max) MovingAverageMinMaxObserver ends with?

    Bit for bit, in any form holding the two numbers (tuple, list, tensor of two, Python floats):
    the exercise is to reproduce the observer's float32 arithmetic, so a float64 result counts
    only if it equals the float32 one exactly.
    """
    from torch.ao.quantization import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    batches = [torch.randn(64) * (1 + i) + i for i in range(5)]
    observer = MovingAverageMinMaxObserver(averaging_constant=averaging_constant)
    for batch in batches:
        observer(batch)
    expected = (float(observer.min_val), float(observer.max_val))
    lo, hi = _read_pair(_call_learner(fn, [b.clone() for b in batches], averaging_constant),
                        "your function returned")
    got = (_read_number(lo, "the min (the first value returned)"),
           _read_number(hi, "the max (the second value returned)"))
    if got == expected:
        return report(True, f"(min, max) = ({expected[0]:.6g}, {expected[1]:.6g}), as the observer computes.")
    close = all(math.isclose(g, e, rel_tol=1e-5) for g, e in zip(got, expected))
    hint = ("nearly there: compute in float32 tensors (torch.aminmax, then min + c * (cur - min)), as the "
            "observer does, to match bit for bit." if close else
            "the first batch sets min and max; each later batch moves them: min <- min + c * (batch_min - min).")
    return report(False, "", f"got {got}, the observer has {expected}.", hint)


@_checker("scales: one positive number per output channel (a tensor or list); zero_points: one integer "
          "per output channel")
def check_per_channel_qparams(scales, zero_points, weight: torch.Tensor) -> bool:
    """Are these the per-channel (axis 0) symmetric qint8 qparams of x86's weight observer?

    Judged by value in any shape holding one value per channel: scales of any float dtype but
    float16 / bfloat16 (too few digits to match to 1e-6), zero points with integer values.
    """
    from torch.ao.quantization import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight.detach())
    expected_s, expected_z = (v.to(torch.float64) for v in observer.calculate_qparams())
    channels = weight.shape[0]
    scales = _read_tensor(scales, "scales is", f"{channels} scales, one per output channel").flatten()
    zero_points = _read_tensor(zero_points, "zero_points is", f"{channels} integer zero points", integers=True,
                               hint=_ZERO_POINTS_ARE_INTEGERS).flatten()
    if scales.numel() != channels or zero_points.numel() != channels:
        return report(False, "", f"expected one scale and one zero point per output channel ({channels}), "
                      f"got {scales.numel()} and {zero_points.numel()}.", "reduce over every axis but 0.")
    if not torch.equal(zero_points.to(torch.float64), expected_z):
        return report(False, "", "the zero points differ.", "symmetric qint8 puts every zero point at 0.")
    differs = ~torch.isclose(scales.to(torch.float64), expected_s, rtol=1e-6, atol=0)
    if differs.any():
        c = int(differs.nonzero()[0])
        return report(False, "", f"{int(differs.sum())} of {channels} scales differ; channel {c}: "
                      f"{scales[c].item():.6g} vs {expected_s[c].item():.6g}.",
                      "per channel: S_c = max(|min_c|, |max_c|) / 127.5 (qmax - qmin = 255, halved).")
    return report(True, f"all {channels} scales and zero points equal PerChannelMinMaxObserver's.")
