"""Where a model stands in prepare -> calibrate -> convert, and an error naming the missing step.

Eager mode leaves a mark at each step: prepare() inserts observers, calibration gives them a
range, convert() swaps QuantStub for a Quantize module and the layers for their int8 versions.
torch itself never checks the order (convert() on a float model returns it unchanged; on an
uncalibrated one it gives scale 1.0 and zero point 0 everywhere), so qlib's pipeline and its
readers of int8 models (inspection, the int8 interpreter) ask here first. Notebooks 06-07.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import QuantStub
from torch.ao.quantization.observer import ObserverBase

from .errors import BadInputError, PipelineOrderError, kind_of


def observers(model: nn.Module) -> dict[str, ObserverBase]:
    """The observers prepare() inserted (activation_post_process modules), by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ObserverBase)}


def unobserved(model: nn.Module) -> list[str]:
    """Observers that have seen no data yet (their range is still empty: inf / -inf, or no channel)."""
    return [name for name, o in observers(model).items()
            if isinstance(getattr(o, "min_val", None), torch.Tensor)
            and (o.min_val.numel() == 0 or not bool(torch.isfinite(o.min_val).all()))]


def is_converted(model: nn.Module) -> bool:
    """convert() turns every QuantStub into a Quantize module: its mark on a converted model."""
    return any(isinstance(m, nnq.Quantize) for m in model.modules())


def stage(model: nn.Module) -> str:
    """'float', 'prepared' (observers, no data yet), 'calibrated' or 'converted'."""
    if is_converted(model):
        return "converted"
    inserted = observers(model)
    if not inserted:
        return "float"
    return "prepared" if len(unobserved(model)) == len(inserted) else "calibrated"


_CONVERT = ("Convert it first: qlib.ptq.quantize_static(float_model, calibration_data, engine=...) does "
            "prepare -> calibrate -> convert (or torch.ao.quantization.prepare, a calibration pass and "
            "torch.ao.quantization.convert).")


def _stage_of_module(model: Any, what: str, expected: str) -> str:
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{what} needs {expected} (an nn.Module), not {kind_of(model)}.")
    return stage(model)


def check_converted(model: Any, what: str) -> nn.Module:
    """`model` if it is a converted int8 model, else an error naming the step it is missing."""
    where = _stage_of_module(model, what, "the converted int8 model qlib.ptq.quantize_static returns")
    if where == "converted":
        return model
    name = type(model).__name__
    state = {
        "prepared": "was prepared (it holds observers) but neither calibrated nor converted: it has no scales "
                    "or zero points yet (qlib.ptq.calibrate, then qlib.ptq.convert_static, finish it)",
        "calibrated": "was prepared and calibrated but not converted: it still computes in float32 and has no "
                      "int8 weights (qlib.ptq.convert_static finishes it)",
        "float": "is a float model that was never prepared, calibrated or converted" + (
            "" if any(isinstance(m, QuantStub) for m in model.modules()) else
            ", and without QuantStub (load course models with quantizable=True)"),
    }[where]
    raise PipelineOrderError(f"{what} was given a {name} that {state}. {_CONVERT}")


def check_prepared(model: Any, step: str) -> nn.Module:
    """`model` if it is prepared (observers in, not converted), else an error naming the missing step."""
    where = _stage_of_module(model, f"{step}()", "the prepared model ptq.prepare_static(model) returns")
    if where == "converted":
        raise PipelineOrderError(f"{step}() got a model that is already converted to int8: its observers are "
                                 "gone. Call it on the prepared model (what ptq.prepare_static returned), "
                                 "before convert_static.")
    if where == "float":
        raise PipelineOrderError(f"{step}() got a model with no observers: it was never prepared, so "
                                 "nothing would record the ranges. Call ptq.prepare_static(model) first "
                                 f"and pass its result to {step}().")
    return model
