"""Notebook 07: reading a converted model's scales and zero points."""

from __future__ import annotations

import math

import torch

from ..errors import kind_of
from .core import _NotYet, _call_learner, _checker, _describe, _read_number, _read_tensor, _read_zero_point, _require_shape, report


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


# --- Exercise 7.1: the forum's input line ---------------------------------------------------------

# (mean, std, quant_min, quant_max): the forum's MNIST normalisation over 0..127 and 0..255, the
# course's Fashion-MNIST one, [0, 1] unnormalised (zero point at the bottom), and a normalisation
# that leaves every pixel negative (the range must still be widened to include 0).
_INPUT_CASES = ((0.1307, 0.3081, 0, 127), (0.1307, 0.3081, 0, 255), (0.2860, 0.3530, 0, 127),
                (0.0, 1.0, 0, 255), (1.5, 0.5, 0, 127))


def _observed_input_qparams(mean: float, std: float, quant_min: int, quant_max: int) -> tuple[float, int]:
    """What MinMaxObserver over [quant_min, quant_max] gives images whose pixels span [0, 1] before
    normalisation: the range [(0 - mean) / std, (1 - mean) / std]."""
    from torch.ao.quantization import MinMaxObserver

    observer = MinMaxObserver(quant_min=quant_min, quant_max=quant_max)
    observer((torch.tensor([0.0, 1.0]) - mean) / std)
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


@_checker("fn: your function fn(mean, std, quant_min, quant_max), returning (scale, zero_point)")
def check_input_qparams(fn) -> bool:
    """Does fn(mean, std, quant_min, quant_max) give the (scale, zero_point) MinMaxObserver chooses
    for normalised images, (pixel - mean) / std with pixels in [0, 1]? Scale to 1e-6 relative,
    zero point exactly, on the forum's MNIST case (over 127 and over 255 levels) and three others.
    """
    for mean, std, quant_min, quant_max in _INPUT_CASES:
        want_scale, want_zero_point = _observed_input_qparams(mean, std, quant_min, quant_max)
        case = f"mean={mean}, std={std}, levels {quant_min}..{quant_max}"
        answer = _call_learner(fn, mean, std, quant_min, quant_max)
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise _NotYet(f"for {case} your function returned {_describe(answer)}; expected a pair (scale, zero_point).",
                          "end with `return scale, zero_point`.")
        scale = _read_number(answer[0], f"for {case}, the scale")
        zero_point = _read_zero_point(answer[1], f"for {case}, the zero point")
        if not math.isclose(scale, want_scale, rel_tol=1e-6):
            lo, hi = (0 - mean) / std, (1 - mean) / std
            hint = (f"the pixels span [{lo:.4f}, {hi:.4f}] after normalisation; the range is widened to include 0, "
                    f"then S = (max - min) / (quant_max - quant_min), here over {quant_max - quant_min} steps.")
            if math.isclose(scale * (quant_max - quant_min + 1), want_scale * (quant_max - quant_min), rel_tol=1e-6):
                hint = f"divide by quant_max - quant_min = {quant_max - quant_min} (the number of steps), not by the number of levels."
            return report(False, "", f"for {case}, scale {scale:.6g} differs from the observer's {want_scale:.6g}.", hint)
        if zero_point != want_zero_point:
            return report(False, "", f"for {case}, zero point {zero_point} differs from the observer's {want_zero_point}.",
                          "Z = quant_min - round(min / S) (min of the range widened to include 0, so min <= 0), "
                          "clamped to [quant_min, quant_max].")
    forum_scale, forum_zero_point = _observed_input_qparams(*_INPUT_CASES[0])
    return report(True, f"the forum's line decodes: MNIST-normalised pixels over 0..127 give scale "
                  f"{forum_scale:.4f} and zero point {forum_zero_point}, as printed.")


# --- Exercise 7.3: an int8 weight back to floats ----------------------------------------------------

