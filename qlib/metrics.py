"""Evaluation in one place: outputs in batches, predictions, accuracy, the confusion matrix.

Every helper takes a model or any callable from images to logits (an int8 Interpreter too), runs
it in batches without autograd and, for a converted model, under the quantized engine it was
converted for (its packed weights only run there). Notebooks 03, 05-08 and qlib.bench use them.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .engines import engine_active, engine_of
from .errors import BadInputError, kind_of


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
    raise BadInputError(f"Cannot read images and labels from {type(data).__name__}: pass (images, labels) "
                    "tensors, a Dataset of (image, label) items, or a DataLoader.")


def _check_model_and_images(model, images, batch_size) -> None:
    """What logits / predict / evaluate need: a callable, a non-empty tensor of inputs, a batch size."""
    if not callable(model):
        raise BadInputError(f"model must be a module or a callable from images to logits, not {kind_of(model)}. "
                            "Pass the model (float or converted) or e.g. an int8.Interpreter.")
    if not isinstance(images, torch.Tensor) or images.dim() == 0:
        raise BadInputError(f"images must be a tensor with the images along dimension 0, not {kind_of(images)}. "
                            "Pass e.g. data.fashion_mnist('test').tensors()[0] (or torch.as_tensor(images)).")
    if len(images) == 0:
        raise BadInputError(f"images is empty ({kind_of(images)}): there is nothing to run the model on. Pass at "
                            "least one image.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise BadInputError(f"batch_size={batch_size!r} is not a number of images per batch; pass a positive int "
                            "(e.g. 500).")


def logits(model: nn.Module | Callable, images: torch.Tensor, batch_size: int = 500,
           progress: bool = False) -> torch.Tensor:
    """The outputs of `model` (a module in eval mode, or any callable) for `images`, in batches,
    under the quantized engine a converted model records (`.qengine`)."""
    _check_model_and_images(model, images, batch_size)
    if isinstance(model, nn.Module):
        model.eval()
    starts = range(0, len(images), batch_size)
    with engine_active(engine_of(model)), torch.inference_mode():
        return torch.cat([model(images[i:i + batch_size])
                          for i in tqdm(starts, desc="evaluating", unit="batch", disable=not progress)])


def predict(model: nn.Module | Callable, images: torch.Tensor, batch_size: int = 500,
            progress: bool = False) -> torch.Tensor:
    """Predicted class of every image (argmax of the logits)."""
    out = logits(model, images, batch_size, progress)
    if out.dim() != 2 or out.is_complex():
        raise BadInputError(f"The model returned {kind_of(out)} for {len(images)} images, not logits [N, classes]: "
                            "the predicted class is the argmax over dimension 1 of those. Pass a classifier, or "
                            "use metrics.logits and reduce its outputs yourself.")
    return out.argmax(1)


def _class_indices(name: str, values, other: str = "") -> torch.Tensor:
    """`values` if it is a 1-D integer tensor of class indices, else a BadInputError saying so."""
    if not isinstance(values, torch.Tensor):
        raise BadInputError(f"{name} must be a 1-D tensor of class indices, not {kind_of(values)}. Pass e.g. "
                            "metrics.predict(model, images), or torch.as_tensor(...).")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise BadInputError(f"{name} is {kind_of(values)}, but class indices are integers (a float {name} would "
                            "be compared or truncated in silence). Pass integer class indices, e.g. "
                            "logits.argmax(1) or metrics.predict(model, images).")
    if values.dim() != 1:
        hint = " (this looks like logits: take .argmax(1))" if values.dim() == 2 else ""
        raise BadInputError(f"{name} is {kind_of(values)}, but class indices are one per image, a 1-D tensor"
                            f"{hint}. Pass a tensor of shape [N].")
    return values


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if not isinstance(predictions, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise BadInputError(f"accuracy compares two tensors of class indices, not {kind_of(predictions)} and "
                            f"{kind_of(labels)}. Pass predictions (e.g. metrics.predict(model, images)) and labels.")
    if predictions.shape != labels.shape:
        hint = " (predictions look like logits: take .argmax(1))" if predictions.dim() == labels.dim() + 1 else ""
        raise BadInputError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must have the "
                            f"same shape, one prediction per label{hint}: compared as they are they would be "
                            "broadcast in silence. Pass the predictions for exactly these labels.")
    if len(labels) == 0:
        raise BadInputError("No labels: accuracy of an empty set is undefined; pass at least one image.")
    _class_indices("predictions", predictions)
    _class_indices("labels", labels)
    return 100.0 * int((predictions == labels).sum()) / len(labels)  # exact count, no float32 mean


def evaluate(model: nn.Module | Callable, data, batch_size: int = 500, progress: bool = False) -> float:
    """Top-1 accuracy in percent of `model` (or any callable) on `data` (see as_tensors)."""
    images, labels = as_tensors(data)
    if len(images) == 0:
        raise BadInputError("No images to evaluate on: the data set is empty. Pass at least one (image, label).")
    if len(images) != len(labels):
        raise BadInputError(f"The data hold {len(images)} images but {len(labels)} labels: each image needs its "
                            "label. Pass (images, labels) of the same length.")
    return accuracy(predict(model, images, batch_size, progress), labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """counts[true, predicted] as an int64 [num_classes, num_classes] tensor."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise BadInputError(f"num_classes={num_classes!r} is not a number of classes; pass a positive int "
                            "(10 for Fashion-MNIST).")
    predictions, labels = _class_indices("predictions", predictions), _class_indices("labels", labels)
    if len(predictions) != len(labels):
        raise BadInputError(f"{len(predictions)} predictions and {len(labels)} labels: the confusion matrix counts "
                            "(label, prediction) pairs, one per image. Pass the predictions for exactly these "
                            "labels.")
    for name, values in (("predictions", predictions), ("labels", labels)):
        outside = (values < 0) | (values >= num_classes)
        if outside.any():
            example = int(values[outside][0])
            fix = (f"Pass num_classes={int(values.max()) + 1} if the model has that many classes, or class "
                   f"indices in [0, {num_classes})" if example >= num_classes else
                   f"Pass class indices in [0, {num_classes}) (a negative one is no class)")
            raise BadInputError(
                f"{name} hold {int(outside.sum())} value(s) outside [0, {num_classes}) (e.g. {example}): with "
                f"num_classes={num_classes} they would be counted in another class's cell in silence. {fix}.")
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
