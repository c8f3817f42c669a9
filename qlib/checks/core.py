"""What every checker shares: the verdict (`report`), the `_checker` decorator that makes a
checker total, and the `_read_*` helpers that coerce an answer or refuse it precisely.

A checker never raises and never accepts a wrong answer: `_checker` turns a refusal (`_NotYet`)
into a report, the learner's own exception into one naming its type, message and line, and any
other exception into "the checker could not read your answer" (KeyboardInterrupt and SystemExit
still pass: they are not answers). Answers are judged by value: a float64 tensor, a numpy number, a
list or a one-element tensor holding the right value is right, and an integral float is a right
zero point.
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

from ..errors import kind_of

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
    folders = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"], os.path.dirname(os.path.dirname(__file__))}
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
