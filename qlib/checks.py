"""Exercise checkers: compare a learner's answer with what PyTorch computes, and say what is off.

Each check_* function prints "Correct!" or what differs plus a hint, and returns True / False so
that the instructor notebook can `assert` it. One small function per exercise; all share `report`.

A checker never raises and never accepts a wrong answer: `_checker` turns a refusal (`_NotYet`)
into a report, the learner's own exception into one naming its type, message and line, and any
other exception into "the checker could not read your answer" (KeyboardInterrupt and SystemExit
still pass: they are not answers). The `_read_*` helpers coerce an
answer or refuse it precisely (None, bool, not a number, quantized, complex, NaN / inf, shape,
non-integer zero point). Answers are judged by value: a float64 tensor, a numpy number, a list or
a one-element tensor holding the right value is right, and an integral float is a right zero point.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import sysconfig
import traceback

import numpy as np
import torch

from . import qmath
from .errors import kind_of

_ZERO_POINTS_ARE_INTEGERS = "zero points are integers, so that the real 0.0 is represented exactly."


def report(ok: bool, success: str, problem: str = "", hint: str = "") -> bool:
    """Print the verdict of a check; returns `ok`."""
    if ok:
        print(f"Correct! {success}")
    else:
        print(f"Not yet: {problem}")
        if hint:
            print(f"Hint: {hint}")
    return ok


class _NotYet(Exception):
    """A refused answer, raised from deep inside a checker and reported by `_checker`."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(problem)
        self.problem, self.hint = problem, hint


def _checker(expects: str):
    """Make a check_* total: it reports (False) instead of raising, whatever it is given.

    `expects` says what the answers should be; it is shown when the checker's own code fails on an
    answer it did not foresee, so the learner still learns what to pass.
    """
    def decorate(check):
        signature = inspect.signature(check).replace(return_annotation=inspect.Signature.empty)

        @functools.wraps(check)
        def total(*args, **kwargs):
            try:
                arguments = signature.bind(*args, **kwargs).arguments
            except TypeError as exc:
                return report(False, "", f"{check.__name__} was called with the wrong arguments ({exc}).",
                              f"call it as {check.__name__}{signature}.")
            try:
                return check(*args, **kwargs)
            except _NotYet as refusal:
                return report(False, "", refusal.problem, refusal.hint)
            except Exception as exc:  # the checker's own code failed on an unforeseen answer
                got = ", ".join(f"{name}={kind_of(value)}" for name, value in arguments.items())
                return report(False, "", f"the checker could not read your answer ({_exception_text(exc)}); "
                              f"it got {got}.", f"expected {expects}. If your answer is of that "
                              "form, the checker is at fault: please report it.")
        return total
    return decorate


def _exception_text(exc: BaseException, limit: int = 300) -> str:
    """'TypeError: message', shortened; safe even when the exception's str() itself fails."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message could not be printed)"
    message = " ".join(message.split())
    message = message if len(message) <= limit else message[:limit] + " ..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _library_folders() -> tuple[str, ...]:
    """Where Python, torch and qlib live: frames there are not the learner's code."""
    paths = sysconfig.get_paths()
    folders = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"], os.path.dirname(__file__)}
    return tuple(os.path.join(os.path.realpath(folder), "") for folder in folders)


def _learner_frame(exc: BaseException):
    """The deepest traceback frame in the learner's own code (None when there is none)."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # frame 0 is _call_learner's
    library = _library_folders()
    own = [frame for frame in frames if not os.path.realpath(frame.filename).startswith(library)]
    return own[-1] if own else None


def _where(frame) -> str:
    """Where the learner's code failed: the line is what they can fix (a notebook cell's file name is not)."""
    if frame is None:
        return "(not in your own code: no line of it is in the traceback)"
    code = f": {frame.line.strip()}" if frame.line else ""
    return f"in {frame.name}, line {frame.lineno}{code}"


def _is_unwritten_stub(exc: BaseException, frame) -> bool:
    """A `raise NotImplementedError` the learner has not replaced yet (not torch's own, for an
    op it lacks, which also raises NotImplementedError)."""
    return isinstance(exc, NotImplementedError) and frame is not None and (frame.line or "").startswith("raise")


def _call_learner(fn, *args):
    """fn(*args), or a refusal that reports the learner's own exception as such: its type, message
    and line, never mistaken for a wrong return value or for the checker failing."""
    if not callable(fn):
        raise _NotYet(f"expected your function, got {_describe(fn)}.",
                      "pass the function itself, e.g. check(my_function), without calling it.")
    try:
        return fn(*args)
    except Exception as exc:
        frame = _learner_frame(exc)
        if _is_unwritten_stub(exc, frame):
            raise _NotYet("the function is not written yet (it raises NotImplementedError).") from None
        raise _NotYet(f"your function raised {_exception_text(exc)}\n  {_where(frame)}\nIt returned "
                      "nothing, so there was no result to check.",
                      "call it yourself on a small input to see the full traceback.") from None


def _describe(value) -> str:
    """What the learner gave, for a message: its value when it is short, and its type."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return kind_of(value)
    try:
        shown = repr(value)
    except Exception:
        return kind_of(value)
    return f"{shown} ({kind_of(value)})" if len(shown) <= 40 else kind_of(value)


