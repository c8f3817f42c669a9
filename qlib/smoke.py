"""The smoke switch: one environment variable that shrinks long work in tests.

BoTorch's tutorials run with SMOKE_TEST; ours read QLIB_SMOKE through `smoke()` so that a
notebook states its full size and its test size in one place: `n = sized(2048, smoke=256)`.
"""

import os

from .errors import BadInputError

ENV_VAR = "QLIB_SMOKE"


def smoke() -> bool:
    """True when QLIB_SMOKE is set to 1/true/yes/on (case-insensitive)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise BadInputError(f"{ENV_VAR}={value!r} is not understood: set it to 1 (smoke run) or 0 (full run).")


def sized(full, smoke_size):
    """`full` normally, `smoke_size` under the smoke switch."""
    return smoke_size if smoke() else full
