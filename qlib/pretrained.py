"""The course's committed checkpoints: what each one is, and loading it safely.

A checkpoint is a float32 state dict in data/checkpoints/NAME.pt; data/checkpoints/manifest.json
records its sha256 and how it was trained (`python -m qlib.train NAME` writes both). Loading
checks the sha256 first and then uses `torch.load(weights_only=True)`, which refuses pickled
code: a tampered or half-written file fails loudly instead of running or loading wrong weights.
Notebooks 00 and 03.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import QlibError
from .models import SeedNet, resnet18
from .paths import CHECKPOINT_DIR, MANIFEST, REPO_ROOT


@dataclass(frozen=True)
class Spec:
    """How to build the architecture a checkpoint belongs to, and how it was trained."""

    builder: Callable[..., nn.Module]
    kwargs: dict = field(default_factory=dict)
    epochs: int = 1
    max_lr: float = 0.1
    batch_size: int = 128
    description: str = ""

    def build(self, quantizable: bool = False) -> nn.Module:
        if self.builder is SeedNet:  # always quantizable: its stubs are identities in float
            return SeedNet(**self.kwargs)
        return self.builder(**self.kwargs, quantizable=quantizable)


CATALOGUE: dict[str, Spec] = {
    "seednet-fmnist": Spec(SeedNet, {}, epochs=8, max_lr=0.05, batch_size=128,
                           description="the forum question's CNN on Fashion-MNIST"),
    "resnet18-fmnist": Spec(resnet18, dict(num_classes=10, in_channels=1, width=16, small_input=True),
                            epochs=8, max_lr=0.1, batch_size=128,
                            description="ResNet-18, width 16, 3x3 stem, on Fashion-MNIST"),
}


class CheckpointError(QlibError, RuntimeError):
    """A checkpoint is missing, unknown, or does not match its manifest entry."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(manifest_path: Path = MANIFEST) -> dict:
    if not manifest_path.is_file():
        return {}
    return json.loads(manifest_path.read_text())


def checkpoint_path(name: str, directory: Path = CHECKPOINT_DIR) -> Path:
    return Path(directory) / f"{name}.pt"


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        return path


def _spec(name: str) -> Spec:
    if name not in CATALOGUE:
        raise CheckpointError(f"Unknown checkpoint {name!r}; the course ships {sorted(CATALOGUE)}.")
    return CATALOGUE[name]


def load_state_dict(name: str, directory: Path = CHECKPOINT_DIR, manifest_path: Path = MANIFEST) -> dict:
    """The verified state dict of checkpoint `name` (sha256 checked, loaded with weights_only)."""
    _spec(name)
    path = checkpoint_path(name, directory)
    rebuild = (f"Rebuild it with `python -m qlib.train {name}`, or restore the committed copy with "
               f"`git checkout -- {_relative(path)}`.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} is missing. {rebuild}")
    entry = read_manifest(manifest_path).get(name)
    if entry is None:
        raise CheckpointError(f"{manifest_path} has no entry for {name!r}, so {path} cannot be "
                              f"verified. {rebuild}")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise CheckpointError(f"Checkpoint file {path} does not match its manifest: sha256 {actual} "
                              f"!= {entry['sha256']}. The file was changed or is incomplete. {rebuild}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load(name: str, quantizable: bool = False, directory: Path = CHECKPOINT_DIR,
         manifest_path: Path = MANIFEST) -> nn.Module:
    """The float model of checkpoint `name`, weights verified, in eval mode.

    `quantizable=True` gives the FloatFunctional variant of the ResNet (same weights); SeedNet
    is always quantizable (its stubs do nothing in float).
    """
    model = _spec(name).build(quantizable=quantizable)
    model.load_state_dict(load_state_dict(name, directory, manifest_path))
    return model.eval()


def available() -> dict[str, dict]:
    """Manifest entries of the checkpoints present on disk, by name."""
    manifest = read_manifest()
    return {name: manifest[name] for name in CATALOGUE
            if name in manifest and checkpoint_path(name).is_file()}
