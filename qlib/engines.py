"""Quantized engines: which this torch has, which one is active, which one a model was converted under.

A converted model's weights are pre-packed for the engine active at conversion (x86, fbgemm,
onednn, qnnpack), so it only runs under that engine: these helpers set it, restore it, and read
the `.qengine` that qlib.ptq records on the models it converts. Notebook 06, study 4.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator

import torch
from torch import nn

from .errors import check_choice


X86_64 = ("x86_64", "amd64")


def on_x86_64() -> bool:
    return platform.machine().lower() in X86_64


def available_engines() -> list[str]:
    """The quantized engines this torch build can run: without the placeholder 'none', and
    without fbgemm off x86-64 (Linux ARM64 torch lists it, then fails with "unknown architecure")."""
    return [e for e in torch_engines() if e != "none" and (e != "fbgemm" or on_x86_64())]


def torch_engines() -> list[str]:
    """The engines this torch build lists (its own word, before qlib's filter)."""
    return list(torch.backends.quantized.supported_engines)


def check_engine(engine: str) -> str:
    """`engine` itself, or an error naming the engines this torch build has."""
    return check_choice(engine, "engine", available_engines(), "a quantized engine this torch build has, so no "
                        "kernel could run the model")


# The engine the course quantizes for when a notebook does not study engines: x86 on x86-64 CPUs,
# qnnpack elsewhere (Apple Silicon, ARM Linux). Linux ARM64 torch also offers x86 and onednn (and
# makes x86 its default), but there they run oneDNN's ARM kernels, whose arithmetic the course's
# interpreter does not reproduce (data/kernel-recordings/arm64: replayed, not exact); QNNPACK's
# ARM kernels it reproduces bit for bit. QLIB_ENGINE overrides both.
PREFERRED_ENGINES = ("x86", "qnnpack")
ENGINE_VARIABLE = "QLIB_ENGINE"


def course_engine() -> str:
    """The one place that picks the engine the notebooks use: $QLIB_ENGINE if set (checked: a
    misspelt name is an error, never replaced by a default), else the first of PREFERRED_ENGINES
    this torch build has."""
    chosen = os.environ.get(ENGINE_VARIABLE)
    if chosen is not None:
        return check_choice(chosen, f"${ENGINE_VARIABLE}", available_engines(),
                            "a quantized engine this torch build has; unset it to let qlib choose")
    for engine in PREFERRED_ENGINES if on_x86_64() else PREFERRED_ENGINES[1:]:
        if engine in available_engines():
            return engine
    return check_choice(PREFERRED_ENGINES[-1], "the course's engine", available_engines(),
                        "an engine of this torch build; set $QLIB_ENGINE to one of them")


def resolve_engine(engine: str | None) -> str:
    """`engine` checked, or the course's engine when it is None (qlib's pipeline defaults)."""
    return course_engine() if engine is None else check_engine(engine)


def use_engine(engine: str) -> str:
    """Make `engine` torch's active quantized engine (prepacked weights are engine-specific)."""
    torch.backends.quantized.engine = check_engine(engine)
    return engine


@contextlib.contextmanager
def engine_active(engine: str | None) -> Iterator[str]:
    """Run a block under quantized `engine`, then restore the previous one (None: leave as is)."""
    previous = torch.backends.quantized.engine
    if engine is not None:
        use_engine(engine)
    try:
        yield torch.backends.quantized.engine
    finally:
        torch.backends.quantized.engine = previous


def engine_of(model) -> str | None:
    """The engine a model was converted under (set by quantize_static), None for float models
    (and for anything else without `.qengine`, such as an int8 Interpreter)."""
    return getattr(model, "qengine", None)
