"""Exercise checkers: compare a learner's answer with what PyTorch computes, and say what is off.

Each check_* function prints "Correct!" or what differs plus a hint, and returns True / False so
that the instructor notebook can `assert` it. One small function per exercise; all share `report`.
"""

from __future__ import annotations

import math

import torch

from . import qmath


def report(ok: bool, success: str, problem: str = "", hint: str = "") -> bool:
    """Print the verdict of a check; returns `ok`."""
    if ok:
        print(f"Correct! {success}")
    else:
        print(f"Not yet: {problem}")
        if hint:
            print(f"Hint: {hint}")
    return ok


def _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range):
    from torch.ao.quantization import MinMaxObserver

    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    observer = MinMaxObserver(dtype=dtype, qscheme=scheme, reduce_range=reduce_range)
    observer(torch.tensor([xmin, xmax], dtype=torch.float32))
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


def check_qparams(scale, zero_point, xmin, xmax, dtype=torch.quint8, symmetric=False,
                  reduce_range=False) -> bool:
    """Is (scale, zero_point) what MinMaxObserver chooses for data spanning [xmin, xmax]?"""
    expected_scale, expected_zp = _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range)
    setting = (f"{'symmetric' if symmetric else 'affine'} {str(dtype).split('.')[-1]}"
               f"{', reduce_range' if reduce_range else ''}")
    qmin, qmax = qmath.qrange(dtype, reduce_range)
    if scale is None or zero_point is None:
        return report(False, "", "scale or zero_point is still None.", "compute both from xmin and xmax.")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        return report(False, "", f"scale should be a number, not {scale!r}.")
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
        if not isinstance(zero_point, int):
            hint = "the zero point must be an integer (int), so that 0.0 is represented exactly. " + hint
        return report(False, "", f"zero point {zero_point!r} differs from the observer's {expected_zp}.", hint)
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
    ]


def check_quantize(fn, dtype=torch.qint8) -> bool:
    """Does fn(x, scale, zero_point) return torch.quantize_per_tensor(...).int_repr()'s integers?"""
    for label, x, scale, zero_point in _quantize_cases(dtype):
        expected = torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()
        try:
            got = fn(x.clone(), scale, zero_point)
        except NotImplementedError:
            return report(False, "", "the function is not written yet (it raises NotImplementedError).")
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            return report(False, "", f"on {label}: expected a tensor of shape {tuple(x.shape)}, got "
                          f"{type(got).__name__}{'' if not isinstance(got, torch.Tensor) else tuple(got.shape)}.")
        if got.is_floating_point():
            return report(False, "", f"on {label}: the result is a float tensor ({got.dtype}).",
                          f"convert it to integers, e.g. .to({expected.dtype}) after clamping.")
        wrong = got.to(torch.int64) != expected.to(torch.int64)
        if wrong.any():
            i = int(wrong.nonzero()[0])
            hint = {
                "exact ties (x / S = k + 0.5)": "round x / S half to even (torch.round) and add the zero "
                                                "point after rounding, not before.",
                "values beyond the range": f"clamp to [{qmath.QRANGES[dtype][0]}, {qmath.QRANGES[dtype][1]}].",
            }.get(label, "q = clamp(round(x * (1 / S)) + Z, qmin, qmax), computed in float32.")
            return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} values differ; e.g. "
                          f"x = {x[i].item():.6g} (S = {scale}, Z = {zero_point}) gives {int(got[i])}, "
                          f"torch gives {int(expected[i])}.", hint)
    return report(True, f"your quantize equals torch.quantize_per_tensor(..., {dtype}) bit for bit "
                  "on ordinary values, exact ties and out-of-range values.")


def check_moving_average(fn, averaging_constant: float = 0.01) -> bool:
    """Does fn(batches, c) return the (min, max) MovingAverageMinMaxObserver ends with?"""
    from torch.ao.quantization import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    batches = [torch.randn(64) * (1 + i) + i for i in range(5)]
    observer = MovingAverageMinMaxObserver(averaging_constant=averaging_constant)
    for batch in batches:
        observer(batch)
    expected = (float(observer.min_val), float(observer.max_val))
    try:
        got = fn([b.clone() for b in batches], averaging_constant)
        got = (float(got[0]), float(got[1]))
    except NotImplementedError:
        return report(False, "", "the function is not written yet (it raises NotImplementedError).")
    except (TypeError, IndexError, ValueError):
        return report(False, "", "fn(batches, c) should return a pair (min, max) of numbers.")
    if got == expected:
        return report(True, f"(min, max) = ({expected[0]:.6g}, {expected[1]:.6g}), as the observer computes.")
    close = all(math.isclose(g, e, rel_tol=1e-5) for g, e in zip(got, expected))
    hint = ("nearly there: compute in float32 tensors (torch.aminmax, then min + c * (cur - min)), as the "
            "observer does, to match bit for bit." if close else
            "the first batch sets min and max; each later batch moves them: min <- min + c * (batch_min - min).")
    return report(False, "", f"got {got}, the observer has {expected}.", hint)


