"""Notebook 01: scale / zero point from a range, and quantize written by hand."""

from __future__ import annotations

import math

import torch

from .. import qmath
from .core import _NotYet, _call_learner, _checker, _read_number, _read_tensor, _read_zero_point, _require_shape, report


def _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range):
    from torch.ao.quantization import MinMaxObserver

    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    observer = MinMaxObserver(dtype=dtype, qscheme=scheme, reduce_range=reduce_range)
    observer(torch.tensor([xmin, xmax], dtype=torch.float32))
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


@_checker("scale: one finite number (a float or a one-element tensor); zero_point: one integer")
def check_qparams(scale, zero_point, xmin, xmax, dtype=torch.quint8, symmetric=False,
                  reduce_range=False) -> bool:
    """Is (scale, zero_point) what MinMaxObserver chooses for data spanning [xmin, xmax]?

    Judged by value: a scale of any float dtype within 1e-6 (relative), a zero point with an
    integer value in any form (3, 3.0, torch.tensor(3)); a non-integer zero point is refused.
    """
    expected_scale, expected_zp = _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range)
    setting = (f"{'symmetric' if symmetric else 'affine'} {str(dtype).split('.')[-1]}"
               f"{', reduce_range' if reduce_range else ''}")
    qmin, qmax = qmath.qrange(dtype, reduce_range)
    scale, zero_point = _read_number(scale, "scale"), _read_zero_point(zero_point)
    if not math.isclose(scale, expected_scale, rel_tol=1e-6):
        hint = (f"the range is first widened to include 0; then S = (max - min) / (qmax - qmin) with "
                f"[qmin, qmax] = [{qmin}, {qmax}].")
        if symmetric:
            hint = (f"symmetric: S = max(|min|, |max|) / ((qmax - qmin) / 2) with [qmin, qmax] = "
                    f"[{qmin}, {qmax}].")
        return report(False, "", f"scale {scale:.8g} differs from the observer's {expected_scale:.8g} "
                      f"({setting}).", hint)
    if zero_point != expected_zp:
        hint = ("symmetric: Z sits in the middle of the integers (0 for qint8, 128 for quint8)."
                if symmetric else
                f"Z = qmin - round(min / S), with round half to even (torch.round), clamped to [{qmin}, {qmax}].")
        return report(False, "", f"zero point {zero_point} differs from the observer's {expected_zp}.", hint)
    return report(True, f"S = {expected_scale:.8g}, Z = {expected_zp}, as MinMaxObserver ({setting}) computes.")


def _quantize_cases(dtype):
    qmin, qmax, _ = qmath.QRANGES[dtype]
    torch.manual_seed(0)
    scale = 0.05
    middle = 0 if qmin < 0 else 128
    return [
        ("ordinary values", torch.randn(1000), 0.02, min(max(3, qmin), qmax)),
        ("exact ties (x / S = k + 0.5)", (torch.arange(-20, 20) + 0.5) * 0.25, 0.25, 1 if qmin == 0 else -3),
        ("values beyond the range", torch.linspace(-1000, 1000, 101), scale, middle),
        ("zero point at the bottom of the range", torch.randn(100), 0.01, qmin),
        ("near-ties, where x / S and x * (1 / S) round apart", _near_ties(0.02), 0.02, middle),
    ]


def _near_ties(scale: float) -> torch.Tensor:
    """float32 neighbours of (k + 0.5) * S: dividing by S rounds some of them to the other
    integer than torch's multiply by 1 / S does (e.g. x = 1.4699999 at S = 0.02: 74 vs 73)."""
    ties = (torch.arange(-100, 100, dtype=torch.float32) + 0.5) * scale
    below, above = torch.nextafter(ties, ties - 1), torch.nextafter(ties, ties + 1)
    return torch.cat([ties, below, above])


def _read_quantized_integers(got, label: str, x: torch.Tensor, dtype) -> torch.Tensor:
    """The integers fn returned on one case, or a refusal: not a tensor of x's shape, floats
    (even integral ones: the exercise is to return integers, as .int_repr() does), or an integer
    dtype too narrow for [qmin, qmax]."""
    qmin, qmax, int_dtype = qmath.QRANGES[dtype]
    subject = f"on {label}, you returned"
    tensor = _read_tensor(got, subject, f"an integer tensor of shape {tuple(x.shape)}", integers=True,
                          hint="round x / S with torch.round before adding the zero point.")
    _require_shape(tensor, got, x.shape, subject)
    if tensor.is_floating_point():
        raise _NotYet(f"{subject} a float tensor ({tensor.dtype}).",
                      f"convert it to integers, e.g. .to({int_dtype}) after clamping.")
    if torch.iinfo(tensor.dtype).min > qmin or torch.iinfo(tensor.dtype).max < qmax:
        raise _NotYet(f"{subject} a {tensor.dtype} tensor, which cannot hold {dtype}'s range [{qmin}, {qmax}].",
                      f"convert with .to({int_dtype}) after clamping.")
    return tensor