def _to_tensor(value, subject: str, expected: str) -> torch.Tensor:
    """value as a detached CPU tensor (Python floats kept in float64, so nothing is rounded away)."""
    if value is None:
        raise _NotYet(f"{subject} still None.", f"compute it: {expected}.")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            value = int(value) if isinstance(value, numbers.Integral) and abs(value) < 2**63 else float(value)
        tensor = torch.as_tensor(value)
        if tensor.is_floating_point() and not isinstance(value, np.ndarray):
            tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise _NotYet(f"{subject} {_describe(value)}; expected {expected}.") from None
    return tensor


def _refuse_unusable_dtype(tensor: torch.Tensor, value, subject: str, expected: str, integers: bool) -> None:
    """bool, complex and quantized tensors hold no plain numbers; float16 too few digits for reals."""
    if tensor.is_quantized:
        fix = ("return its integers with .int_repr()" if integers else
               "use its real values (.dequantize()), or compute in float32")
        raise _NotYet(f"{subject} a quantized tensor; {fix}.", f"expected {expected}, not a {tensor.dtype} tensor.")
    if tensor.dtype == torch.bool:
        raise _NotYet(f"{subject} {_describe(value)}: a bool is not a number here.", f"expected {expected}.")
    if tensor.is_complex():
        raise _NotYet(f"{subject} {_describe(value)}: complex, not real.", f"expected {expected}.")
    if not integers and tensor.dtype in (torch.float16, torch.bfloat16):
        raise _NotYet(f"{subject} {_describe(value)}: {tensor.dtype} keeps only about 3 significant digits.",
                      "compute in float32, as PyTorch's observers and kernels do.")


def _refuse_where(bad: torch.Tensor, tensor: torch.Tensor, value, subject: str, flaw: tuple[str, str],
                  hint: str) -> None:
    """Refuse the answer if any entry is `bad` (a mask); `flaw` words it for one value / for several."""
    if not bad.any():
        return
    if tensor.numel() == 1:
        raise _NotYet(f"{subject} {_describe(value)}, {flaw[0]}.", hint)
    example = tensor[bad].flatten()[0].item()
    raise _NotYet(f"{subject} {_describe(value)}, with {int(bad.sum())} {flaw[1]} value(s), e.g. {example:.6g}.",
                  hint)


def _refuse_non_finite(tensor: torch.Tensor, value, subject: str, expected: str) -> None:
    """NaN compares unequal to everything, so it must be refused by name, never judged by comparison."""
    if tensor.is_floating_point():
        _refuse_where(~torch.isfinite(tensor), tensor, value, subject, ("not a finite number", "NaN or infinite"),
                      f"expected {expected}; look for a division by zero or an overflow.")


def _refuse_non_integers(tensor: torch.Tensor, value, subject: str, hint: str) -> None:
    """Refuse 0.9 rather than truncate it to 0: an integral float (3.0) passes, its value being right."""
    if tensor.is_floating_point():
        _refuse_where(tensor != tensor.round(), tensor, value, subject, ("not an integer", "non-integer"), hint)


def _read_tensor(value, subject: str, expected: str, integers: bool = False, hint: str = "") -> torch.Tensor:
    """The learner's answer as a detached CPU tensor of finite real numbers (of integers when
    `integers`), or a refusal saying exactly why not. `subject` starts each message ("scale is")."""
    tensor = _to_tensor(value, subject, expected)
    _refuse_unusable_dtype(tensor, value, subject, expected, integers)
    _refuse_non_finite(tensor, value, subject, expected)
    if integers:
        _refuse_non_integers(tensor, value, subject, hint or f"expected {expected}.")
    return tensor


