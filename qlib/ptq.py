"""Eager-mode post-training static quantization in one call, step by step inside.

copy -> eval -> fuse -> the engine's default qconfig -> prepare (observers) -> calibrate -> convert.
The float model passed in is left untouched.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.ao.quantization import QuantStub, convert, get_default_qconfig, prepare
from tqdm.auto import tqdm


class NotQuantizableError(TypeError):
    """The model lacks what eager-mode static quantization needs (stubs, FloatFunctional)."""


def check_engine(engine: str) -> str:
    supported = torch.backends.quantized.supported_engines
    if engine not in supported or engine == "none":
        raise ValueError(f"Quantized engine {engine!r} is not available in this torch build; "
                         f"choose one of {[e for e in supported if e != 'none']}.")
    return engine


def use_engine(engine: str) -> str:
    """Make `engine` torch's active quantized engine (prepacked weights are engine-specific)."""
    torch.backends.quantized.engine = check_engine(engine)
    return engine


def check_quantizable(model: nn.Module) -> None:
    """Fail early, naming the problem and the fix, on models eager mode would mis-quantize."""
    if not any(isinstance(m, QuantStub) for m in model.modules()):
        raise NotQuantizableError(
            f"{type(model).__name__} has no QuantStub, so its input would never be quantized. "
            "Add `self.quant = QuantStub()` at the start of forward() and `self.dequant = DeQuantStub()` "
            "at the end (for the course's ResNet: resnet18(..., quantizable=True)).")
    from .models import BasicBlock, QuantizableBasicBlock

    plain = [name for name, m in model.named_modules()
             if isinstance(m, BasicBlock) and not isinstance(m, QuantizableBasicBlock)]
    if plain:
        raise NotQuantizableError(
            f"{plain[0]} (and {len(plain) - 1} more) adds its skip connection with a bare `+`, which "
            "has no observer and no quantized kernel. Use FloatFunctional (`self.skip_add.add_relu(out, "
            "identity)`), i.e. build the model with resnet18(..., quantizable=True) and load the same "
            "state dict.")


def _batches(calibration_data, num_batches: int | None) -> Iterable[torch.Tensor]:
    if isinstance(calibration_data, torch.utils.data.Dataset):
        from .data import loader

        calibration_data = loader(calibration_data)
    for index, batch in enumerate(calibration_data):
        if num_batches is not None and index >= num_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(prepared: nn.Module, calibration_data, num_batches: int | None = None,
              progress: bool = True) -> int:
    """Run calibration batches through a prepared model (observers record ranges); returns images seen."""
    seen = 0
    total = num_batches if num_batches is not None else (
        len(calibration_data) if hasattr(calibration_data, "__len__") else None)
    if isinstance(calibration_data, torch.utils.data.Dataset) and num_batches is None:
        total = None
    with torch.inference_mode():
        for x in tqdm(_batches(calibration_data, num_batches), total=total, desc="calibrating",
                      unit="batch", disable=not progress):
            prepared(x)
            seen += len(x)
    return seen


def quantize_static(model: nn.Module, calibration_data, engine: str = "x86",
                    num_batches: int | None = None, progress: bool = True) -> nn.Module:
    """The converted int8 model of a quantizable float `model`, calibrated on `calibration_data`.

    `calibration_data` is a Dataset, a DataLoader, or any iterable of batches (tensors or
    (images, labels) pairs). The engine becomes torch's active quantized engine, since the
    converted model's packed weights only run under it.
    """
    check_quantizable(model)
    use_engine(engine)
    float_copy = copy.deepcopy(model).eval()
    if hasattr(float_copy, "fuse_model"):
        float_copy.fuse_model()
    float_copy.qconfig = get_default_qconfig(engine)
    prepared = prepare(float_copy)
    calibrate(prepared, calibration_data, num_batches, progress)
    quantized = convert(prepared)
    quantized.qengine = engine
    return quantized
