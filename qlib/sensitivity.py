"""Which layers lose the most to int8, and a model that keeps them in float. Notebook 10.

Per-layer SQNR pairs each int8 layer of a converted model with the float module that has the
same name in the model it came from, fused as `ptq.prepare_static` fuses it (`fused_float`):
after fusion the names match, a float `ConvReLU2d` facing its `QuantizedConvReLU2d`. Two numbers
per layer, both measured with hooks (qlib.recorder):

- propagated: the float model's output there against the int8 model's, each model fed the same
  images, so the error of every layer before it is included (what the numeric suite's
  `compare_model_outputs` measures);
- local: the float layer run on the int8 layer's own (dequantized) input, against the int8
  output, so only this layer's error counts (what `compare_model_stub`'s shadow modules measure).

A FloatFunctional computes in its methods, not in forward(); its output passes through its
`activation_post_process` (an Identity in float and after convert), so that is where its output is
read, the very spot where the numeric suite puts its loggers.

`keep_in_float` builds the eager-mode float island: DeQuantStub -> the layer (qconfig None) ->
QuantStub, so the layer gets a float tensor and the next int8 layer a quantized one again.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional, QFunctional
from torch.ao.quantization import DeQuantStub, QuantStub
from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

from .engines import engine_active, engine_of
from .errors import BadInputError, PipelineOrderError, check_whole, kind_of
from .recorder import recording
from .stages import check_converted, stage

# float module type -> the int8 type convert() puts in its place (QuantStub -> Quantize included).
_MAPPING = {**{k: v for k, v in get_default_static_quant_module_mappings().items() if isinstance(k, type)},
            FloatFunctional: QFunctional}
# int8 layers compared (a DeQuantize outputs float: the same numbers as the layer before it).
_PAIRED = set(_MAPPING.values()) - {_MAPPING[DeQuantStub]}
# Layers a float island can hold: called through forward() with one tensor (a FloatFunctional is
# called through its methods, and the QuantStub is where int8 starts).
_ISLAND_TYPES = tuple(t for t in _MAPPING if t not in (QuantStub, DeQuantStub, FloatFunctional))


def fused_float(model: nn.Module) -> nn.Module:
    """An eval copy of float `model`, fused as ptq.prepare_static fuses it: the float twin of the
    converted model, with one module under each name the int8 model has."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"fused_float needs the float model (an nn.Module), not {kind_of(model)}.")
    if stage(model) != "float":
        raise PipelineOrderError(f"fused_float got a model that is already {stage(model)}; pass the float model "
                                 "it came from (e.g. qlib.pretrained.load(..., quantizable=True)).")
    twin = copy.deepcopy(model).eval()
    if hasattr(twin, "fuse_model"):
        twin.fuse_model()
    return twin


def output_point(model: nn.Module, name: str) -> str:
    """Where layer `name`'s output can be hooked: the module itself, or a functional's
    activation_post_process (its methods, not forward(), compute)."""
    module = model.get_submodule(name)
    return f"{name}.activation_post_process" if isinstance(module, (FloatFunctional, QFunctional)) else name


def paired_layers(float_model: nn.Module, qmodel: nn.Module) -> list[str]:
    """Names of the int8 layers of converted `qmodel` whose float counterpart (same name, the type
    convert() maps to it) is in `float_model`, in module order.

    Raises BadInputError when a name matches but the type does not (an unfused float model facing a
    fused int8 one would compare a bare conv with conv+BN+ReLU, in silence).
    """
    check_converted(qmodel, "paired_layers")
    if not isinstance(float_model, nn.Module) or stage(float_model) != "float":
        raise BadInputError(f"paired_layers needs the float model first, not {_what(float_model)}; pass "
                            "sensitivity.fused_float(float_model), then the converted model.")
    floats = dict(float_model.named_modules())
    pairs = []
    for name, qmodule in qmodel.named_modules():
        if not name or type(qmodule) not in _PAIRED or name not in floats:
            continue
        expected = _MAPPING.get(type(floats[name]))
        if expected is not type(qmodule):
            raise BadInputError(
                f"layer {name!r} is {type(floats[name]).__name__} in the float model but "
                f"{qmodule._get_name()} in the int8 one, which convert() makes of a "
                f"{_float_name(type(qmodule))}: the float model is not the one the int8 model came from, or not "
                "fused. Pass sensitivity.fused_float(float_model), fused as ptq.prepare_static fuses.")
        pairs.append(name)
    if not pairs:
        raise BadInputError("no layer of the int8 model has a float counterpart of the same name: pass the float "
                            "model it was converted from, fused (sensitivity.fused_float(float_model)).")
    return pairs


def _what(value) -> str:
    return f"a {stage(value)} model" if isinstance(value, nn.Module) else kind_of(value)


def _float_name(qtype: type) -> str:
    names = [t.__name__ for t, q in _MAPPING.items() if q is qtype]
    return " or ".join(sorted(set(names))) or "float module"


def _names(layers, what: str) -> list[str]:
    """`layers` as a list of layer names: a string would be read letter by letter."""
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        raise BadInputError(f"{what} must be a list of layer names, not {kind_of(layers)}; pass e.g. ['conv1'] "
                            "(a string would be read letter by letter).")
    return list(layers)


def _dequantized(value):
    if isinstance(value, torch.Tensor):
        return value.dequantize() if value.is_quantized else value
    if isinstance(value, (list, tuple)):
        return type(value)(_dequantized(v) for v in value)
    return value