@_checker("fn: your function fn(x, scale, zero_point), returning an integer tensor shaped like x")
def check_quantize(fn, dtype=torch.qint8) -> bool:
    """Does fn(x, scale, zero_point) return torch.quantize_per_tensor(...).int_repr()'s integers?

    Judged by value in any integer dtype wide enough for [qmin, qmax] (a list of ints too); float
    results are refused: the exercise is to produce the integers.
    """
    for label, x, scale, zero_point in _quantize_cases(dtype):
        expected = torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()
        got = _read_quantized_integers(_call_learner(fn, x.clone(), scale, zero_point), label, x, dtype)
        wrong = got.to(torch.int64) != expected.to(torch.int64)
        if wrong.any():
            i = int(wrong.nonzero()[0])
            hint = {
                "exact ties (x / S = k + 0.5)": "round x / S half to even (torch.round) and add the zero "
                                                "point after rounding, not before.",
                "near-ties, where x / S and x * (1 / S) round apart": "torch multiplies by the float32 "
                    "inverse 1 / S instead of dividing by S; the two round apart on a few values.",
                "values beyond the range": f"clamp to [{qmath.QRANGES[dtype][0]}, {qmath.QRANGES[dtype][1]}].",
            }.get(label, "q = clamp(round(x * (1 / S)) + Z, qmin, qmax), computed in float32.")
            return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} values differ; e.g. "
                          f"x = {x[i].item():.6g} (S = {scale}, Z = {zero_point}) gives {int(got[i])}, "
                          f"torch gives {int(expected[i])}.", hint)
    return report(True, f"your quantize equals torch.quantize_per_tensor(..., {dtype}) bit for bit "
                  "on ordinary values, exact ties and out-of-range values.")


def _per_channel_cases():
    """(label, weight, scales, zero_points, dtype): the observer's qparams on two weight shapes,
    then exact ties, values beyond the range and non-zero zero points."""
    from torch.ao.quantization import PerChannelMinMaxObserver

    generator = torch.Generator().manual_seed(0)
    cases = []
    for label, weight in [("a conv weight (8, 3, 3, 3)", torch.randn(8, 3, 3, 3, generator=generator) * 0.2),
                          ("a linear weight (10, 16)", torch.randn(10, 16, generator=generator))]:
        observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        observer(weight)
        scales, zero_points = observer.calculate_qparams()
        cases.append((label, weight, scales, zero_points, torch.qint8))
    scales = torch.tensor([0.25, 0.5, 0.125, 1.0])
    ties = (torch.arange(-6, 6, dtype=torch.float32) + 0.5).repeat(4, 1) * scales[:, None]
    cases.append(("exact ties (w / S_c = k + 0.5)", ties, scales, torch.zeros(4, dtype=torch.int64), torch.qint8))
    wide = torch.linspace(-300, 300, 4 * 25).reshape(4, 25)
    cases.append(("values beyond the range", wide, scales, torch.zeros(4, dtype=torch.int64), torch.qint8))
    cases.append(("non-zero zero points (affine)", ties, scales, torch.tensor([3, -5, 0, 11]), torch.qint8))
    return cases


@_checker("fn: your function fn(weight, scales, zero_points), returning an integer tensor shaped like weight")
def check_quantize_per_channel(fn) -> bool:
    """Does fn(weight, scales, zero_points) return torch.quantize_per_channel(weight, scales,
    zero_points, axis=0, dtype=torch.qint8).int_repr()'s integers, bit for bit?

    Checked on a 4-D conv weight and a 2-D linear weight with PerChannelMinMaxObserver's qparams,
    on exact ties, on values beyond the range and with non-zero zero points.
    """
    for label, weight, scales, zero_points, dtype in _per_channel_cases():
        expected = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, dtype).int_repr()
        got = _call_learner(fn, weight.clone(), scales.clone(), zero_points.clone())
        got = _read_quantized_integers(got, label, weight, dtype)
        wrong = got.to(torch.int64) != expected.to(torch.int64)
        if wrong.any():
            index = tuple(int(i) for i in wrong.nonzero()[0])
            channel = index[0]
            shape = (-1,) + (1,) * (weight.dim() - 1)
            divided = (torch.round(weight / scales.view(shape)) + zero_points.view(shape)).clamp(-128, 127)
            if torch.equal(got.to(torch.int64), divided.to(torch.int64)):
                return report(False, "", f"on {label}: {int(wrong.sum())} of {weight.numel()} values differ from "
                              f"torch's; they are those of round(w / S_c), e.g. w = {weight[index].item():.6g} "
                              f"gives {int(got[index])}, torch gives {int(expected[index])}.",
                              "torch multiplies by the float32 inverse, w * (1 / S_c), computed once per channel; "
                              "w / S_c can round the other way, e.g. at a channel's peak where w / S_c is about "
                              "+-127.5.")
            if bool(((expected[wrong] == -128) | (expected[wrong] == 127)).all()):
                hint = ("torch saturates: clamp to [-128, 127] before converting to int8 (a symmetric scale puts a "
                        "channel's positive peak at w / S_c = 127.5, which rounds to 128).")
                return report(False, "", f"on {label}: {int(wrong.sum())} of {weight.numel()} values differ, all "
                              f"where torch gives -128 or 127; e.g. w = {weight[index].item():.6g} gives "
                              f"{int(got[index])}, torch gives {int(expected[index])}.", hint)
            hint = {
                "exact ties (w / S_c = k + 0.5)": "round half to even (torch.round), in float32, before adding Z_c.",
                "values beyond the range": "clamp to [-128, 127].",
                "non-zero zero points (affine)": "add channel c's zero point Z_c after rounding, broadcast like the "
                                                 "scales.",
            }.get(label, "give every output channel c its own scale: q = clamp(round(w * (1 / S_c)) + Z_c, -128, 127); "
                         "reshape the scales to (C, 1, 1, ...) so that they broadcast along axis 0.")
            return report(False, "", f"on {label}: {int(wrong.sum())} of {weight.numel()} values differ; e.g. at "
                          f"{index} (channel {channel}, S_c = {scales[channel].item():.6g}, Z_c = "
                          f"{int(zero_points[channel])}) w = {weight[index].item():.6g} gives {int(got[index])}, "
                          f"torch gives {int(expected[index])}.", hint)
    return report(True, "your per-channel quantize equals torch.quantize_per_channel(..., axis=0, torch.qint8) bit "
                  "for bit on conv and linear weights, exact ties, out-of-range values and non-zero zero points.")
