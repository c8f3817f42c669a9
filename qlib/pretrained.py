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
import pickle
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import BadInputError, QlibError, kind_of
from .models import SeedNet, resnet18
from .paths import CHECKPOINT_DIR, MANIFEST, REPO_ROOT, as_path


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
    """A checkpoint or the manifest is missing, unknown, unreadable, or they do not match."""


SHA256_DIGITS = 64
# What torch.load raises on a file it refuses or cannot parse (pickled code, a broken zip archive).
_TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def spec(name: str) -> Spec:
    """The catalogue entry of checkpoint `name`, or an error listing the names the course ships."""
    if not isinstance(name, str):
        raise BadInputError(f"A checkpoint name is a string, not {kind_of(name)} ({name!r}); "
                            f"pass one of {sorted(CATALOGUE)}.")
    if name not in CATALOGUE:
        raise CheckpointError(f"Unknown checkpoint {name!r}: the course ships only {sorted(CATALOGUE)}; "
                              "pass one of these names.")
    return CATALOGUE[name]


def checkpoint_path(name: str, directory: Path = CHECKPOINT_DIR) -> Path:
    return as_path(directory, "directory") / f"{name}.pt"


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        return path


def _json_kind(value) -> str:
    """What JSON calls the type of `value`, for messages about a manifest's content."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _manifest_fix(manifest_path: Path) -> str:
    return (f"Restore the committed manifest with `git checkout -- {_relative(manifest_path)}`, or delete "
            f"it and rebuild each checkpoint with `python -m qlib.train NAME` (NAME in {sorted(CATALOGUE)}).")


def _rebuild_fix(name: str, path: Path) -> str:
    return (f"Rebuild it with `python -m qlib.train {name}`, or restore the committed copy with "
            f"`git checkout -- {_relative(path)}`.")


def read_manifest(manifest_path: Path = MANIFEST) -> dict:
    """The manifest's entries by checkpoint name; {} before the first `qlib.train` wrote one.

    A manifest that exists but is not a JSON object of objects raises CheckpointError, so neither
    loading nor `train.save` ever works from a misread manifest.
    """
    manifest_path = as_path(manifest_path, "manifest_path")
    if not manifest_path.exists():
        return {}
    manifest = _parse_manifest(_manifest_text(manifest_path), manifest_path)
    _check_manifest_shape(manifest, manifest_path)
    return manifest


def _manifest_text(manifest_path: Path) -> str:
    try:
        return manifest_path.read_text(encoding="utf-8")
    except IsADirectoryError as error:
        raise CheckpointError(f"Manifest {manifest_path} is a folder, not a JSON file. Move the folder "
                              f"away; then {_manifest_fix(manifest_path)}") from error
    except UnicodeDecodeError as error:
        raise CheckpointError(f"Manifest {manifest_path} is not UTF-8 text (byte {error.start} is "
                              f"{error.object[error.start]:#04x}), so it is not the JSON qlib writes. "
                              f"{_manifest_fix(manifest_path)}") from error
    except OSError as error:
        raise CheckpointError(f"Manifest {manifest_path} cannot be read: {error.strerror or error}. Check "
                              f"its permissions; or {_manifest_fix(manifest_path)}") from error


def _parse_manifest(text: str, manifest_path: Path):
    if not text.strip():
        raise CheckpointError(f"Manifest {manifest_path} is empty (a save was interrupted, or it was "
                              f"truncated), so no checkpoint can be verified. {_manifest_fix(manifest_path)}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"Manifest {manifest_path} is not valid JSON: {error.msg} at line "
                              f"{error.lineno}, column {error.colno}. {_manifest_fix(manifest_path)}") from error


def _check_manifest_shape(manifest, manifest_path: Path) -> None:
    """A manifest maps checkpoint names to objects; anything else would fail later as an AttributeError."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"Manifest {manifest_path} holds {_json_kind(manifest)}, but it must be a JSON "
                              f"object mapping checkpoint names to their entries. {_manifest_fix(manifest_path)}")
    for name, entry in manifest.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"Manifest {manifest_path}: the entry for {name!r} is {_json_kind(entry)}, "
                                  "but it must be a JSON object with 'sha256', 'bytes', 'test_accuracy', ... "
                                  f"{_manifest_fix(manifest_path)}")


def _expected_sha256(name: str, path: Path, manifest_path: Path) -> str:
    """The sha256 that the manifest records for checkpoint `name`, lower case, checked to be 64 hex digits."""
    if not manifest_path.exists():
        raise CheckpointError(f"Manifest {manifest_path} is missing, so {path} cannot be verified. "
                              f"{_manifest_fix(manifest_path)}")
    entry = read_manifest(manifest_path).get(name)
    if entry is None:
        raise CheckpointError(f"{manifest_path} has no entry for {name!r}, so {path} cannot be verified. "
                              f"Rebuild it with `python -m qlib.train {name}`, which writes the entry, or "
                              f"restore the committed manifest with `git checkout -- {_relative(manifest_path)}`.")
    return _checked_digest(entry, name, manifest_path)