def _read_number(value, name: str, integer: bool = False, hint: str = ""):
    """One finite number (a Python int when `integer`) from any form holding exactly one value."""
    expected = f"one {'integer' if integer else 'number'}"
    tensor = _read_tensor(value, f"{name} is", expected, integer, hint)
    if tensor.numel() != 1:
        raise _NotYet(f"{name} is {_describe(value)}; expected {expected}.", hint)
    number = tensor.item()
    return int(number) if integer else float(number)


def _read_zero_point(value, name: str = "zero_point") -> int:
    """A zero point as a Python int; non-integers are refused with the reason zero points are integers."""
    return _read_number(value, name, integer=True, hint=_ZERO_POINTS_ARE_INTEGERS)


def _require_shape(tensor: torch.Tensor, value, shape, subject: str, hint: str = "") -> None:
    """Shapes are compared before values, so that a broadcasting slip is named as such."""
    if tuple(tensor.shape) != tuple(shape):
        raise _NotYet(f"{subject} {_describe(value)}; expected a tensor of shape {tuple(shape)}.", hint)


def _read_pair(value, subject: str) -> tuple:
    """The two items of a (min, max) answer: a tuple or list of two, or a tensor / array of two values."""
    items = list(torch.as_tensor(value).flatten()) if isinstance(value, (torch.Tensor, np.ndarray)) else value
    if not isinstance(items, (tuple, list)) or len(items) != 2:
        raise _NotYet(f"{subject} {_describe(value)}; it should return a pair (min, max) of numbers.",
                      "end with `return lo, hi`.")
    return tuple(items)


def _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range):
    from torch.ao.quantization import MinMaxObserver

    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    observer = MinMaxObserver(dtype=dtype, qscheme=scheme, reduce_range=reduce_range)
    observer(torch.tensor([xmin, xmax], dtype=torch.float32))
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


@_checker("scale: one finite number (a float or a one-element tensor); zero_point: one integer")
def check_qparams(scale, zero_point, xmin, xmax, dtype=torch.quint8, symmetric=False,
                  reduce_range=False) -> bool:
    """Is (scale, zero_point) what MinMaxObserver chooses for data spanning [xmin, xmax]?

    Judged by value: a scale of any float dtype within 1e-6 (relative), a zero point with an
    integer value in any form (3, 3.0, torch.tensor(3)); a non-integer zero point is refused.
    """
    expected_scale, expected_zp = _observer_qparams(xmin, xmax, dtype, symmetric, reduce_range)
    setting = (f"{'symmetric' if symmetric else 'affine'} {str(dtype).split('.')[-1]}"
               f"{', reduce_range' if reduce_range else ''}")
    qmin, qmax = qmath.qrange(dtype, reduce_range)
    scale, zero_point = _read_number(scale, "scale"), _read_zero_point(zero_point)
    if not math.isclose(scale, expected_scale, rel_tol=1e-6):
        hint = (f"the range is first widened to include 0; then S = (max - min) / (qmax - qmin) with "
                f"[qmin, qmax] = [{qmin}, {qmax}].")
        if symmetric:
            hint = (f"symmetric: S = max(|min|, |max|) / ((qmax - qmin) / 2) with [qmin, qmax] = "
                    f"[{qmin}, {qmax}].")
        return report(False, "", f"scale {scale:.8g} differs from the observer's {expected_scale:.8g} "
                      f"({setting}).", hint)
    if zero_point != expected_zp:
        hint = ("symmetric: Z sits in the middle of the integers (0 for qint8, 128 for quint8)."
                if symmetric else
                f"Z = qmin - round(min / S), with round half to even (torch.round), clamped to [{qmin}, {qmax}].")
        return report(False, "", f"zero point {zero_point} differs from the observer's {expected_zp}.", hint)
    return report(True, f"S = {expected_scale:.8g}, Z = {expected_zp}, as MinMaxObserver ({setting}) computes.")


def _quantize_cases(dtype):
    qmin, qmax, _ = qmath.QRANGES[dtype]
    torch.manual_seed(0)
    scale = 0.05
    middle = 0 if qmin < 0 else 128
    return [
        ("ordinary values", torch.randn(1000), 0.02, min(max(3, qmin), qmax)),
        ("exact ties (x / S = k + 0.5)", (torch.arange(-20, 20) + 0.5) * 0.25, 0.25, 1 if qmin == 0 else -3),
        ("values beyond the range", torch.linspace(-1000, 1000, 101), scale, middle),
        ("zero point at the bottom of the range", torch.randn(100), 0.01, qmin),
    ]


