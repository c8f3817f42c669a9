"""Notebook 09: fake quantization and its straight-through gradient."""

from __future__ import annotations

import torch

from .core import _call_learner, _checker, _read_tensor, _require_shape, report


def _fake_quantize_cases():
    """(label, x, scale, zero_point, quant_min, quant_max): the cases a fake quantizer must get exactly."""
    torch.manual_seed(0)
    edge = torch.tensor([-0.6, -0.5, -0.4, 0.0, 0.4, 0.5, 0.6])
    return [
        ("ordinary values, 8-bit range", torch.randn(2000) * 2, 0.02, 3, -128, 127),
        # x = -43.845 is a near-tie at the lower edge: round(x * (1 / S)) = -119 (clipped), round(x / S) = -118
        ("near-ties with an inexact inverse scale (x / S close to k + 0.5, S = 0.37)",
         (torch.arange(-120, 120) + 0.5) * 0.37, 0.37, 0, -118, 127),
        ("exact ties (x / S = k + 0.5)", (torch.arange(-40, 40) + 0.5) * 0.25, 0.25, 1, 0, 255),
        ("values beyond a 4-bit range", torch.linspace(-3, 3, 241), 0.1, 0, -8, 7),
        ("values within half a step of the edges", torch.cat([(edge - 8) * 0.1, (edge + 7) * 0.1]), 0.1, 0, -8, 7),
    ]


def _torch_fake_quantize(x, scale, zero_point, quant_min, quant_max, grad_output=None):
    """torch's fake quantization of x, and the gradient it sends back for `grad_output`."""
    x = x.clone().requires_grad_(True)
    y = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    y.backward(torch.ones_like(y) if grad_output is None else grad_output)
    return y.detach(), x.grad


def _read_real_result(got, label: str, x: torch.Tensor, what: str) -> torch.Tensor:
    subject = f"on {label}, your function returned"
    tensor = _read_tensor(got, subject, f"a float tensor of shape {tuple(x.shape)} ({what})")
    _require_shape(tensor, got, x.shape, subject)
    return tensor


@_checker("fn: your function fn(x, scale, zero_point, quant_min, quant_max), returning a float tensor shaped like x")
def check_fake_quantize(fn) -> bool:
    """Does fn(x, scale, zero_point, quant_min, quant_max) equal torch.fake_quantize_per_tensor_affine
    bit for bit (torch.equal once both are float32)?

    A float64 answer counts only if it holds exactly the float32 values; an integer answer is refused
    (fake quantization returns reals on the grid, not the integers).
    """
    for label, x, scale, zero_point, qmin, qmax in _fake_quantize_cases():
        expected, _ = _torch_fake_quantize(x, scale, zero_point, qmin, qmax)
        got = _read_real_result(_call_learner(fn, x.clone(), scale, zero_point, qmin, qmax), label, x,
                                "the dequantized values")
        if not got.is_floating_point():
            return report(False, "", f"on {label}, your function returned integers ({got.dtype}).",
                          "that is the quantize half: dequantize them, (q - zero_point) * scale.")
        if torch.equal(got.to(torch.float64), expected.to(torch.float64)):
            continue
        wrong = got.to(torch.float64) != expected.to(torch.float64)
        i = int(wrong.nonzero()[0])
        _, passed = _torch_fake_quantize(x, scale, zero_point, qmin, qmax)
        if not bool(passed[wrong].any()):  # wrong only where torch clips
            hint = f"clamp the integers to [quant_min, quant_max] = [{qmin}, {qmax}] before dequantizing."
        elif label.startswith("exact ties"):
            hint = "round half to even (torch.round), and add the zero point after rounding, not before."
        elif label.startswith("near-ties"):
            hint = ("torch multiplies by the inverse of the scale, round(x * (1 / scale)), not x / scale: near a "
                    "tie the two round to different integers.")
        else:
            hint = ("q = clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max), then (q - zero_point) "
                    "* scale.")
        return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} values differ; e.g. x = "
                      f"{x[i].item():.7g} (S = {scale}, Z = {zero_point}, range [{qmin}, {qmax}]) gives "
                      f"{got[i].item():.7g}, torch gives {expected[i].item():.7g}.", hint)
    return report(True, "your fake quantization equals torch.fake_quantize_per_tensor_affine bit for bit, on "
                  "ordinary values, exact ties, an inexact inverse scale and values beyond a 4-bit range.")


@_checker("fn: your function fn(grad_output, x, scale, zero_point, quant_min, quant_max), returning a float "
          "tensor shaped like x")
def check_ste_gradient(fn) -> bool:
    """Does fn(grad_output, x, scale, zero_point, quant_min, quant_max) return the gradient that
    torch.fake_quantize_per_tensor_affine sends back to x (the straight-through estimator)? Exactly.
    """
    for label, x, scale, zero_point, qmin, qmax in _fake_quantize_cases():
        grad_output = torch.rand_like(x) + 0.5
        _, expected = _torch_fake_quantize(x, scale, zero_point, qmin, qmax, grad_output)
        got = _read_real_result(_call_learner(fn, grad_output.clone(), x.clone(), scale, zero_point, qmin, qmax),
                                label, x, "the gradient with respect to x")
        if torch.equal(got.to(torch.float64), expected.to(torch.float64)):
            continue
        wrong = got.to(torch.float64) != expected.to(torch.float64)
        i = int(wrong.nonzero()[0])
        lo, hi = scale * (qmin - zero_point), scale * (qmax - zero_point)
        beyond = (x < lo) | (x > hi)
        if bool((got == 0).all()):
            hint = ("the true derivative of round() is 0 almost everywhere, which is why training would stall; the "
                    "straight-through estimator passes grad_output through where x was not clipped.")
        elif torch.equal(got.to(torch.float64), (expected != 0).to(torch.float64)):
            hint = "that is the mask; the gradient is grad_output times it (the chain rule)."
        elif torch.equal(got.to(torch.float64), grad_output.to(torch.float64)):
            hint = "where x was clipped (beyond quant_min or quant_max) the output is constant: the gradient is 0 there."
        elif label.startswith("near-ties"):
            hint = ("decide on the integer torch computes, round(x * (1 / scale)) + zero_point, not x / scale: near "
                    "a tie at the edge of the range the two round to different integers, one of them clipped.")
        elif bool(beyond[wrong].all()):
            hint = ("a value is clipped only if its rounded integer round(x * (1 / scale)) + zero_point falls outside "
                    "[quant_min, quant_max]: values within half a step beyond the edge round onto it and keep "
                    "their gradient.")
        else:
            hint = "inside the range the gradient is grad_output itself (round() is treated as the identity)."
        return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} gradients differ; e.g. x = "
                      f"{x[i].item():.7g} (S = {scale}, Z = {zero_point}, range [{qmin}, {qmax}]) gets "
                      f"{got[i].item():.7g}, torch gives {expected[i].item():.7g}.", hint)
    return report(True, "your gradient equals the one torch.fake_quantize_per_tensor_affine sends back: grad_output "
                  "where the value was inside the grid's range, 0 where it was clipped.")


# --- notebook 10: per-layer SQNR and float islands --------------------------------------------------
