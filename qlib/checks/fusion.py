"""Notebook 05: the int8 ReLU, Conv + BatchNorm folding, and the module surgery of fuse_modules."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .core import _NotYet, _call_learner, _checker, _describe, _read_tensor, _require_shape, report


def _folding_hint(name: str, got: torch.Tensor) -> str:
    """The formula for `name`, prefixed by the likely cause when the answer is an integer tensor."""
    hint = ("w' = w * gamma / sqrt(running_var + eps): the square root of the variance plus eps."
            if name == "weight" else
            "b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta, with b = 0 for a "
            "conv without bias.")
    if not got.is_floating_point():
        hint = f"your {name} is an integer tensor ({got.dtype}), but the folded values are fractions. " + hint
    return hint


def _compare_folded(weight, bias, expected: nn.Conv2d, rtol: float, where: str = "") -> tuple[str, str] | None:
    """None when (weight, bias) equal the folded conv's to `rtol`, else (problem, hint); refuses bad tensors."""
    for name, answer, want in (("weight", weight, expected.weight.detach()), ("bias", bias, expected.bias.detach())):
        got = _read_tensor(answer, f"{where}{name} is", f"a float tensor of shape {tuple(want.shape)}")
        hint = ("gamma / sqrt(var + eps) has one value per output channel: reshape it to (-1, 1, 1, 1) "
                "to scale each filter." if name == "weight" else "the bias has one value per output channel.")
        _require_shape(got, answer, want.shape, f"{where}{name} is", hint)
        error = (got.to(torch.float64) - want.to(torch.float64)).abs()
        if (error > rtol * (want.abs().to(torch.float64) + float(want.abs().max()))).any():
            channel = int(error.flatten(1).amax(1).argmax()) if error.dim() > 1 else int(error.argmax())
            return f"{where}{name} differs from the folded one, first at output channel {channel}.", _folding_hint(name, got)
    return None


@_checker("weight and bias: float tensors shaped like the conv's weight and its output channels")
def check_folded_conv(weight, bias, conv, bn, rtol: float = 1e-5) -> bool:
    """Are (weight, bias) the Conv+BN folding of `bn(conv(.))` (eval mode), as qlib.fusion.fold_bn gives?

    Judged by value, to `rtol`: float32 or float64 tensors (or nested lists) of the right shape;
    float16 / bfloat16 are refused (too few digits).
    """
    from ..fusion import fold_bn

    wrong = _compare_folded(weight, bias, fold_bn(conv, bn), rtol)
    if wrong:
        return report(False, "", *wrong)
    return report(True, "The folded convolution equals BN(conv(x)) in eval mode.")


# --------------------------------------------------------------------------------- the int8 ReLU


def _relu_cases():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5) * 3
    return [("a conv output with zero point 60", torch.quantize_per_tensor(x, 0.08, 60, torch.quint8)),
            ("values already non-negative (zero point 0)", torch.quantize_per_tensor(x.abs(), 0.05, 0, torch.quint8)),
            ("a range that is mostly negative (zero point 200)", torch.quantize_per_tensor(x, 0.04, 200, torch.quint8))]


@_checker("fn: your function fn(q) of a quint8 tensor, returning an integer tensor shaped like q")
def check_int8_relu(fn) -> bool:
    """Does fn(q) return the integers of torch.relu(q) (torch.relu(q).int_repr()), bit for bit?"""
    for label, q in _relu_cases():
        expected = torch.relu(q).int_repr()
        answer = _call_learner(fn, q.clone())
        subject = f"on {label}, you returned"
        if isinstance(answer, torch.Tensor) and answer.is_floating_point():
            raise _NotYet(f"{subject} a float tensor ({answer.dtype}).", "return the integers the ReLU leaves "
                          "in the tensor (like .int_repr()), not their real values.")
        got = _read_tensor(answer, subject, f"an integer tensor of shape {tuple(q.shape)}", integers=True)
        _require_shape(got, answer, q.shape, subject)
        wrong = got.to(torch.int64) != expected.to(torch.int64)
        if not wrong.any():
            continue
        z = q.q_zero_point()
        if torch.equal(got.to(torch.int64), q.int_repr().clamp(min=0).to(torch.int64)) and z != 0:
            hint = (f"the integers are already >= 0; the real value 0.0 is the integer zero_point = {z}: clamp "
                    "there (q_int >= zero_point means x >= 0).")
        else:
            hint = "relu(x) = max(x, 0), and x >= 0 exactly when q_int >= zero_point: clamp the integers from below at it."
        i = int(wrong.flatten().nonzero()[0])
        return report(False, "", f"on {label}: {int(wrong.sum())} of {q.numel()} integers differ; e.g. "
                      f"{int(q.int_repr().flatten()[i])} (zero point {z}) gives {int(got.flatten()[i])}, "
                      f"torch.relu gives {int(expected.flatten()[i])}.", hint)
    return report(True, "your ReLU on the integers equals torch.relu on quint8 tensors: a clamp at the zero "
                  "point, with the same scale and zero point, so no requantization.")