def _read_quantized_integers(got, label: str, x: torch.Tensor, dtype) -> torch.Tensor:
    """The integers fn returned on one case, or a refusal: not a tensor of x's shape, floats
    (even integral ones: the exercise is to return integers, as .int_repr() does), or an integer
    dtype too narrow for [qmin, qmax]."""
    qmin, qmax, int_dtype = qmath.QRANGES[dtype]
    subject = f"on {label}, you returned"
    tensor = _read_tensor(got, subject, f"an integer tensor of shape {tuple(x.shape)}", integers=True,
                          hint="round x / S with torch.round before adding the zero point.")
    _require_shape(tensor, got, x.shape, subject)
    if tensor.is_floating_point():
        raise _NotYet(f"{subject} a float tensor ({tensor.dtype}).",
                      f"convert it to integers, e.g. .to({int_dtype}) after clamping.")
    if torch.iinfo(tensor.dtype).min > qmin or torch.iinfo(tensor.dtype).max < qmax:
        raise _NotYet(f"{subject} a {tensor.dtype} tensor, which cannot hold {dtype}'s range [{qmin}, {qmax}].",
                      f"convert with .to({int_dtype}) after clamping.")
    return tensor


@_checker("fn: your function fn(x, scale, zero_point), returning an integer tensor shaped like x")
def check_quantize(fn, dtype=torch.qint8) -> bool:
    """Does fn(x, scale, zero_point) return torch.quantize_per_tensor(...).int_repr()'s integers?

    Judged by value in any integer dtype wide enough for [qmin, qmax] (a list of ints too); float
    results are refused: the exercise is to produce the integers.
    """
    for label, x, scale, zero_point in _quantize_cases(dtype):
        expected = torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()
        got = _read_quantized_integers(_call_learner(fn, x.clone(), scale, zero_point), label, x, dtype)
        wrong = got.to(torch.int64) != expected.to(torch.int64)
        if wrong.any():
            i = int(wrong.nonzero()[0])
            hint = {
                "exact ties (x / S = k + 0.5)": "round x / S half to even (torch.round) and add the zero "
                                                "point after rounding, not before.",
                "values beyond the range": f"clamp to [{qmath.QRANGES[dtype][0]}, {qmath.QRANGES[dtype][1]}].",
            }.get(label, "q = clamp(round(x * (1 / S)) + Z, qmin, qmax), computed in float32.")
            return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} values differ; e.g. "
                          f"x = {x[i].item():.6g} (S = {scale}, Z = {zero_point}) gives {int(got[i])}, "
                          f"torch gives {int(expected[i])}.", hint)
    return report(True, f"your quantize equals torch.quantize_per_tensor(..., {dtype}) bit for bit "
                  "on ordinary values, exact ties and out-of-range values.")


@_checker("fn: your function fn(batches, c), returning a pair (min, max) of numbers")
def check_moving_average(fn, averaging_constant: float = 0.01) -> bool:
    """Does fn(batches, c) return the (min, max) MovingAverageMinMaxObserver ends with?

    Bit for bit, in any form holding the two numbers (tuple, list, tensor of two, Python floats):
    the exercise is to reproduce the observer's float32 arithmetic, so a float64 result counts
    only if it equals the float32 one exactly.
    """
    from torch.ao.quantization import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    batches = [torch.randn(64) * (1 + i) + i for i in range(5)]
    observer = MovingAverageMinMaxObserver(averaging_constant=averaging_constant)
    for batch in batches:
        observer(batch)
    expected = (float(observer.min_val), float(observer.max_val))
    lo, hi = _read_pair(_call_learner(fn, [b.clone() for b in batches], averaging_constant),
                        "your function returned")
    got = (_read_number(lo, "the min (the first value returned)"),
           _read_number(hi, "the max (the second value returned)"))
    if got == expected:
        return report(True, f"(min, max) = ({expected[0]:.6g}, {expected[1]:.6g}), as the observer computes.")
    close = all(math.isclose(g, e, rel_tol=1e-5) for g, e in zip(got, expected))
    hint = ("nearly there: compute in float32 tensors (torch.aminmax, then min + c * (cur - min)), as the "
            "observer does, to match bit for bit." if close else
            "the first batch sets min and max; each later batch moves them: min <- min + c * (batch_min - min).")
    return report(False, "", f"got {got}, the observer has {expected}.", hint)


