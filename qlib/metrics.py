"""Evaluation in one place: outputs in batches, predictions, accuracy, the confusion matrix.

Every helper takes a model or any callable from images to logits (an int8 Interpreter too), runs
it in batches without autograd and, for a converted model, under the quantized engine it was
converted for (its packed weights only run there). Notebooks 03, 05-08 and qlib.bench use them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .engines import engine_active, engine_of


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a pair of tensors, a data set with `.tensors()`, a Subset of one, or
    any Dataset / DataLoader of (image, label) items."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    if hasattr(data, "tensors"):
        return data.tensors()
    if isinstance(data, Subset) and hasattr(data.dataset, "tensors"):
        images, labels = data.dataset.tensors()
        index = torch.as_tensor(data.indices)
        return images[index], labels[index]
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=256)
    if isinstance(data, DataLoader):
        batches = list(data)
        return torch.cat([b[0] for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches])
    raise TypeError(f"Cannot read images and labels from {type(data).__name__}: pass (images, labels) "
                    "tensors, a Dataset of (image, label) items, or a DataLoader.")


def logits(model: nn.Module | Callable, images: torch.Tensor, batch_size: int = 500,
           progress: bool = False) -> torch.Tensor:
    """The outputs of `model` (a module in eval mode, or any callable) for `images`, in batches,
    under the quantized engine a converted model records (`.qengine`)."""
    if isinstance(model, nn.Module):
        model.eval()
    starts = range(0, len(images), batch_size)
    with engine_active(engine_of(model)), torch.inference_mode():
        return torch.cat([model(images[i:i + batch_size])
                          for i in tqdm(starts, desc="evaluating", unit="batch", disable=not progress)])


def predict(model: nn.Module | Callable, images: torch.Tensor, batch_size: int = 500,
            progress: bool = False) -> torch.Tensor:
    """Predicted class of every image (argmax of the logits)."""
    return logits(model, images, batch_size, progress).argmax(1)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} "
                         "must have the same shape.")
    if len(labels) == 0:
        raise ValueError("No labels: accuracy of an empty set is undefined; pass at least one image.")
    return 100.0 * int((predictions == labels).sum()) / len(labels)  # exact count, no float32 mean


def evaluate(model: nn.Module | Callable, data, batch_size: int = 500, progress: bool = False) -> float:
    """Top-1 accuracy in percent of `model` (or any callable) on `data` (see as_tensors)."""
    images, labels = as_tensors(data)
    if len(images) == 0:
        raise ValueError("No images to evaluate on.")
    return accuracy(predict(model, images, batch_size, progress), labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """counts[true, predicted] as an int64 [num_classes, num_classes] tensor."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
