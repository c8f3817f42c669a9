"""Notebook 07: reading a converted model's scales and zero points."""

from __future__ import annotations

import math

import torch

from ..errors import kind_of
from .core import _NotYet, _checker, _describe, _read_number, _read_zero_point, report


def _output_qparams(qmodel, name: str) -> tuple[float, int]:
    """The (scale, zero_point) module `name` of a converted model writes its output with."""
    if not isinstance(qmodel, torch.nn.Module):
        raise _NotYet(f"the model is {_describe(qmodel)}; expected the converted model (an nn.Module).")
    try:
        module = qmodel.get_submodule(name)
    except AttributeError:
        raise _NotYet(f"the model has no module named {name!r}.",
                      "names are the dotted paths listed by model.named_modules(), e.g. 'classifier.4'.") from None
    if not hasattr(module, "scale") or not hasattr(module, "zero_point"):
        raise _NotYet(f"model.{name} is {kind_of(module)}, which has no output scale: is the model converted?",
                      "pass the model returned by torch.ao.quantization.convert.")
    return float(module.scale), int(module.zero_point)


@_checker("scale: one number; zero_point: one integer")
def check_layer_qparams(scale, zero_point, qmodel, name: str) -> bool:
    """Are (scale, zero_point) the output qparams of module `name` of the converted `qmodel`?

    Judged by value: a scale equal to the module's up to float32 rounding (1e-6 relative), in any
    form; a zero point with an integer value; a non-integer zero point is refused, never truncated.
    """
    want_scale, want_zero_point = _output_qparams(qmodel, name)
    scale, zero_point = _read_number(scale, "scale"), _read_zero_point(zero_point)
    if not math.isclose(scale, want_scale, rel_tol=1e-6):
        return report(False, "", f"{scale} is not the output scale of {name}.",
                      f"a converted module keeps its output's scale as an attribute: model.{name}.scale")
    if zero_point != want_zero_point:
        return report(False, "", f"{zero_point} is not the output zero point of {name}.",
                      f"look at model.{name}.zero_point; after a ReLU it is 0, for logits it is not.")
    return report(True, f"{name} writes its output with scale {scale:.6g} and zero point {zero_point}.")