@_checker("scales: one positive number per output channel (a tensor or list); zero_points: one integer "
          "per output channel")
def check_per_channel_qparams(scales, zero_points, weight: torch.Tensor) -> bool:
    """Are these the per-channel (axis 0) symmetric qint8 qparams of x86's weight observer?

    Judged by value in any shape holding one value per channel: scales of any float dtype but
    float16 / bfloat16 (too few digits to match to 1e-6), zero points with integer values.
    """
    from torch.ao.quantization import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight.detach())
    expected_s, expected_z = (v.to(torch.float64) for v in observer.calculate_qparams())
    channels = weight.shape[0]
    scales = _read_tensor(scales, "scales is", f"{channels} scales, one per output channel").flatten()
    zero_points = _read_tensor(zero_points, "zero_points is", f"{channels} integer zero points", integers=True,
                               hint=_ZERO_POINTS_ARE_INTEGERS).flatten()
    if scales.numel() != channels or zero_points.numel() != channels:
        return report(False, "", f"expected one scale and one zero point per output channel ({channels}), "
                      f"got {scales.numel()} and {zero_points.numel()}.", "reduce over every axis but 0.")
    if not torch.equal(zero_points.to(torch.float64), expected_z):
        return report(False, "", "the zero points differ.", "symmetric qint8 puts every zero point at 0.")
    differs = ~torch.isclose(scales.to(torch.float64), expected_s, rtol=1e-6, atol=0)
    if differs.any():
        c = int(differs.nonzero()[0])
        return report(False, "", f"{int(differs.sum())} of {channels} scales differ; channel {c}: "
                      f"{scales[c].item():.6g} vs {expected_s[c].item():.6g}.",
                      "per channel: S_c = max(|min_c|, |max_c|) / 127.5 (qmax - qmin = 255, halved).")
    return report(True, f"all {channels} scales and zero points equal PerChannelMinMaxObserver's.")


def _folding_hint(name: str, got: torch.Tensor) -> str:
    """The formula for `name`, prefixed by the likely cause when the answer is an integer tensor."""
    hint = ("w' = w * gamma / sqrt(running_var + eps): the square root of the variance plus eps."
            if name == "weight" else
            "b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta, with b = 0 for a "
            "conv without bias.")
    if not got.is_floating_point():
        hint = f"your {name} is an integer tensor ({got.dtype}), but the folded values are fractions. " + hint
    return hint


@_checker("weight and bias: float tensors shaped like the conv's weight and its output channels")
def check_folded_conv(weight, bias, conv, bn, rtol: float = 1e-5) -> bool:
    """Are (weight, bias) the Conv+BN folding of `bn(conv(.))` (eval mode), as qlib.fusion.fold_bn gives?

    Judged by value, to `rtol`: float32 or float64 tensors (or nested lists) of the right shape;
    float16 / bfloat16 are refused (too few digits).
    """
    from .fusion import fold_bn

    expected = fold_bn(conv, bn)
    for name, answer, want in (("weight", weight, expected.weight.detach()), ("bias", bias, expected.bias.detach())):
        got = _read_tensor(answer, f"{name} is", f"a float tensor of shape {tuple(want.shape)}")
        hint = ("gamma / sqrt(var + eps) has one value per output channel: reshape it to (-1, 1, 1, 1) "
                "to scale each filter." if name == "weight" else "the bias has one value per output channel.")
        _require_shape(got, answer, want.shape, f"{name} is", hint)
        error = (got.to(torch.float64) - want.to(torch.float64)).abs()
        if (error > rtol * (want.abs().to(torch.float64) + float(want.abs().max()))).any():
            channel = int(error.flatten(1).amax(1).argmax()) if error.dim() > 1 else int(error.argmax())
            return report(False, "", f"{name} differs from the folded one, first at output channel {channel}.",
                          _folding_hint(name, got))
    return report(True, "The folded convolution equals BN(conv(x)) in eval mode.")


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


