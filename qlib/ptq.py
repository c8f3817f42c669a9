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

from .engines import resolve_engine, use_engine
from .errors import BadInputError, PipelineOrderError, check_whole, kind_of
from .quantizable import check_quantizable
from .stages import check_prepared, observers, stage, unobserved


# --- calibration data --------------------------------------------------------------------------------

_HOW_TO_PASS = ("Pass a Dataset, a DataLoader, or a list of batches (each a float32 tensor of images, or an "
                "(images, labels) pair), e.g. qlib.data.calibration_subset(512)")


def _batch_source(calibration_data):
    """The iterable of batches in `calibration_data`, or an error for what is not one."""
    if isinstance(calibration_data, torch.utils.data.Dataset):
        from .data import loader

        return loader(calibration_data)
    if isinstance(calibration_data, torch.Tensor):
        raise BadInputError(f"calibration_data is one tensor ({kind_of(calibration_data)}); iterating over it "
                            "would feed the model one image at a time without a batch dimension. Wrap it in "
                            "a list, `[images]`, or split it into batches: `list(images.split(64))`.")
    if isinstance(calibration_data, (str, bytes, dict)) or not hasattr(calibration_data, "__iter__"):
        numpy_hint = (" For a numpy array: torch.from_numpy(array).float()." if type(calibration_data).__module__
                      == "numpy" else "")
        raise BadInputError(f"calibration_data is {kind_of(calibration_data)}, not a collection of image "
                            f"batches. {_HOW_TO_PASS}.{numpy_hint}")
    return calibration_data


def _images_of(batch, index: int) -> torch.Tensor:
    """The images of one batch, checked: a finite float32 tensor with a batch dimension."""
    images = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    where = f"Calibration batch {index}"
    if not isinstance(images, torch.Tensor):
        hint = " Convert it with torch.from_numpy(array).float()." if type(images).__module__ == "numpy" else ""
        raise BadInputError(f"{where} is {kind_of(images)}, not a tensor of images. {_HOW_TO_PASS}.{hint}")
    if images.dtype != torch.float32:
        fix = ("raw pixels: convert them as in training, images.float() / 255 then the same normalisation "
               "(qlib.data's datasets do this)" if not images.is_floating_point() else "images.float()")
        raise BadInputError(f"{where} is {kind_of(images)}; the float model and its observers expect "
                            f"float32. Convert it: {fix}.")
    if images.dim() < 2:
        raise BadInputError(f"{where} is {kind_of(images)}: it has no batch dimension. Pass batches of "
                            "images, e.g. images.unsqueeze(0) for a single image.")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise BadInputError(f"{where} holds {bad} NaN or infinite value(s). An observer that sees one takes "
                            "a NaN range, so every scale after it is NaN and the int8 model outputs NaN (or "
                            "torch.histc fails). Drop or repair those images (torch.isfinite(images).all())"
                            " before calibrating.")
    return images


def _batches(calibration_data, num_batches: int | None) -> Iterable[torch.Tensor]:
    for index, batch in enumerate(calibration_data):
        if num_batches is not None and index >= num_batches:
            return
        yield _images_of(batch, index)


