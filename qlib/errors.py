"""What qlib raises on bad input: one family of errors, each message saying what, why and how to fix.

Every error qlib raises on purpose derives from `QlibError`, so a notebook or an autograder can
catch them all with one `except`, and each also derives from the built-in class it refines
(ValueError, TypeError, RuntimeError, FileNotFoundError) so that code written against torch's
conventions still catches it. The message always has three parts: what was passed or done, why
that cannot work (or what it would silently get wrong), and what to pass or do instead.
"""

from __future__ import annotations


class QlibError(Exception):
    """Base of every error qlib raises on purpose."""


class BadInputError(QlibError, ValueError):
    """An argument has the wrong type, shape, dtype or value (NaN, negative count, unknown name)."""


class PipelineOrderError(QlibError, RuntimeError):
    """A step of prepare -> calibrate -> convert was skipped or run on the wrong kind of model."""


class NotQuantizableError(QlibError, TypeError):
    """The model lacks what eager-mode static quantization needs (stubs, FloatFunctional)."""


def kind_of(value) -> str:
    """A short description of `value` for an error message: type, and dtype / shape for tensors."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        noun = f"{str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    elif isinstance(value, np.ndarray):
        noun = f"numpy array ({value.dtype}, shape {value.shape})"
    else:
        noun = type(value).__name__
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def shown(value) -> str:
    """`value` as an error message shows it: an int or None as written (`0`), a short number or string
    with its kind (`a float (2.5)`, `a str ('64')`, `a bool (True)`), anything else by its kind."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return repr(value)
    if isinstance(value, (bool, float)) or (isinstance(value, str) and len(value) <= 40):
        return f"{kind_of(value)} ({value!r})"
    return kind_of(value)


def check_whole(value, what: str, minimum: int = 0, maximum: int | None = None, example=None, why: str = ""):
    """`value` if it is a whole number in [minimum, maximum]: counts, sizes and seeds (2.5 images, True
    or '64' would fail deep inside torch, or silently mean something else)."""
    import numbers

    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or (maximum is not None and value > maximum)):
        example = minimum if example is None else example
        raise BadInputError(f"{what} must be a whole number {bounds}, not {shown(value)}{why}; "
                            f"pass e.g. {what}={example}.")
    return value


def check_flag(value, what: str):
    """`value` if it is True or False: a string such as 'no' is truthy and would silently mean True."""
    if not isinstance(value, bool):
        raise BadInputError(f"{what} must be True or False, not {shown(value)}: a string such "
                            "as 'no' is truthy and would silently mean True.")
    return value


def check_choice(value, what: str, choices, why: str = "", extra: str = ""):
    """`value` if it is one of `choices` (names: an empty or misspelt one is never replaced by a
    default, which would do something else in silence), else an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise BadInputError(f"{what}={value!r} is not {why or 'a name qlib knows here'}. Pass one of "
                            f"{list(choices)}{extra}.")
    return value