def _fake_quantize_cases():
    """(label, x, scale, zero_point, quant_min, quant_max): the cases a fake quantizer must get exactly."""
    torch.manual_seed(0)
    edge = torch.tensor([-0.6, -0.5, -0.4, 0.0, 0.4, 0.5, 0.6])
    return [
        ("ordinary values, 8-bit range", torch.randn(2000) * 2, 0.02, 3, -128, 127),
        # x = -43.845 is a near-tie at the lower edge: round(x * (1 / S)) = -119 (clipped), round(x / S) = -118
        ("near-ties with an inexact inverse scale (x / S close to k + 0.5, S = 0.37)",
         (torch.arange(-120, 120) + 0.5) * 0.37, 0.37, 0, -118, 127),
        ("exact ties (x / S = k + 0.5)", (torch.arange(-40, 40) + 0.5) * 0.25, 0.25, 1, 0, 255),
        ("values beyond a 4-bit range", torch.linspace(-3, 3, 241), 0.1, 0, -8, 7),
        ("values within half a step of the edges", torch.cat([(edge - 8) * 0.1, (edge + 7) * 0.1]), 0.1, 0, -8, 7),
    ]


def _torch_fake_quantize(x, scale, zero_point, quant_min, quant_max, grad_output=None):
    """torch's fake quantization of x, and the gradient it sends back for `grad_output`."""
    x = x.clone().requires_grad_(True)
    y = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    y.backward(torch.ones_like(y) if grad_output is None else grad_output)
    return y.detach(), x.grad


def _read_real_result(got, label: str, x: torch.Tensor, what: str) -> torch.Tensor:
    subject = f"on {label}, your function returned"
    tensor = _read_tensor(got, subject, f"a float tensor of shape {tuple(x.shape)} ({what})")
    _require_shape(tensor, got, x.shape, subject)
    return tensor


@_checker("fn: your function fn(x, scale, zero_point, quant_min, quant_max), returning a float tensor shaped like x")
def check_fake_quantize(fn) -> bool:
    """Does fn(x, scale, zero_point, quant_min, quant_max) equal torch.fake_quantize_per_tensor_affine
    bit for bit (torch.equal once both are float32)?

    A float64 answer counts only if it holds exactly the float32 values; an integer answer is refused
    (fake quantization returns reals on the grid, not the integers).
    """
    for label, x, scale, zero_point, qmin, qmax in _fake_quantize_cases():
        expected, _ = _torch_fake_quantize(x, scale, zero_point, qmin, qmax)
        got = _read_real_result(_call_learner(fn, x.clone(), scale, zero_point, qmin, qmax), label, x,
                                "the dequantized values")
        if not got.is_floating_point():
            return report(False, "", f"on {label}, your function returned integers ({got.dtype}).",
                          "that is the quantize half: dequantize them, (q - zero_point) * scale.")
        if torch.equal(got.to(torch.float64), expected.to(torch.float64)):
            continue
        wrong = got.to(torch.float64) != expected.to(torch.float64)
        i = int(wrong.nonzero()[0])
        _, passed = _torch_fake_quantize(x, scale, zero_point, qmin, qmax)
        if not bool(passed[wrong].any()):  # wrong only where torch clips
            hint = f"clamp the integers to [quant_min, quant_max] = [{qmin}, {qmax}] before dequantizing."
        elif label.startswith("exact ties"):
            hint = "round half to even (torch.round), and add the zero point after rounding, not before."
        elif label.startswith("near-ties"):
            hint = ("torch multiplies by the inverse of the scale, round(x * (1 / scale)), not x / scale: near a "
                    "tie the two round to different integers.")
        else:
            hint = ("q = clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max), then (q - zero_point) "
                    "* scale.")
        return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} values differ; e.g. x = "
                      f"{x[i].item():.7g} (S = {scale}, Z = {zero_point}, range [{qmin}, {qmax}]) gives "
                      f"{got[i].item():.7g}, torch gives {expected[i].item():.7g}.", hint)
    return report(True, "your fake quantization equals torch.fake_quantize_per_tensor_affine bit for bit, on "
                  "ordinary values, exact ties, an inexact inverse scale and values beyond a 4-bit range.")


@_checker("fn: your function fn(grad_output, x, scale, zero_point, quant_min, quant_max), returning a float "
          "tensor shaped like x")
