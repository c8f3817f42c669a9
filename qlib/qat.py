"""Eager-mode quantization-aware training (QAT): fuse for training, prepare_qat, fine-tune, convert.

PTQ picks scales for weights the training never saw rounded; QAT fine-tunes the float weights
*through* the rounding. prepare_qat puts a FakeQuantize after every weight and activation: its
forward is quantize-then-dequantize (the values the int8 model will compute with) and its
backward is the straight-through estimator (gradient 1 where the value was inside the grid's
range, 0 where it was clipped), so that training can adapt to the rounding. Conv+BN pairs are fused
with `fuse_modules_qat` in train mode (ConvBn2d keeps BN as a module and folds it into the weight
before fake-quantizing it), since eval-mode folding (`fuse_modules`, notebook 05) would freeze BN.
Two switches mark the end of training: `disable_observer` fixes every scale and zero point, and
`freeze_bn_stats` makes BN use its running statistics, so that the last steps train exactly the
model that `convert` will build. Notebook 09.
"""

from __future__ import annotations

import copy
import numbers
from typing import Callable, Iterable, Iterator

import pandas as pd
import torch
import torch.ao.nn.intrinsic.qat as nniqat
from torch import nn
from torch.ao.quantization import (QConfig, convert, disable_observer, fuse_modules_qat, get_default_qat_qconfig,
                                   get_default_qconfig, prepare_qat)
from torch.ao.quantization.fake_quantize import (FakeQuantizeBase, default_per_channel_weight_fake_quant,
                                                 default_weight_fake_quant)
from torch.ao.quantization.observer import default_per_channel_weight_observer, default_weight_observer
from tqdm.auto import tqdm

from .engines import resolve_engine, use_engine
from .errors import BadInputError, PipelineOrderError, check_flag, check_whole, kind_of
from .quantizable import check_quantizable
from .stages import stage, unobserved


