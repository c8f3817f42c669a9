"""Train a course checkpoint once, deterministically, and record it in the manifest.

    python -m qlib.train seednet-fmnist
    python -m qlib.train resnet18-fmnist [--epochs 6] [--seed 0]

Writes data/checkpoints/NAME.pt (a float32 state dict) and its manifest entry: sha256, test
accuracy on the full test split, epochs, seed, torch version, date. Both files are written or
neither: everything is checked first, and each file goes through a temporary file beside it and
`os.replace`, so no file is ever half written. The committed checkpoints came from exactly this
command; tests never train.
Notebook 03 (how the checkpoints were made).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import numbers
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import fashion_mnist
from .errors import BadInputError, QlibError, check_whole, kind_of, shown
from .metrics import accuracy, predict
from .paths import CHECKPOINT_DIR, MANIFEST, as_path
from .pretrained import CATALOGUE, CheckpointError, checkpoint_path, read_manifest, spec, state_dict_mismatch


def augment(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `shift` pixels (zero padding), per image."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = nn.functional.pad(images, (shift, shift, shift, shift), value=float(images.min()))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(name: str, epochs: int | None = None, seed: int = 0, progress: bool = True):
    """Train checkpoint `name` from its catalogue spec; returns (model, test accuracy, history)."""
    recipe = spec(name)
    epochs = recipe.epochs if epochs is None else epochs
    check_whole(epochs, "epochs", 1)
    check_whole(seed, "seed")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(seed)
    model = recipe.build()
    train_x, train_y = fashion_mnist("train").tensors()
    test_x, test_y = fashion_mnist("test").tensors()
    steps_per_epoch = -(-len(train_y) // recipe.batch_size)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                                lr=recipe.max_lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.max_lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress)
        for step in bar:
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            loss = loss_fn(model(augment(train_x[idx], generator)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        test_accuracy = accuracy(predict(model, test_x), test_y)
        history.append(round(test_accuracy, 2))
        print(f"{name} epoch {epoch + 1}: test accuracy {test_accuracy:.2f}%", flush=True)
    return model.eval(), history[-1], history


def save(name: str, model: nn.Module, test_accuracy: float, history, epochs: int, seed: int, seconds: float,
         directory: Path = CHECKPOINT_DIR, manifest_path: Path = MANIFEST) -> dict:
    """Write the checkpoint and its manifest entry, both or neither; returns the entry.

    Everything that can be wrong (name, model, figures, the existing manifest) is checked before
    the first byte is written, so a failed save leaves the previous checkpoint and manifest as
    they were, byte for byte.
    """
    directory = as_path(directory, "directory")
    manifest_path = as_path(manifest_path, "manifest_path")
    state = _checked_state(name, model)
    _check_record(test_accuracy, history, epochs, seed, seconds)
    manifest = read_manifest(manifest_path)  # a broken manifest stops the save here, before any write
    payload = _serialised(state)
    path = checkpoint_path(name, directory)
    manifest[name] = {
        "file": path.name,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "test_accuracy": round(float(test_accuracy), 2),
        "accuracy_by_epoch": list(history),
        "epochs": epochs,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": round(seconds),
        "date": datetime.date.today().isoformat(),
        "description": CATALOGUE[name].description,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _write_all_or_nothing({path: payload, manifest_path: text.encode("utf-8")})
    return manifest[name]


def _checked_state(name: str, model: nn.Module) -> dict:
    """The model's state dict, refused unless it fits the catalogue's architecture for `name`.

    A checkpoint saved from another model would be recorded as valid and only fail when loaded.
    """
    expected = spec(name).build().state_dict()
    if not isinstance(model, nn.Module):
        raise BadInputError(f"save({name!r}, model=...) needs the trained nn.Module, not {kind_of(model)}; "
                            "pass the model that train() returned.")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise BadInputError(f"The model passed to save({name!r}) is a {type(model).__name__} that does not fit "
                            f"the {name} architecture: {mismatch}. Pass a model built by "
                            f"pretrained.CATALOGUE[{name!r}].build() (train({name!r}) returns one).")
    return state


def _check_record(test_accuracy, history, epochs, seed, seconds) -> None:
    """The manifest's figures must be what they claim: a percentage, one accuracy per epoch, counts."""
    _check_percentage(test_accuracy, "test_accuracy")
    if not isinstance(history, (list, tuple)):
        raise BadInputError(f"history must be the list of test accuracies by epoch, not {kind_of(history)}.")
    for value in history:
        _check_percentage(value, "each accuracy in history")
    check_whole(epochs, "epochs", 1)
    if len(history) != epochs:
        raise BadInputError(f"history has {len(history)} accuracies for epochs={epochs}: the manifest would "
                            "contradict itself. Pass one accuracy per epoch (train() returns them).")
    check_whole(seed, "seed")
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 <= seconds < math.inf:
        raise BadInputError(f"seconds must be the training time, a finite number >= 0, not {seconds!r}.")


def _check_percentage(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 100:
        raise BadInputError(f"{what} must be an accuracy in percent, a number from 0 to 100, not "
                            f"{kind_of(value)} ({value!r}); metrics.accuracy gives one.")


def _serialised(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _write_all_or_nothing(contents: dict[Path, bytes]) -> None:
    """Replace each file with its bytes, all or none: a failure leaves every file as it was.

    Each file is first written in full (and fsynced) to a temporary file in its own folder, then
    moved over the original with os.replace, which is atomic; if a later move fails, the files
    already moved get their previous content back.
    """
    temporaries: dict[Path, Path] = {}
    try:
        for path, payload in contents.items():
            temporaries[path] = _temporary_copy(path, payload)
        _replace_or_restore(temporaries)
    except OSError as error:
        raise CheckpointError(f"Could not write {error.filename or ' and '.join(map(str, contents))}: "
                              f"{error.strerror or error}. Nothing was changed: "
                              f"{', '.join(map(str, contents))} are as they were. Free disk space or fix the "
                              "folder's permissions, then run the command again.") from error
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)


def _temporary_copy(path: Path, payload: bytes) -> Path:
    """`payload` in a new file beside `path` (same file system, so os.replace is a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _replace_or_restore(temporaries: dict[Path, Path]) -> None:
    previous = {path: path.read_bytes() if path.is_file() else None for path in temporaries}
    replaced = []
    try:
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
            replaced.append(path)
    except OSError as error:
        try:
            for path in replaced:
                _restore(path, previous[path])
        except OSError as restore_error:
            raise CheckpointError(f"Writing {', '.join(map(str, temporaries))} failed ({error}) and putting "
                                  f"back {path} failed too ({restore_error}): they are out of step. Rebuild "
                                  "the checkpoint with `python -m qlib.train NAME`, or restore both with "
                                  "`git checkout -- data/checkpoints`.") from error
        raise


def _restore(path: Path, payload: bytes | None) -> None:
    if payload is None:
        path.unlink(missing_ok=True)
        return
    temporary = _temporary_copy(path, payload)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(CATALOGUE))
    parser.add_argument("--epochs", type=int, default=None, help="default: the catalogue's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR,
                        help="folder for the checkpoint and its manifest.json (default: data/checkpoints, the "
                             "course's own; another folder leaves those untouched)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = args.out / "manifest.json"
    try:
        read_manifest(manifest)  # a broken manifest is reported now, not after an hour of training
        model, test_accuracy, history = train(args.name, args.epochs, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        entry = save(args.name, model, test_accuracy, history, len(history), args.seed,
                     time.perf_counter() - start, directory=args.out, manifest_path=manifest)
    except QlibError as error:  # the message says what and how to fix; a traceback would bury it
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps({args.name: entry}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
