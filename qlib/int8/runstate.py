"""The interpreter's per-thread run state: which layer is running, and whether a constant is being
computed offline (multipliers, int32 biases, tables: float allowed there), kept apart from any
layer's configuration so that layers, dispatch and the guard read it without importing each other.
"""

from __future__ import annotations

import contextlib
import threading

_LOCAL = threading.local()


@contextlib.contextmanager
def _setting(name: str, value):
    """Set a thread-local flag of the interpreter for the duration of a block."""
    previous = getattr(_LOCAL, name, None)
    setattr(_LOCAL, name, value)
    try:
        yield
    finally:
        setattr(_LOCAL, name, previous)


def inside(module=None):
    """Inside interpreter layers the interpreter's guard steps aside (they only read the integers)."""
    return _setting("module", module)


def current_layer():
    return getattr(_LOCAL, "module", None)


def offline():
    """Constants computed once per layer (multipliers, int32 biases, tables): float allowed here."""
    return _setting("offline", True)


def is_offline() -> bool:
    return bool(getattr(_LOCAL, "offline", False))
