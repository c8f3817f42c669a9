"""Where the course keeps its files, relative to the repository, not the working directory.

nbval starts each kernel inside notebooks/, a learner may start one anywhere: every path is
therefore resolved from this file's location.
"""

import os
from pathlib import Path

from .errors import BadInputError, kind_of

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = DATA_DIR / "checkpoints"
MANIFEST = CHECKPOINT_DIR / "manifest.json"


def as_path(value, name: str) -> Path:
    """`value` as a Path, refusing what Path() would misread: "" (the current folder) or None (a TypeError)."""
    if isinstance(value, str) and not value.strip():
        raise BadInputError(f"{name} is an empty string, which would silently mean the current folder; "
                            "pass the folder or file you mean.")
    if not isinstance(value, (str, os.PathLike)):
        raise BadInputError(f"{name} must be a path (a str or a pathlib.Path), not {kind_of(value)} "
                            f"({value!r}); pass e.g. {name}=pathlib.Path('some/folder').")
    return Path(value)