def calibrate(prepared: nn.Module, calibration_data, num_batches: int | None = None,
              progress: bool = True) -> int:
    """Run calibration batches through a prepared model (observers record ranges); returns images seen.

    Each batch is checked first (float32, a batch dimension, finite values): one NaN pixel would
    make every later scale NaN without an error.
    """
    check_prepared(prepared, "calibrate")
    if num_batches is not None:
        check_whole(num_batches, "num_batches", 1, example=8, why=" (or None to use every batch)")
    calibration_data = _batch_source(calibration_data)
    seen = 0
    total = len(calibration_data) if hasattr(calibration_data, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    with torch.inference_mode():
        for x in tqdm(_batches(calibration_data, num_batches), total=total, desc="calibrating",
                      unit="batch", disable=not progress):
            try:
                prepared(x)
            except RuntimeError as error:
                raise BadInputError(f"A calibration batch of shape {tuple(x.shape)} does not fit the model: "
                                    f"{str(error).splitlines()[0]} Pass batches shaped like the training "
                                    "images (N, C, H, W).") from error
            seen += len(x)
    if seen == 0:
        raise BadInputError("The calibration data yielded no images: the observers saw nothing, so every "
                            "scale would be meaningless. Pass at least one batch of images.")
    return seen


def prepare_static(model: nn.Module, engine: str | None = None, qconfig: QConfig | None = None,
                   fuse: bool = True, check: bool = True) -> nn.Module:
    """A prepared copy of `model`: eval mode, fused, qconfig set, observers inserted.

    `qconfig` defaults to the engine's own (get_default_qconfig(engine)); pass another one to
    study observer choices (e.g. MinMax vs Histogram, per-tensor vs per-channel weights).
    """
    if isinstance(model, nn.Module) and stage(model) != "float":  # before the fx check, which would trip on observers
        raise PipelineOrderError(f"prepare_static() got a model that is already {stage(model)}: preparing it "
                                 "again would observe the observers. Prepare the float model (e.g. "
                                 "qlib.pretrained.load(...)) once.")
    if check:
        check_quantizable(model)
    engine = resolve_engine(engine)
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise BadInputError(f"qconfig is {kind_of(qconfig)}, not a torch.ao.quantization.QConfig. Pass e.g. "
                            "get_default_qconfig('x86') or QConfig(activation=..., weight=...), or None for "
                            "the engine's default.")
    float_copy = copy.deepcopy(model).eval()
    if fuse and hasattr(float_copy, "fuse_model"):
        float_copy.fuse_model()
    float_copy.qconfig = qconfig if qconfig is not None else get_default_qconfig(engine)
    return prepare(float_copy)


def convert_static(prepared: nn.Module, engine: str | None = None) -> nn.Module:
    """convert() a calibrated model under `engine` (a copy: `prepared` can go on calibrating).

    Refuses a model that was never prepared (convert would return it unchanged) or never
    calibrated (every observer would give scale 1.0 and zero point 0: all-zero outputs).
    """
    check_prepared(prepared, "convert_static")
    empty = unobserved(prepared)
    if empty:
        raise PipelineOrderError(f"{len(empty)} of {len(observers(prepared))} observers have seen no data "
                                 f"(first: {empty[0]}), so convert would give them scale 1.0 and zero point 0 "
                                 "and the int8 model would output zeros. Call ptq.calibrate(prepared, data) "
                                 "first; if only some observers are empty, the calibration data never reaches "
                                 "those layers.")
    return _convert(prepared, engine)


def _convert(prepared: nn.Module, engine: str | None) -> nn.Module:
    engine = use_engine(resolve_engine(engine))
    quantized = convert(prepared, inplace=False)
    quantized.qengine = engine
    return quantized.eval()


def quantize_static(model: nn.Module, calibration_data, engine: str | None = None,
                    num_batches: int | None = None, progress: bool = True,
                    qconfig: QConfig | None = None) -> nn.Module:
    """The converted int8 model of a quantizable float `model`, calibrated on `calibration_data`.

    `calibration_data` is a Dataset, a DataLoader, or any iterable of batches (tensors or
    (images, labels) pairs). The engine becomes torch's active quantized engine, since the
    converted model's packed weights only run under it; the result records it as `.qengine`.
    """
    engine = resolve_engine(engine)
    prepared = prepare_static(model, engine, qconfig)
    calibrate(prepared, calibration_data, num_batches, progress)
    return convert_static(prepared, engine)


def quantized_skeleton(model: nn.Module, engine: str | None = None, qconfig: QConfig | None = None) -> nn.Module:
    """A converted model with the right structure and placeholder qparams, to load_state_dict into.

    A saved int8 state dict holds quantized weights and every scale / zero point, but no
    architecture: rebuild it by the same fuse -> prepare -> convert steps, without calibration
    (the observers' "run observer before calculate_qparams" warnings are expected and silenced
    here, since load_state_dict overwrites every value they would give).
    """
    prepared = prepare_static(model, engine, qconfig, check=False)  # the structure of a model already converted once
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        return _convert(prepared, engine)


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
                           f"reduce_range={getattr(getattr(observer, 'activation_post_process', observer), 'reduce_range', False)}, "
                           f"range {observer.quant_min}..{observer.quant_max})")
    return described
