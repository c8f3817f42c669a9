"""Notebook 05: Conv + BatchNorm folding."""

from __future__ import annotations

import torch

from .core import _checker, _read_tensor, _require_shape, report


def _folding_hint(name: str, got: torch.Tensor) -> str:
    """The formula for `name`, prefixed by the likely cause when the answer is an integer tensor."""
    hint = ("w' = w * gamma / sqrt(running_var + eps): the square root of the variance plus eps."
            if name == "weight" else
            "b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta, with b = 0 for a "
            "conv without bias.")
    if not got.is_floating_point():
        hint = f"your {name} is an integer tensor ({got.dtype}), but the folded values are fractions. " + hint
    return hint


@_checker("weight and bias: float tensors shaped like the conv's weight and its output channels")
def check_folded_conv(weight, bias, conv, bn, rtol: float = 1e-5) -> bool:
    """Are (weight, bias) the Conv+BN folding of `bn(conv(.))` (eval mode), as qlib.fusion.fold_bn gives?

    Judged by value, to `rtol`: float32 or float64 tensors (or nested lists) of the right shape;
    float16 / bfloat16 are refused (too few digits).
    """
    from ..fusion import fold_bn

    expected = fold_bn(conv, bn)
    for name, answer, want in (("weight", weight, expected.weight.detach()), ("bias", bias, expected.bias.detach())):
        got = _read_tensor(answer, f"{name} is", f"a float tensor of shape {tuple(want.shape)}")
        hint = ("gamma / sqrt(var + eps) has one value per output channel: reshape it to (-1, 1, 1, 1) "
                "to scale each filter." if name == "weight" else "the bias has one value per output channel.")
        _require_shape(got, answer, want.shape, f"{name} is", hint)
        error = (got.to(torch.float64) - want.to(torch.float64)).abs()
        if (error > rtol * (want.abs().to(torch.float64) + float(want.abs().max()))).any():
            channel = int(error.flatten(1).amax(1).argmax()) if error.dim() > 1 else int(error.argmax())
            return report(False, "", f"{name} differs from the folded one, first at output channel {channel}.",
                          _folding_hint(name, got))
    return report(True, "The folded convolution equals BN(conv(x)) in eval mode.")