def _weight_cases() -> list[tuple[str, torch.Tensor]]:
    """Quantized weights of every kind a converted model holds, and the harder ones: per-tensor and
    per-channel, zero points of 0 (symmetric) and not, channels along axis 0 and along axis 1."""
    generator = torch.Generator().manual_seed(7)
    conv = torch.randn(8, 4, 3, 3, generator=generator) * 0.2
    linear = torch.randn(10, 16, generator=generator) * 0.1

    def scales(n):
        return torch.rand(n, generator=generator, dtype=torch.float64) * 0.01 + 0.001

    zero_points = torch.randint(-6, 7, (4,), generator=generator)
    return [
        ("a per-tensor symmetric conv weight", torch.quantize_per_tensor(conv, 0.004321, 0, torch.qint8)),
        ("a per-channel symmetric conv weight", torch.quantize_per_channel(conv, scales(8), torch.zeros(8, dtype=torch.long),
                                                                            0, torch.qint8)),
        ("a per-tensor weight with zero point 5", torch.quantize_per_tensor(linear, 0.00173, 5, torch.qint8)),
        ("a per-channel weight along axis 1 with non-zero zero points",
         torch.quantize_per_channel(conv, scales(4), zero_points, 1, torch.qint8)),
    ]


@_checker("fn: your function fn(weight) taking a quantized weight tensor and returning a float32 tensor of its shape")
def check_weight_by_hand(fn, *weights) -> bool:
    """Does fn(weight) rebuild weight.dequantize() from weight.int_repr() and its qparams, on
    per-tensor and per-channel weights (any channel axis, zero points of 0 or not) and on the
    `weights` passed (e.g. a converted layer's .weight())? Real values to float32 rounding (1e-6
    relative); the verdict says whether they are also equal bit for bit (torch.equal).
    """
    cases = _weight_cases() + [(f"the weight you passed ({i + 1})", w) for i, w in enumerate(weights)]
    inexact = []
    for label, weight in cases:
        if not (isinstance(weight, torch.Tensor) and weight.is_quantized):
            raise _NotYet(f"{label} is {_describe(weight)}, not a quantized tensor.",
                          "pass a converted layer's weight, e.g. model.features[0].weight().")
        want = weight.dequantize()
        got = _read_tensor(_call_learner(fn, weight), f"on {label}, you returned", "a float32 tensor of real values")
        _require_shape(got, got, want.shape, f"on {label}, you returned")
        if got.dtype != torch.float32:
            raise _NotYet(f"on {label}, you returned a {got.dtype} tensor.",
                          "return float32, as dequantize() does: convert the product with .float() at the end.")
        if torch.equal(got, want):
            continue
        if torch.allclose(got, want, rtol=1e-6, atol=0):
            inexact.append(label)
            continue
        wrong = ~torch.isclose(got, want, rtol=1e-6, atol=0)
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            hint = (f"this weight's channels lie along axis {weight.q_per_channel_axis()} "
                    "(weight.q_per_channel_axis()): shape its scales and zero points to broadcast along that axis, "
                    "and subtract the zero points before scaling.")
        else:
            hint = ("real value = (q - zero_point) * scale, with q = weight.int_repr() and the tensor's q_scale() "
                    "and q_zero_point().")
        return report(False, "", f"on {label}: {int(wrong.sum())} of {want.numel()} values differ from "
                      "weight.dequantize().", hint)
    if inexact:
        return report(True, f"your function gives dequantize()'s values on {len(cases)} weights, per tensor and per "
                      f"channel; bit for bit on all but {len(inexact)} (e.g. {inexact[0]}), where it rounds once more "
                      "or less: dequantize() multiplies in float32 for a per-tensor weight, and in float64 (the dtype "
                      "of q_per_channel_scales()) before one rounding to float32 for a per-channel one.")
    return report(True, f"your function equals dequantize() bit for bit on {len(cases)} weights, per tensor and "
                  "per channel.")


# --- Exercise 7.4: every layer's activation qparams, read with forward hooks -------------------------