def check_per_channel_qparams(scales, zero_points, weight: torch.Tensor) -> bool:
    """Are these the per-channel (axis 0) symmetric qint8 qparams of x86's weight observer?"""
    from torch.ao.quantization import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight.detach())
    expected_s, expected_z = observer.calculate_qparams()
    try:
        scales = torch.as_tensor(scales, dtype=torch.float32).flatten()
        zero_points = torch.as_tensor(zero_points).flatten()
    except (TypeError, ValueError, RuntimeError):
        return report(False, "", "scales and zero_points should be tensors (or lists) of numbers.")
    channels = weight.shape[0]
    if scales.numel() != channels or zero_points.numel() != channels:
        return report(False, "", f"expected one scale and one zero point per output channel ({channels}), "
                      f"got {scales.numel()} and {zero_points.numel()}.", "reduce over every axis but 0.")
    if not torch.equal(zero_points.to(torch.int64), expected_z.to(torch.int64)):
        return report(False, "", "the zero points differ.", "symmetric qint8 puts every zero point at 0.")
    if not torch.allclose(scales, expected_s, rtol=1e-6, atol=0):
        c = int((~torch.isclose(scales, expected_s, rtol=1e-6, atol=0)).nonzero()[0])
        return report(False, "", f"{int((~torch.isclose(scales, expected_s, rtol=1e-6, atol=0)).sum())} of "
                      f"{channels} scales differ; channel {c}: {scales[c].item():.6g} vs {expected_s[c].item():.6g}.",
                      "per channel: S_c = max(|min_c|, |max_c|) / 127.5 (qmax - qmin = 255, halved).")
    return report(True, f"all {channels} scales and zero points equal PerChannelMinMaxObserver's.")


def check_folded_conv(weight, bias, conv, bn, rtol: float = 1e-5) -> bool:
    """Are (weight, bias) the Conv+BN folding of `bn(conv(.))` (eval mode), as qlib.fusion.fold_bn gives?"""
    from .fusion import fold_bn

    expected = fold_bn(conv, bn)
    for name, got, want in (("weight", weight, expected.weight.detach()), ("bias", bias, expected.bias.detach())):
        if not isinstance(got, torch.Tensor):
            return report(False, "", f"{name} should be a tensor, not {type(got).__name__}.")
        got = got.detach()
        if got.shape != want.shape:
            hint = ("gamma / sqrt(var + eps) has one value per output channel: reshape it to (-1, 1, 1, 1) "
                    "to scale each filter." if name == "weight" else "the bias has one value per output channel.")
            return report(False, "", f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}.", hint)
        if not torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max())):
            error = (got - want).abs()
            channel = int(error.flatten(1).amax(1).argmax()) if error.dim() > 1 else int(error.argmax())
            hint = ("w' = w * gamma / sqrt(running_var + eps): the square root of the variance plus eps."
                    if name == "weight" else
                    "b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta, with b = 0 for a "
                    "conv without bias.")
            return report(False, "", f"{name} differs from the folded one, first at output channel {channel}.", hint)
    return report(True, "The folded convolution equals BN(conv(x)) in eval mode.")


def check_layer_qparams(scale, zero_point, qmodel, name: str) -> bool:
    """Are (scale, zero_point) the output qparams of module `name` of the converted `qmodel`?"""
    module = qmodel.get_submodule(name)
    want_scale, want_zero_point = float(module.scale), int(module.zero_point)
    try:
        scale, zero_point = float(scale), int(zero_point)
    except (TypeError, ValueError):
        return report(False, "", "scale and zero_point should be numbers.")
    if scale != want_scale:
        return report(False, "", f"{scale} is not the output scale of {name}.",
                      f"a converted module keeps its output's scale as an attribute: model.{name}.scale")
    if zero_point != want_zero_point:
        return report(False, "", f"{zero_point} is not the output zero point of {name}.",
                      f"look at model.{name}.zero_point; after a ReLU it is 0, for logits it is not.")
    return report(True, f"{name} writes its output with scale {scale:.6g} and zero point {zero_point}.")
