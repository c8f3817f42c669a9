"""Notebook 10: per-layer SQNR and float islands."""

from __future__ import annotations

import math

import torch

from .core import _NotYet, _checker, _describe, _exception_text, _read_number, report


@_checker("sqnr_db: one number, the layer's SQNR in dB (a float or a one-element tensor)")
def check_layer_sqnr(sqnr_db, float_model, qmodel, images, layer: str) -> bool:
    """Is `sqnr_db` the SQNR (dB) of layer `layer`'s int8 output against the fused float twin's, both
    models fed `images`, as qlib.sensitivity.layer_sqnr computes it (propagated_db)?

    Judged to 0.005 dB: float32 sums (the learner's) and float64 ones (qlib's) differ by far less,
    while each mistake below moves the answer by whole decibels.
    """
    from ..sensitivity import layer_sqnr

    got = _read_number(sqnr_db, "sqnr_db")
    table = layer_sqnr(float_model, qmodel, images, batch_size=len(images), layers=[layer])
    expected = float(table.loc[layer, "propagated_db"])
    if abs(got - expected) <= 0.005:
        return report(True, f"{layer}: SQNR = {expected:.3f} dB, as qlib.sensitivity.layer_sqnr measures it "
                      f"on these {len(images)} images.")
    if math.isclose(got, 2 * expected, rel_tol=1e-3):
        hint = "SQNR compares powers (sums of squares): 10 log10, not 20 log10."
    elif math.isclose(got, -expected, rel_tol=1e-3):
        hint = "signal over noise: sum(float^2) / sum((float - int8)^2), not the other way round."
    else:
        hint = ("hook the layer in both models, run the same images through each, then "
                "10 log10(sum(f^2) / sum((f - q.dequantize())^2)) over every element, f from the float twin.")
    return report(False, "", f"got {got:.4f} dB, the layer's SQNR is {expected:.4f} dB.", hint)


def _int8_layers(model, skip: str = "") -> list[str]:
    """Types of the int8 conv / linear layers of a converted model, outside the module `skip`."""
    import torch.ao.nn.quantized as nnq

    return sorted(type(m).__name__ for name, m in model.named_modules()
                  if isinstance(m, (nnq.Conv2d, nnq.Linear)) and not (skip and (name == skip or
                                                                               name.startswith(skip + "."))))


def _pipeline(model, images, qconfig, engine, whose: str):
    """prepare (no fusion: the island is inserted after it) -> calibrate on `images` -> convert."""
    from .. import ptq
    from ..errors import QlibError

    try:
        prepared = ptq.prepare_static(model, engine, qconfig, fuse=False)
        ptq.calibrate(prepared, [images], progress=False)
        return ptq.convert_static(prepared, engine)
    except QlibError as error:
        raise _NotYet(f"qlib's pipeline refused {whose}: {error}",
                      "the island is DeQuantStub -> the layer (its qconfig = None) -> QuantStub, in the "
                      "layer's place.") from None
    except Exception as error:
        raise _NotYet(f"preparing, calibrating or converting {whose} failed: {_exception_text(error)}",
                      "start again from sensitivity.fused_float(float_model) and replace only the one layer.") from None


@_checker("model: your fused float model (an nn.Module) with the layer in a float island")
def check_float_island(model, layer: str, float_model, images, qconfig=None, engine: str | None = None) -> bool:
    """Does `model` (fused, with `layer` wrapped by the learner) convert into an int8 model that
    keeps exactly `layer` in float and computes, bit for bit, what qlib.sensitivity.keep_in_float's
    island computes, both calibrated on `images` with `qconfig`, under `engine` (None: the course's)?
    """
    from ..engines import engine_active, resolve_engine
    from ..sensitivity import fused_float, keep_in_float

    try:
        engine = resolve_engine(engine)
    except Exception as error:
        raise _NotYet(str(error), "pass engines.course_engine(), the engine the notebook converts under.") from None

    if not isinstance(model, torch.nn.Module):
        raise _NotYet(f"model is {_describe(model)}; expected your float model with the island (an nn.Module).")
    float_type = type(fused_float(float_model).get_submodule(layer))
    converted = _pipeline(model, images, qconfig, engine, "your model")
    reference = _pipeline(keep_in_float(float_model, [layer]), images, qconfig, engine, "the reference island")
    try:
        region = converted.get_submodule(layer)
    except AttributeError:
        raise _NotYet(f"your model has no module {layer!r} any more.",
                      "put the island in the layer's place, under the same name: setattr(parent, name, island).") \
            from None
    if not any(type(m) is float_type for m in region.modules()):
        now = ", ".join(sorted({type(m).__name__ for m in region.modules()}))
        return report(False, "", f"after convert(), {layer} holds no float {float_type.__name__} (it holds: {now}).",
                      "set the layer's own qconfig to None before preparing: prepare() and convert() then leave "
                      "it alone.")
    mine, theirs = _int8_layers(converted, layer), _int8_layers(reference, layer)
    if mine != theirs:
        return report(False, "", f"outside {layer}, your model has {len(mine)} int8 conv / linear layers, the "
                      f"island model {len(theirs)}.", "keep only this one layer in float: qconfig = None on "
                      "the layer itself, not on its parent or the whole model.")
    with engine_active(engine), torch.inference_mode():
        got, want = converted(images), reference(images)
    if not torch.equal(got, want):
        return report(False, "", f"{int((got != want).sum())} of {want.numel()} outputs differ from the island's.",
                      "the island is DeQuantStub -> layer -> QuantStub, and the QuantStub keeps the model's "
                      "qconfig, so that its observer sets the scale of the float layer's output.")
    return report(True, f"{layer} runs in float between a DeQuantStub and a QuantStub; the other "
                  f"{len(mine)} conv / linear layers stay int8, and the outputs equal the island model's bit for bit.")


# --- notebook 11: PT2E graphs (torchao) --------------------------------------------------------------