def check_ste_gradient(fn) -> bool:
    """Does fn(grad_output, x, scale, zero_point, quant_min, quant_max) return the gradient that
    torch.fake_quantize_per_tensor_affine sends back to x (the straight-through estimator)? Exactly.
    """
    for label, x, scale, zero_point, qmin, qmax in _fake_quantize_cases():
        grad_output = torch.rand_like(x) + 0.5
        _, expected = _torch_fake_quantize(x, scale, zero_point, qmin, qmax, grad_output)
        got = _read_real_result(_call_learner(fn, grad_output.clone(), x.clone(), scale, zero_point, qmin, qmax),
                                label, x, "the gradient with respect to x")
        if torch.equal(got.to(torch.float64), expected.to(torch.float64)):
            continue
        wrong = got.to(torch.float64) != expected.to(torch.float64)
        i = int(wrong.nonzero()[0])
        lo, hi = scale * (qmin - zero_point), scale * (qmax - zero_point)
        beyond = (x < lo) | (x > hi)
        if bool((got == 0).all()):
            hint = ("the true derivative of round() is 0 almost everywhere, which is why training would stall; the "
                    "straight-through estimator passes grad_output through where x was not clipped.")
        elif torch.equal(got.to(torch.float64), (expected != 0).to(torch.float64)):
            hint = "that is the mask; the gradient is grad_output times it (the chain rule)."
        elif torch.equal(got.to(torch.float64), grad_output.to(torch.float64)):
            hint = "where x was clipped (beyond quant_min or quant_max) the output is constant: the gradient is 0 there."
        elif label.startswith("near-ties"):
            hint = ("decide on the integer torch computes, round(x * (1 / scale)) + zero_point, not x / scale: near "
                    "a tie at the edge of the range the two round to different integers, one of them clipped.")
        elif bool(beyond[wrong].all()):
            hint = ("a value is clipped only if its rounded integer round(x * (1 / scale)) + zero_point falls outside "
                    "[quant_min, quant_max]: values within half a step beyond the edge round onto it and keep "
                    "their gradient.")
        else:
            hint = "inside the range the gradient is grad_output itself (round() is treated as the identity)."
        return report(False, "", f"on {label}: {int(wrong.sum())} of {x.numel()} gradients differ; e.g. x = "
                      f"{x[i].item():.7g} (S = {scale}, Z = {zero_point}, range [{qmin}, {qmax}]) gets "
                      f"{got[i].item():.7g}, torch gives {expected[i].item():.7g}.", hint)
    return report(True, "your gradient equals the one torch.fake_quantize_per_tensor_affine sends back: grad_output "
                  "where the value was inside the grid's range, 0 where it was clipped.")


# --- notebook 10: per-layer SQNR and float islands --------------------------------------------------

@_checker("sqnr_db: one number, the layer's SQNR in dB (a float or a one-element tensor)")
def check_layer_sqnr(sqnr_db, float_model, qmodel, images, layer: str) -> bool:
    """Is `sqnr_db` the SQNR (dB) of layer `layer`'s int8 output against the fused float twin's, both
    models fed `images`, as qlib.sensitivity.layer_sqnr computes it (propagated_db)?

    Judged to 0.005 dB: float32 sums (the learner's) and float64 ones (qlib's) differ by far less,
    while each mistake below moves the answer by whole decibels.
    """
    from .sensitivity import layer_sqnr

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
    from . import ptq
    from .errors import QlibError

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
def check_float_island(model, layer: str, float_model, images, qconfig=None, engine: str = "x86") -> bool:
    """Does `model` (fused, with `layer` wrapped by the learner) convert into an int8 model that
    keeps exactly `layer` in float and computes, bit for bit, what qlib.sensitivity.keep_in_float's
    island computes, both calibrated on `images` with `qconfig`?
    """
    from .engines import engine_active
    from .sensitivity import fused_float, keep_in_float

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

def _graph_quantize_node(converted, tensor: str):
    """The quantize_per_tensor node of a converted PT2E graph that quantizes node `tensor`'s output."""
    if not isinstance(converted, torch.fx.GraphModule):
        raise _NotYet(f"the model is {_describe(converted)}; expected the converted PT2E graph (what convert_pt2e "
                      "returns, a torch.fx.GraphModule).")
    names = {node.name for node in converted.graph.nodes}
    if tensor not in names:
        raise _NotYet(f"the graph has no node named {tensor!r}.", "node names are those of converted.graph.nodes "
                      "(print(converted.graph) lists them), e.g. 'relu'.")
    for node in converted.graph.nodes:
        if (node.op == "call_function" and str(node.target).startswith("quantized_decomposed.quantize_per_tensor")
                and isinstance(node.args[0], torch.fx.Node) and node.args[0].name == tensor):
            return node
    raise _NotYet(f"the graph does not quantize the output of {tensor!r}: no quantize_per_tensor reads it.",
                  "pick a node that a quantize_per_tensor node takes as its first argument.")