def weight_range(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of signed `bits`-bit weights, e.g. (-8, 7) for 4 bits: narrowed inside int8, so
    that the converted model still runs on the int8 kernels (convert clamps weights to this range)."""
    check_whole(bits, "weight_bits", 2, 8, example=4, why=" (weights are stored in int8)")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def qconfig(engine: str | None = None, weight_bits: int = 8, per_channel: bool = True, qat: bool = True) -> QConfig:
    """The engine's default activations with `weight_bits`-bit symmetric weights, for QAT or for PTQ.

    The QAT and the PTQ qconfig of one setting quantize to the same grids (same activation range,
    same weight range and granularity); only how the ranges are found differs (moving averages
    during training vs observers during calibration), so that notebook 09 compares like with like.
    QAT uses the unfused FakeQuantize (version 0 of torch's default QAT qconfig): its scale is its
    observer's own, the one convert() uses, whereas the fused FakeQuantize of version 1 trains
    symmetric weights with another formula (see `scale_mismatches`).
    """
    engine = resolve_engine(engine)
    check_flag(per_channel, "per_channel")
    check_flag(qat, "qat")
    qmin, qmax = weight_range(weight_bits)
    if qat:
        activation = get_default_qat_qconfig(engine, version=0).activation
        weight = default_per_channel_weight_fake_quant if per_channel else default_weight_fake_quant
    else:
        activation = get_default_qconfig(engine).activation
        weight = default_per_channel_weight_observer if per_channel else default_weight_observer
    return QConfig(activation=activation, weight=weight.with_args(quant_min=qmin, quant_max=qmax))


def scale_mismatches(model: nn.Module) -> dict[str, float]:
    """For each fake quant: the largest relative gap between the scale it trains with (its `scale`
    buffer) and the scale convert() will use (`calculate_qparams()`, from its observer).

    0 for the unfused FakeQuantize. The fused FakeQuantize (torch's default QAT qconfig) computes its
    buffer in C++ with max(|min| / -qmin, max / qmax) for symmetric ranges, while its observer, which
    convert asks, divides max(|min|, max) by (qmax - qmin) / 2: on the ResNet's stem weight 0.4% apart
    at 8 bits, 4% at 3 bits (notebook 09). Fake quants that have seen no data are left out.
    """
    gaps = {}
    for name, fq in fake_quants(model).items():
        observer = getattr(fq, "activation_post_process", None)
        seen = getattr(observer, "min_val", None)
        if not isinstance(seen, torch.Tensor) or not seen.numel() or not torch.isfinite(seen).all():
            continue
        trained = fq.scale.detach().double()
        converted = fq.calculate_qparams()[0].detach().double().reshape(trained.shape)
        gaps[name] = float(((trained - converted).abs() / converted).max())
    return gaps


def fake_quants(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    """The FakeQuantize modules prepare_qat inserted, by name (weights' and activations')."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizeBase)}


def prepare_qat_copy(model: nn.Module, qconfig: QConfig | None = None, engine: str | None = None) -> nn.Module:
    """A QAT-ready copy of float `model`: train mode, fused with fuse_modules_qat, fake quants in.

    Fusing in train mode keeps BN as a module inside ConvBn2d / ConvBnReLU2d (eval-mode fusion would
    fold its running statistics once and for all). `qconfig` defaults to the engine's QAT one
    (torch's fused fake quants; `qlib.qat.qconfig(...)` gives unfused ones that convert agrees with).
    """
    engine = resolve_engine(engine)
    chosen = get_default_qat_qconfig(engine) if qconfig is None else qconfig
    if not isinstance(chosen, QConfig):
        raise BadInputError(f"qconfig is {kind_of(chosen)}, not a torch.ao.quantization.QConfig. Pass e.g. "
                            "qlib.qat.qconfig('x86', weight_bits=4), or None for the engine's default QAT qconfig.")
    if not isinstance(chosen.weight(), FakeQuantizeBase):
        raise BadInputError(f"This qconfig's weights get {type(chosen.weight()).__name__}, an observer without fake "
                            "quantization: prepare_qat would insert it and training would never see the rounding. "
                            "Pass a QAT qconfig, e.g. qlib.qat.qconfig('x86', weight_bits=4) (qat=True) or "
                            "get_default_qat_qconfig('x86').")
    if isinstance(model, nn.Module) and stage(model) != "float":
        raise PipelineOrderError(f"prepare_qat_copy() got a model that is already {stage(model)}; prepare the "
                                 "float model (e.g. qlib.pretrained.load(..., quantizable=True)) once.")
    check_quantizable(model)
    if not hasattr(model, "fuse_groups"):
        raise BadInputError(f"{type(model).__name__} has no fuse_groups(), so its Conv+BN pairs cannot be fused "
                            "for QAT. Use a course model (qlib.pretrained.load(name, quantizable=True)) or give "
                            "it a fuse_groups() method listing [conv, bn(, relu)] names.")
    prepared = copy.deepcopy(model).train()
    fuse_modules_qat(prepared, prepared.fuse_groups(), inplace=True)
    prepared.qconfig = chosen
    return prepare_qat(prepared, inplace=True)


def _check_prepared_qat(model, what: str) -> nn.Module:
    """`model` if prepare_qat put fake quants in it, else an error naming the missing step."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{what} needs a model prepared for QAT (an nn.Module), not {kind_of(model)}.")
    if not fake_quants(model):
        raise PipelineOrderError(f"{what} got a {stage(model)} {type(model).__name__} without FakeQuantize modules: "
                                 "there is nothing to train through the rounding. Call "
                                 "qlib.qat.prepare_qat_copy(float_model, qconfig) first.")
    return model


def _endless(batches: Iterable) -> Iterator:
    """Batches from `batches` forever: a DataLoader is iterated again (reshuffled) when it ends."""
    if isinstance(batches, (torch.Tensor, str, bytes, dict)) or not hasattr(batches, "__iter__"):
        raise BadInputError(f"batches is {kind_of(batches)}, not a collection of (images, labels) batches. Pass a "
                            "DataLoader, e.g. qlib.data.loader(qlib.data.calibration_subset(2048), 32, shuffle=True), "
                            "or a list of (images, labels) pairs.")
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise BadInputError("The training data yielded no batch (it is empty, or an iterator already used up). "
                                "Pass a DataLoader or a list of (images, labels) pairs, which can be iterated again, "
                                "e.g. qlib.data.loader(qlib.data.calibration_subset(2048), 32, shuffle=True).")


def _labelled(batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of one training batch, or an error: training needs the labels PTQ never uses."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):
        raise BadInputError(f"Training batch {step} is {kind_of(batch)}, not an (images, labels) pair of tensors: "
                            "fine-tuning needs labels for its loss. Pass a DataLoader over a labelled Dataset "
                            "(e.g. qlib.data.loader(...)), or a list of (images, labels) pairs.")
    images, labels = batch
    if not images.is_floating_point() or labels.is_floating_point() or len(images) != len(labels):
        raise BadInputError(f"Training batch {step} holds {kind_of(images)} and {kind_of(labels)}; expected float "
                            "images and integer class labels, one per image.")
    return images, labels


def _check_step(value, what: str, steps: int):
    if value is not None:
        check_whole(value, what, 0, steps, example=steps // 2, why=f" (a step count up to steps={steps}, or None)")
    return value


def fine_tune(model: nn.Module, batches: Iterable, steps: int, lr: float = 1e-3, momentum: float = 0.9,
              freeze_bn_after: int | None = None, disable_observers_after: int | None = None,
              probes: dict[str, Callable[[nn.Module], float]] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train a QAT-prepared `model` in place for `steps` SGD steps; returns one row per step.

    `batches` yields (images, labels) and is restarted when it ends. After `freeze_bn_after` steps
    every ConvBn module switches to its running statistics (`freeze_bn_stats`), after
    `disable_observers_after` steps every scale and zero point is fixed (`disable_observer`).
    Each row holds the step, the loss, the batch accuracy, both switches, and `probes`: named
    functions of the model read after the step (e.g. one observer's scale) to watch them change.
    """
    _check_prepared_qat(model, "fine_tune")
    check_whole(steps, "steps", 1, example=200)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < 1:
        raise BadInputError(f"lr={lr!r} is not a learning rate for fine-tuning; pass a number in (0, 1), e.g. 1e-3.")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
        raise BadInputError(f"momentum={momentum!r} is not an SGD momentum; pass a number in [0, 1), e.g. 0.9.")
    _check_step(freeze_bn_after, "freeze_bn_after", steps)
    _check_step(disable_observers_after, "disable_observers_after", steps)
    probes = {} if probes is None else probes
    if not isinstance(probes, dict) or not all(isinstance(k, str) and callable(f) for k, f in probes.items()):
        raise BadInputError(f"probes is {kind_of(probes)}; pass a dict of names to functions of the model, e.g. "
                            "{'stem scale': lambda m: float(m.conv1.activation_post_process.scale)}.")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    source = _endless(batches)
    rows = []
    for step in tqdm(range(steps), desc="QAT fine-tuning", unit="step", disable=not progress):
        if step == freeze_bn_after:
            model.apply(nniqat.freeze_bn_stats)
        if step == disable_observers_after:
            model.apply(disable_observer)
        images, labels = _labelled(next(source), step)
        out = model(images)
        loss = nn.functional.cross_entropy(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bn_frozen = freeze_bn_after is not None and step >= freeze_bn_after
        observers_on = disable_observers_after is None or step < disable_observers_after
        rows.append(dict(step=step + 1, loss=loss.item(),
                         batch_accuracy=100.0 * float((out.argmax(1) == labels).float().mean()),
                         bn_frozen=bn_frozen, observers_on=observers_on,
                         **{name: float(probe(model)) for name, probe in probes.items()}))
    return pd.DataFrame(rows).set_index("step")


def convert_qat(model: nn.Module, engine: str | None = None) -> nn.Module:
    """The int8 model of a fine-tuned QAT model (a copy, in eval mode), under `engine`.

    convert() folds each ConvBn's BN (running statistics) into its weight, quantizes the weights
    with the fake quants' scales, and gives every layer its activation fake quant's output qparams.
    """
    _check_prepared_qat(model, "convert_qat")
    engine = resolve_engine(engine)
    empty = unobserved(model)
    if empty:
        raise PipelineOrderError(f"{len(empty)} fake quants have seen no data (first: {empty[0]}): their scale is "
                                 "still 1.0. Run fine_tune (or at least one forward pass in train mode) first.")
    use_engine(engine)
    quantized = convert(copy.deepcopy(model).eval(), inplace=False)
    quantized.qengine = engine
    return quantized.eval()