def _check_images(images) -> torch.Tensor:
    if (not isinstance(images, torch.Tensor) or images.dim() < 2 or images.dtype != torch.float32
            or not len(images) or images.is_quantized):
        raise BadInputError(f"images must be a float32 tensor of images with a batch dimension, not {kind_of(images)}: "
                            "both models are fed them as they would be in use, batch first. Pass e.g. "
                            "data.fashion_mnist('test').tensors()[0][:256].")
    if not bool(torch.isfinite(images).all()):
        raise BadInputError("images hold NaN or infinite values: every SQNR would be NaN. Pass finite images "
                            "(torch.isfinite(images).all()).")
    return images


class _Sums:
    """Sum of reference^2 and of (reference - approximation)^2 over batches: SQNR of the whole set."""

    def __init__(self):
        self.signal, self.noise = 0.0, 0.0

    def add(self, reference: torch.Tensor, approximation: torch.Tensor) -> None:
        reference, approximation = reference.detach().double(), approximation.detach().double()
        self.signal += float(reference.pow(2).sum())
        self.noise += float((reference - approximation).pow(2).sum())

    def db(self) -> float:
        if self.noise == 0:
            return math.inf
        return -math.inf if self.signal == 0 else 10 * math.log10(self.signal / self.noise)


def layer_sqnr(float_model: nn.Module, qmodel: nn.Module, images: torch.Tensor, batch_size: int = 64,
               layers=None) -> pd.DataFrame:
    """Per-layer SQNR (dB) of int8 `qmodel` against its fused float twin on `images`, one row per
    paired layer (or per name in `layers`) in the order the int8 model runs them: `propagated_db`
    (both models fed the images) and `local_db` (the float layer fed the int8 layer's own input).
    Lower means more error. Sums run over all images, so the batch size does not change the result."""
    pairs = paired_layers(float_model, qmodel)
    if layers is not None:
        layers = _names(layers, "layers (or None for every paired layer)")
        unknown = [n for n in layers if n not in pairs]
        if unknown:
            raise BadInputError(f"{unknown} are not int8 layers paired with a float one; pass names from "
                                f"sensitivity.paired_layers(float_model, qmodel), e.g. {pairs[:3]}.")
        pairs = list(layers)
    images = _check_images(images)
    check_whole(batch_size, "batch_size", 1, example=64)
    floats = dict(float_model.named_modules())
    fpoints = {output_point(float_model, name): name for name in pairs}
    propagated, local = {n: _Sums() for n in pairs}, {n: _Sums() for n in pairs}
    order, types = [], {}
    float_model.eval()
    qmodel.eval()
    with torch.inference_mode():
        for batch in images.split(batch_size):
            with recording(float_model, list(fpoints)) as frec:
                float_model(batch)
            with engine_active(engine_of(qmodel)), recording(qmodel, pairs) as qrec:
                qmodel(batch)
            float_out = {}
            for call in frec.calls:  # a module called twice: its first call is compared
                float_out.setdefault(fpoints[call.path], call.output)
            compared = set()
            for call in qrec.calls:
                name = call.path
                if name in compared:
                    continue
                compared.add(name)
                if name not in order:
                    order.append(name)
                types[name] = qmodel.get_submodule(name)._get_name()
                q_out = _dequantized(call.output)
                propagated[name].add(float_out[name], q_out)
                float_module = floats[name]
                compute = float_module if call.method == "forward" else getattr(float_module, call.method)
                local[name].add(compute(*_dequantized(call.args), **call.kwargs), q_out)
    return pd.DataFrame([dict(layer=n, type=types[n], propagated_db=propagated[n].db(), local_db=local[n].db())
                         for n in order]).set_index("layer")


def can_float(model: nn.Module, name: str) -> bool:
    """Can `keep_in_float` make an island of layer `name` (a layer called through forward())?"""
    return isinstance(_layer(model, name), _ISLAND_TYPES)


def _layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise BadInputError(f"{type(model).__name__} has no layer {name!r}; pass names from "
                            "sensitivity.layer_sqnr(...).index and the fused float model "
                            "(sensitivity.fused_float(model)).") from None


def ranking(table: pd.DataFrame, column: str = "local_db", model: nn.Module | None = None) -> list[str]:
    """The layers of a `layer_sqnr` table, lowest SQNR (most sensitive) first; given the float
    `model`, only those `keep_in_float` can keep in float."""
    if not isinstance(table, pd.DataFrame) or column not in getattr(table, "columns", []):
        raise BadInputError(f"ranking needs a layer_sqnr table with a {column!r} column, not {kind_of(table)}; "
                            "pass sensitivity.layer_sqnr(...)'s result and column='local_db' or 'propagated_db'.")
    names = list(table[column].sort_values(kind="stable").index)
    return [n for n in names if model is None or can_float(model, n)]


class FloatIsland(nn.Module):
    """One layer kept in float inside an int8 model: dequantize, run the float layer, quantize
    again (the QuantStub's observer records the float output's range, as any activation's)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.dequant = DeQuantStub()
        self.layer = layer
        self.layer.qconfig = None  # prepare and convert leave it alone
        self.quant = QuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.layer(self.dequant(x)))


def keep_in_float(model: nn.Module, layers) -> nn.Module:
    """A fused float copy of `model` with each named layer in a FloatIsland. Prepare it with
    ptq.prepare_static(..., fuse=False) (it is fused already), calibrate and convert as usual."""
    layers = _names(layers, "layers")
    twin = fused_float(model)
    for name in layers:
        module = _layer(twin, name)
        if not isinstance(module, _ISLAND_TYPES):
            raise BadInputError(f"layer {name!r} is {kind_of(module)}, which a float island cannot hold: only layers "
                                "called through forward() with one tensor can (conv, linear, their fusions); a "
                                "FloatFunctional is called through its methods. Pick a layer from "
                                "sensitivity.ranking(table, model=fused).")
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, FloatIsland(module))
    return twin