def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _reference_activation_qparams(qmodel, sample) -> dict[str, tuple[float, int]]:
    """{module path: (scale, zero_point)} of every module whose forward returns a quantized tensor."""
    from ..engines import engine_active, engine_of

    found, handles = {}, []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_quantized and name not in found:
                found[name] = (float(output.q_scale()), int(output.q_zero_point()))
        return hook

    for name, module in qmodel.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with engine_active(engine_of(qmodel)), torch.inference_mode():
            qmodel(sample)
    finally:
        for handle in handles:
            handle.remove()
    return found


@_checker("fn: your function fn(qmodel, sample) returning a dict {module name: (scale, zero_point)}; "
          "qmodel: a converted model; sample: one input batch")
def check_activation_qparams(fn, qmodel, sample) -> bool:
    """Does fn(qmodel, sample) return, for every module whose output is a quantized tensor, the
    (scale, zero_point) of that output, keyed by the module's path in named_modules(), and leave no
    hook behind? The layers with weights and the QuantStub must match their stored .scale /
    .zero_point (the forum answer's attributes); every other key must match the output it names."""
    from ..engines import engine_active, engine_of
    from ..inspection import _stored_output_qparams

    if not isinstance(qmodel, torch.nn.Module):
        raise _NotYet(f"qmodel is {_describe(qmodel)}; expected a converted model (an nn.Module).")
    if not isinstance(sample, torch.Tensor):
        raise _NotYet(f"sample is {_describe(sample)}; expected a batch of input images (a float tensor).")
    reference = _reference_activation_qparams(qmodel, sample)
    if not reference:
        raise _NotYet("no module of this model returns a quantized tensor: is it converted?",
                      "pass the model returned by torch.ao.quantization.convert.")
    hooks_before = _hook_count(qmodel)
    with engine_active(engine_of(qmodel)):
        answer = _call_learner(fn, qmodel, sample)
    left = _hook_count(qmodel) - hooks_before
    if left > 0:
        return report(False, "", f"your function left {left} forward hook(s) on the model.",
                      "keep the handle register_forward_hook returns and call handle.remove() on each, in a `finally:`.")
    if not isinstance(answer, dict):
        raise _NotYet(f"your function returned {_describe(answer)}; expected a dict {{module name: (scale, zero_point)}}.")
    stored = {name: _stored_output_qparams(module) for name, module in qmodel.named_modules() if name in reference}
    required = [name for name in reference if stored.get(name) is not None]
    for name, value in answer.items():
        if name not in reference:
            return report(False, "", f"{name!r} is not the name of a module that returned a quantized tensor.",
                          "use the names named_modules() gives (e.g. 'features.0'), and record only quantized outputs "
                          "(output.is_quantized).")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise _NotYet(f"the value for {name!r} is {_describe(value)}; expected a pair (scale, zero_point).")
        scale = _read_number(value[0], f"the scale of {name!r}")
        zero_point = _read_zero_point(value[1], f"the zero point of {name!r}")
        want_scale, want_zero_point = stored.get(name) or reference[name]
        if not math.isclose(scale, want_scale, rel_tol=1e-6) or zero_point != want_zero_point:
            return report(False, "", f"{name!r}: got ({scale:.6g}, {zero_point}), its output has ({want_scale:.6g}, "
                          f"{want_zero_point}).", "read the OUTPUT's qparams (the hook's third argument): "
                          "output.q_scale(), output.q_zero_point(); the inputs carry the previous layer's.")
    missing = [name for name in required if name not in answer]
    if missing:
        return report(False, "", f"{len(missing)} of the {len(required)} modules that store their output's qparams "
                      f"are missing, e.g. {missing[0]!r} (got keys {list(answer)[:4]}...).",
                      "register a hook on every module of qmodel.named_modules(), keyed by its name, not only on the "
                      "top-level children.")
    return report(True, f"{len(answer)} modules' output qparams, each equal to the module's own .scale / .zero_point "
                  "where it stores them; no hook left behind.")
