"""Where the course keeps its files, relative to the repository, not the working directory.

nbval starts each kernel inside notebooks/, a learner may start one anywhere: every path is
therefore resolved from this file's location.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = DATA_DIR / "checkpoints"
MANIFEST = CHECKPOINT_DIR / "manifest.json"
