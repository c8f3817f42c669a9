"""Predictions, accuracy and the confusion matrix, computed in batches without autograd."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """Predicted class of every image (argmax of the logits), model in eval mode."""
    model.eval()
    starts = range(0, len(images), batch_size)
    return torch.cat([model(images[i:i + batch_size]).argmax(1)
                      for i in tqdm(starts, desc="predicting", unit="batch", disable=not progress)])


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} "
                         "must have the same shape.")
    if len(labels) == 0:
        raise ValueError("No labels: accuracy of an empty set is undefined; pass at least one image.")
    return 100.0 * int((predictions == labels).sum()) / len(labels)  # exact count, no float32 mean


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """counts[true, predicted] as an int64 [num_classes, num_classes] tensor."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