# --------------------------------------------------------------------------------- folding


def _conv_bn(c_in, c_out, kernel, bias, groups=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias, groups=groups)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(c_out, generator=generator) * 2 - 1)
        bn.running_var.copy_(torch.rand(c_out, generator=generator) * 4 + 0.01)
        bn.weight.copy_(torch.rand(c_out, generator=generator) * 4 - 2)
        bn.bias.copy_(torch.rand(c_out, generator=generator) * 2 - 1)
    return conv.eval(), bn.eval()


def _named_state(conv: nn.Module, bn: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every tensor of conv and bn, by name, to see whether a function changed them."""
    return {f"{prefix}.{key}": value.clone() for prefix, module in (("conv", conv), ("bn", bn))
            for key, value in module.state_dict().items()}


def _torch_folded(conv, bn) -> nn.Conv2d:
    from torch.ao.quantization import fuse_modules

    return fuse_modules(nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)).eval(), [["0", "1"]])[0]


def _fold_cases():
    return [("a 3x3 conv without bias, as in the course's models", _conv_bn(3, 8, 3, bias=False)),
            ("a 1x1 conv with a bias", _conv_bn(4, 6, 1, bias=True, seed=1)),
            ("a depthwise 3x3 conv with a bias (groups=4)", _conv_bn(4, 4, 3, bias=True, groups=4, seed=2))]


@_checker("fn: your function fn(conv, bn), returning (weight, bias): float tensors")
def check_fold_conv_bn(fn, rtol: float = 1e-5) -> bool:
    """Does fn(conv, bn) return the weight and bias of the folded conv, as torch's fuse_modules folds
    them (to `rtol`), without changing conv or bn?"""
    for label, (conv, bn) in _fold_cases():
        before = _named_state(conv, bn)
        answer = _call_learner(fn, conv, bn)
        changed = [key for key, value in _named_state(conv, bn).items() if not torch.equal(value, before[key])]
        if changed:
            return report(False, "", f"on {label}, your function changed {changed[0]} in place.",
                          "compute new tensors (w * f, not w *= f), leaving the modules as they were.")
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise _NotYet(f"on {label}, your function returned {_describe(answer)}; expected a pair (weight, bias).",
                          "end with `return weight, bias`.")
        wrong = _compare_folded(*answer, _torch_folded(conv, bn), rtol, f"on {label}, ")
        if wrong:
            problem, hint = wrong
            if conv.bias is not None and "bias differs" in problem and "integer" not in hint:
                hint = "this conv has a bias b: b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta."
            return report(False, "", problem, hint)
    return report(True, "your folding equals fuse_modules' to float32 rounding, with and without a conv bias.")


# --------------------------------------------------------------------------------- module surgery


def _surgery_cases():
    """(label, model, groups, x), built one at a time."""
    from ..models import SeedNet, resnet18
    from .model import _bn_randomised

    torch.manual_seed(0)
    seednet = _bn_randomised(SeedNet())
    yield "SeedNet and all its groups (Linear+ReLU included)", seednet, seednet.fuse_groups(), torch.randn(4, 1, 28, 28)
    resnet = _bn_randomised(resnet18(10, 1, 4, small_input=True, quantizable=True))
    yield "the quantizable ResNet-18 (width 4) and its groups", resnet, resnet.fuse_groups(), torch.randn(2, 1, 16, 16)


def _types(model: nn.Module) -> dict[str, type]:
    """The type at every name (a module held under two names counts under each)."""
    return {name: type(module) for name, module in model.named_modules(remove_duplicate=False)}


def _type_name(kind: type) -> str:
    """nn.Identity, torch.ao.nn.intrinsic.ConvReLU2d: the names a learner writes."""
    if getattr(nn, kind.__name__, None) is kind:
        return f"nn.{kind.__name__}"
    if kind.__module__.startswith("torch.ao.nn.intrinsic.modules"):
        return f"torch.ao.nn.intrinsic.{kind.__name__}"
    return f"{kind.__module__}.{kind.__name__}"


def _differing_state(mine: nn.Module, theirs: nn.Module, rtol: float) -> str | None:
    ours, reference = mine.state_dict(), theirs.state_dict()
    if list(ours) != list(reference):
        extra, missing = sorted(set(ours) - set(reference)), sorted(set(reference) - set(ours))
        return f"its state dict has {extra[:2]} where fuse_modules' has {missing[:2]}" if extra or missing else \
            "its state dict lists the same tensors in another order"
    for key, want in reference.items():
        got = ours[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            return f"{key} is {_describe(got)}, fuse_modules' is {_describe(want)}"
        if want.is_floating_point():
            error = (got.double() - want.double()).abs()
            if (error > rtol * (want.double().abs() + float(want.abs().max()))).any():
                return f"{key} differs from fuse_modules' by up to {float(error.max()):.3g}"
        elif not torch.equal(got, want):
            return f"{key} differs from fuse_modules'"
    return None


@_checker("fn: your function fn(model, groups), returning a fused copy of the model")
def check_fuse_by_hand(fn, rtol: float = 1e-5) -> bool:
    """Does fn(model, groups) do fuse_modules(model, groups, inplace=False)'s surgery: the input left
    untouched, the same module type at every name, the same folded tensors (to float32 rounding)?"""
    from torch.ao.quantization import fuse_modules

    for label, model, groups, x in _surgery_cases():
        original = copy.deepcopy(model)
        theirs = fuse_modules(model, groups, inplace=False)
        mine = _call_learner(fn, model, copy.deepcopy(groups))
        if _types(model) != _types(original) or any(not torch.equal(a, b) for a, b in zip(
                model.state_dict().values(), original.state_dict().values())):
            return report(False, "", f"on {label}, your function changed the model it was given.",
                          "work on a copy (copy.deepcopy(model)) and return the copy, as inplace=False does.")
        if not isinstance(mine, nn.Module):
            raise _NotYet(f"on {label}, your function returned {_describe(mine)}, not the fused model.",
                          "return the fused copy.")
        ours, reference = _types(mine), _types(theirs)
        for name, kind in reference.items():
            if ours.get(name) is not kind:
                got = "nothing" if name not in ours else _type_name(ours[name])
                hint = {"Identity": "every slot of a group but the first becomes an nn.Identity().",
                        "ConvReLU2d": "a [conv, bn, relu] group becomes torch.ao.nn.intrinsic.ConvReLU2d(folded_conv, "
                                      "relu) in the conv's slot.",
                        "LinearReLU": "a [linear, relu] group becomes torch.ao.nn.intrinsic.LinearReLU(linear, relu): "
                                      "nothing to fold, the pair is wrapped as it is.",
                        "Conv2d": "a [conv, bn] group becomes the folded nn.Conv2d itself in the conv's slot."
                        }.get(kind.__name__, "put the fused module in the first slot, nn.Identity() in the others.")
                return report(False, "", f"on {label}, at '{name}' your model has {got}; fuse_modules puts "
                              f"{_type_name(kind)} there.", hint)
        extra = sorted(set(ours) - set(reference))
        if extra:
            return report(False, "", f"on {label}, your model has modules fuse_modules does not: {extra[:3]}.",
                          "the fused module holds the folded conv (and the ReLU) directly, e.g. "
                          "ConvReLU2d(conv, relu) has children '0' and '1'.")
        differs = _differing_state(mine, theirs, rtol)
        if differs:
            return report(False, "", f"on {label}, {differs}.", "fold each [conv, bn] pair with fusion.fold_bn(conv, "
                          "bn) (equation 4) and put the folded conv in the fused module.")
        with torch.no_grad():
            got, want = _call_learner(mine.eval(), x), theirs(x)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.allclose(
                got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
            return report(False, "", f"on {label}, your fused model's output differs from fuse_modules'.",
                          "check that each fused module is in the slot of its group's first module.")
    return report(True, "your surgery gives fuse_modules' tree, type for type at every name, with the same folded "
                  "weights to float32 rounding, and leaves the model it was given untouched.")
