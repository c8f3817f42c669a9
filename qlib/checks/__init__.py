"""Exercise checkers: compare a learner's answer with what PyTorch computes, and say what is off.

Each check_* function prints "Correct!" or what differs plus a hint, and returns True / False so
that a notebook's check cell can `assert` it. One small function per exercise, in one module per
notebook (`quantization` for 01, `observers` for 02, ... `pt2e` for 11); all share `core`: a
checker never raises and never accepts a wrong answer (see `core`). Every check_* of every module
is importable from here: `from qlib import checks; checks.check_quantize(...)`.
"""

from __future__ import annotations

import importlib

from .core import report

# One module per notebook, in course order; each module's check_* functions are re-exported.
MODULES = ("quantization", "observers", "model", "fusion", "calibration", "inspection", "int8",
           "qat", "debugging", "pt2e")


def _export_checkers() -> list[str]:
    names = []
    for module_name in MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for name in dir(module):
            if name.startswith("check_") and callable(getattr(module, name)):
                if name in globals():
                    raise ImportError(f"qlib.checks.{module_name}.{name} repeats a checker's name; rename one.")
                globals()[name] = getattr(module, name)
                names.append(name)
    return names


__all__ = ["report", *_export_checkers()]
