"""Eager-mode post-training static quantization in one call, step by step inside.

copy -> eval -> fuse -> a qconfig (the engine's default unless given) -> prepare (observers)
-> calibrate -> convert. The float model passed in is left untouched. Before any work,
qlib.quantizable checks that eager mode can quantize the model; qlib.engines sets the engine.
Notebooks 05-07.
"""

from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
from torch import nn
from torch.ao.quantization import QConfig, convert, get_default_qconfig, prepare
from tqdm.auto import tqdm

from .engines import check_engine, use_engine
from .quantizable import check_quantizable


def _batches(calibration_data, num_batches: int | None) -> Iterable[torch.Tensor]:
    for index, batch in enumerate(calibration_data):
        if num_batches is not None and index >= num_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(prepared: nn.Module, calibration_data, num_batches: int | None = None,
              progress: bool = True) -> int:
    """Run calibration batches through a prepared model (observers record ranges); returns images seen."""
    seen = 0
    if isinstance(calibration_data, torch.utils.data.Dataset):
        from .data import loader

        calibration_data = loader(calibration_data)
    total = len(calibration_data) if hasattr(calibration_data, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    with torch.inference_mode():
        for x in tqdm(_batches(calibration_data, num_batches), total=total, desc="calibrating",
                      unit="batch", disable=not progress):
            prepared(x)
            seen += len(x)
    if seen == 0:
        raise ValueError("The calibration data yielded no batch: the observers saw nothing, so "
                         "every scale would be meaningless. Pass at least one batch of images.")
    return seen


def prepare_static(model: nn.Module, engine: str = "x86", qconfig: QConfig | None = None,
                   fuse: bool = True, check: bool = True) -> nn.Module:
    """A prepared copy of `model`: eval mode, fused, qconfig set, observers inserted.

    `qconfig` defaults to the engine's own (get_default_qconfig(engine)); pass another one to
    study observer choices (e.g. MinMax vs Histogram, per-tensor vs per-channel weights).
    """
    if check:
        check_quantizable(model)
    check_engine(engine)
    float_copy = copy.deepcopy(model).eval()
    if fuse and hasattr(float_copy, "fuse_model"):
        float_copy.fuse_model()
    float_copy.qconfig = qconfig if qconfig is not None else get_default_qconfig(engine)
    return prepare(float_copy)


def convert_static(prepared: nn.Module, engine: str = "x86") -> nn.Module:
    """convert() a calibrated model under `engine` (a copy: `prepared` can go on calibrating)."""
    use_engine(engine)
    quantized = convert(prepared, inplace=False)
    quantized.qengine = engine
    return quantized.eval()


def quantize_static(model: nn.Module, calibration_data, engine: str = "x86",
                    num_batches: int | None = None, progress: bool = True,
                    qconfig: QConfig | None = None) -> nn.Module:
    """The converted int8 model of a quantizable float `model`, calibrated on `calibration_data`.

    `calibration_data` is a Dataset, a DataLoader, or any iterable of batches (tensors or
    (images, labels) pairs). The engine becomes torch's active quantized engine, since the
    converted model's packed weights only run under it; the result records it as `.qengine`.
    """
    prepared = prepare_static(model, engine, qconfig)
    calibrate(prepared, calibration_data, num_batches, progress)
    return convert_static(prepared, engine)


def quantized_skeleton(model: nn.Module, engine: str = "x86", qconfig: QConfig | None = None) -> nn.Module:
    """A converted model with the right structure and placeholder qparams, to load_state_dict into.

    A saved int8 state dict holds quantized weights and every scale / zero point, but no
    architecture: rebuild it by the same fuse -> prepare -> convert steps, without calibration
    (the observers' "run observer before calculate_qparams" warnings are expected and silenced
    here, since load_state_dict overwrites every value they would give).
    """
    prepared = prepare_static(model, engine, qconfig, check=False)  # the structure of a model already converted once
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        return convert_static(prepared, engine)


def describe_qconfig(qconfig: QConfig) -> dict[str, str]:
    """The activation and weight observers of `qconfig` in one readable line each.

    Built by instantiating each observer and reading back what it will use: class, dtype,
    qscheme, reduce_range and the integer range.
    """
    described = {}
    for role in ("activation", "weight"):
        observer = getattr(qconfig, role)()
        qscheme = str(getattr(observer, "qscheme", "")).replace("torch.", "")
        described[role] = (f"{type(observer).__name__}({str(observer.dtype).replace('torch.', '')}, {qscheme}, "
                           f"reduce_range={getattr(observer, 'reduce_range', False)}, "
                           f"range {observer.quant_min}..{observer.quant_max})")
    return described