@_checker("scale: one number; zero_point: one integer")
def check_graph_qparams(scale, zero_point, converted, tensor: str) -> bool:
    """Are (scale, zero_point) what the converted PT2E graph quantizes node `tensor`'s output with?

    convert_pt2e writes them as literal arguments of a quantize_per_tensor node: (input, scale,
    zero_point, quant_min, quant_max, dtype). Judged by value: a scale within 1e-6 (relative) in
    any form, a zero point with an integer value; a non-integer zero point is refused.
    """
    node = _graph_quantize_node(converted, tensor)
    want_scale, want_zero_point = float(node.args[1]), int(node.args[2])
    scale, zero_point = _read_number(scale, "scale"), _read_zero_point(zero_point)
    where = (f"the graph node {node.name} = quantize_per_tensor({tensor}, scale, zero_point, quant_min, quant_max, "
             "dtype)")
    if not math.isclose(scale, want_scale, rel_tol=1e-6):
        return report(False, "", f"{scale:.8g} is not the scale the graph quantizes {tensor!r} with.",
                      f"find the node whose target is quantize_per_tensor and whose args[0] is {tensor!r}; "
                      "its args[1] is the scale.")
    if zero_point != want_zero_point:
        return report(False, "", f"{zero_point} is not the zero point the graph quantizes {tensor!r} with.",
                      f"it is args[2] of {node.name}; after a ReLU it is 0.")
    return report(True, f"{where}: scale {want_scale:.6g}, zero point {want_zero_point}, range "
                  f"{node.args[3]}..{node.args[4]}.")


@_checker("weight: an integer tensor, the int8 weight the graph stores for that layer")
def check_graph_weight(weight, converted, module: str) -> bool:
    """Is `weight` the int8 weight the converted PT2E graph stores for conv / linear `module`?

    convert_pt2e keeps each weight as an int8 constant that a dequantize_per_channel node reads
    right before the conv / linear. Judged with torch.equal on the integer values (any integer
    dtype wide enough for -128..127); floats are refused with the reason.
    """
    from . import pt2e

    if not isinstance(converted, torch.fx.GraphModule):
        raise _NotYet(f"the model is {_describe(converted)}; expected the converted PT2E graph (what convert_pt2e "
                      "returns, a torch.fx.GraphModule).")
    stored = pt2e.int8_weights(converted)
    if module not in stored:
        raise _NotYet(f"the graph has no conv or linear layer from module {module!r}.",
                      f"modules with an int8 weight: {', '.join(list(stored)[:6])}...")
    want = stored[module][0]
    subject = "weight is"
    got = _read_tensor(weight, subject, f"an int8 tensor of shape {tuple(want.shape)}", integers=True,
                       hint="the graph stores integers: read the int8 constant the dequantize_per_channel node "
                            "reads, not the float weight.")
    _require_shape(got, weight, want.shape, subject, "take the whole constant the dequantize_per_channel node "
                   "reads, not a slice of it.")
    if got.is_floating_point():
        return report(False, "", f"{subject} a float tensor ({got.dtype}): the float weight, or its dequantized "
                      "values, not the int8 integers the graph stores.",
                      "the conv node's args[1] is a dequantize_per_channel node; its args[0] is a get_attr node "
                      "whose target names the int8 constant: getattr(converted, node.target).")
    if torch.equal(got.to(torch.int64), want.to(torch.int64)):
        return report(True, f"the graph stores {module}'s weight as {tuple(want.shape)} int8 values, "
                      f"from {int(want.min())} to {int(want.max())}, with {stored[module][1].numel()} "
                      "per-channel scales.")
    other = [name for name, (w, _s) in stored.items()
             if name != module and w.shape == got.shape and torch.equal(w.to(torch.int64), got.to(torch.int64))]
    hint = (f"that is the weight of {other[0]}: pick the conv2d node whose nn_module_stack ends with {module!r}."
            if other else "read the int8 constant itself (getattr(converted, get_attr_node.target)), not a "
            "requantized copy.")
    differ = int((got.to(torch.int64) != want.to(torch.int64)).sum())
    return report(False, "", f"{differ} of {want.numel()} values differ from the int8 weight the graph stores "
                  f"for {module}.", hint)
