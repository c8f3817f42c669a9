"""Train a course checkpoint once, deterministically, and record it in the manifest.

    python -m qlib.train seednet-fmnist
    python -m qlib.train resnet18-fmnist [--epochs 6] [--seed 0]

Writes data/checkpoints/NAME.pt (a float32 state dict) and its manifest entry: sha256, test
accuracy on the full test split, epochs, seed, torch version, date. The committed checkpoints
came from exactly this command; tests never train.
Notebook 03 (how the checkpoints were made).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import fashion_mnist
from .metrics import accuracy, predict
from .paths import CHECKPOINT_DIR, MANIFEST
from .pretrained import CATALOGUE, checkpoint_path, read_manifest, sha256_of


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
    spec = CATALOGUE[name]
    epochs = spec.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(seed)
    model = spec.build()
    train_x, train_y = fashion_mnist("train").tensors()
    test_x, test_y = fashion_mnist("test").tensors()
    steps_per_epoch = -(-len(train_y) // spec.batch_size)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                                lr=spec.max_lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.max_lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress)
        for step in bar:
            idx = order[step * spec.batch_size:(step + 1) * spec.batch_size]
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


def save(name: str, model: nn.Module, test_accuracy: float, history, epochs: int, seed: int, seconds: float):
    """Write the checkpoint and its manifest entry."""
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(name)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path)
    manifest = read_manifest()
    manifest[name] = {
        "file": path.name,
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "test_accuracy": round(test_accuracy, 2),
        "accuracy_by_epoch": history,
        "epochs": epochs,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": round(seconds),
        "date": datetime.date.today().isoformat(),
        "description": CATALOGUE[name].description,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest[name]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(CATALOGUE))
    parser.add_argument("--epochs", type=int, default=None, help="default: the catalogue's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, test_accuracy, history = train(args.name, args.epochs, args.seed)
    epochs = len(history)
    entry = save(args.name, model, test_accuracy, history, epochs, args.seed, time.perf_counter() - start)
    print(json.dumps({args.name: entry}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