def _checked_digest(entry: dict, name: str, manifest_path: Path) -> str:
    where = f"Manifest {manifest_path}: the entry for {name!r}"
    fix = (f"The manifest is at fault, not the checkpoint file. Rebuild with `python -m qlib.train {name}` "
           f"(it rewrites the entry), or restore the committed manifest with "
           f"`git checkout -- {_relative(manifest_path)}`.")
    if "sha256" not in entry:
        raise CheckpointError(f"{where} has no 'sha256' field, so {name}.pt cannot be verified. {fix}")
    digest = entry["sha256"]
    if not isinstance(digest, str):
        raise CheckpointError(f"{where} has 'sha256': {json.dumps(digest)}, but a sha256 is a string of "
                              f"{SHA256_DIGITS} hexadecimal digits. {fix}")
    not_hex = sorted(set(digest) - set(string.hexdigits))
    if not_hex:
        raise CheckpointError(f"{where} has 'sha256': {digest!r}, which contains {not_hex}: a sha256 is "
                              f"{SHA256_DIGITS} hexadecimal digits (0-9, a-f). {fix}")
    if len(digest) != SHA256_DIGITS:
        raise CheckpointError(f"{where} has 'sha256': {digest!r}, which is {len(digest)} hexadecimal digits, "
                              f"not {SHA256_DIGITS}. {fix}")
    return digest.lower()  # upper-case hex names the same digest


def load_state_dict(name: str, directory: Path = CHECKPOINT_DIR, manifest_path: Path = MANIFEST) -> dict:
    """The verified state dict of checkpoint `name` (sha256 checked, loaded with weights_only)."""
    spec(name)
    manifest_path = as_path(manifest_path, "manifest_path")
    path = checkpoint_path(name, directory)
    if not path.is_file():
        raise CheckpointError(_missing_checkpoint_message(name, path))
    expected = _expected_sha256(name, path, manifest_path)
    actual = _sha256_of_checkpoint(name, path)
    if actual != expected:
        raise CheckpointError(f"Checkpoint file {path} does not match its manifest: sha256 {actual} "
                              f"!= {expected}. The file was changed or is incomplete. {_rebuild_fix(name, path)}")
    return _checked_state_dict(_torch_load(name, path), name, path)


def _missing_checkpoint_message(name: str, path: Path) -> str:
    if path.is_dir():
        problem = "is a folder, not a file"
    elif not path.parent.is_dir():
        problem = f"is missing: its folder {path.parent} does not exist"
    else:
        problem = "is missing"
    return f"Checkpoint file {path} {problem}. {_rebuild_fix(name, path)}"


def _sha256_of_checkpoint(name: str, path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as error:
        raise CheckpointError(f"Checkpoint file {path} cannot be read: {error.strerror or error}. Check its "
                              f"permissions; or {_rebuild_fix(name, path)}") from error


def _torch_load(name: str, path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"Checkpoint file {path} matches its manifest's sha256, but "
                              f"torch.load(weights_only=True) refused it ({reason}): it holds pickled code or "
                              "is not a saved state dict, and the manifest was written for it. Do not load it "
                              f"with weights_only=False. {_rebuild_fix(name, path)}") from error


def _checked_state_dict(state, name: str, path: Path) -> dict:
    """A state dict maps parameter names to tensors; anything else would fail deep inside load_state_dict."""
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint file {path} holds {kind_of(state)}, not a state dict (a dict of "
                              f"parameter names to tensors). {_rebuild_fix(name, path)}")
    odd = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if odd:
        raise CheckpointError(f"Checkpoint file {path} is not a state dict: {odd[:3]} do not map a parameter "
                              f"name to a tensor. {_rebuild_fix(name, path)}")
    return state


def state_dict_mismatch(expected: dict, actual: dict) -> str:
    """What keeps `actual` from loading where `expected` fits ("" when nothing): names and shapes, three of each."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    reshaped = [f"{k} {tuple(actual[k].shape)} instead of {tuple(expected[k].shape)}"
                for k in expected if k in actual and actual[k].shape != expected[k].shape]
    parts = [f"{label} {len(items)} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
             if items]
    return "; ".join(parts)


def load(name: str, quantizable: bool = False, directory: Path = CHECKPOINT_DIR,
         manifest_path: Path = MANIFEST) -> nn.Module:
    """The float model of checkpoint `name`, weights verified, in eval mode.

    `quantizable=True` gives the FloatFunctional variant of the ResNet (same weights); SeedNet
    is always quantizable (its stubs do nothing in float).
    """
    if not isinstance(quantizable, bool):
        raise BadInputError(f"quantizable must be True or False, not {kind_of(quantizable)} ({quantizable!r}); "
                            "a truthy string would silently pick the quantizable variant.")
    model = spec(name).build(quantizable=quantizable)
    state = load_state_dict(name, directory, manifest_path)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        path = checkpoint_path(name, directory)
        raise CheckpointError(f"Checkpoint file {path} does not fit the {name} architecture: {mismatch}. It "
                              f"was saved from another model. {_rebuild_fix(name, path)}")
    model.load_state_dict(state)
    return model.eval()


def available(directory: Path = CHECKPOINT_DIR, manifest_path: Path = MANIFEST) -> dict[str, dict]:
    """Manifest entries of the checkpoints present on disk, by name."""
    manifest = read_manifest(manifest_path)
    return {name: manifest[name] for name in CATALOGUE
            if name in manifest and checkpoint_path(name, directory).is_file()}
