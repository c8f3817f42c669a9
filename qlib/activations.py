"""Record what layers of a float model output, batch by batch (qlib.recorder's forward hooks).

Observers only ever see these tensors, so recording them lets a notebook replay, by hand, what
each observer would compute during calibration (notebook 02). Hooks are always removed, even on
error.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import BadInputError, kind_of
from .recorder import recording


def record_outputs(model: nn.Module, layer_names: Iterable[str], batches: Iterable,
                   num_batches: int | None = None) -> dict[str, list[torch.Tensor]]:
    """{layer name: [its output on batch 0, batch 1, ...]} for the named submodules of `model`.

    `batches` yields tensors or (images, labels) pairs; the model runs in inference mode.
    """
    if isinstance(layer_names, str):
        raise BadInputError(f"layer_names is one string, {layer_names!r}, which would be read letter by letter; "
                            f"pass a list: [{layer_names!r}].")
    if isinstance(batches, torch.Tensor):
        raise BadInputError(f"batches is one tensor ({kind_of(batches)}), which would be read image by image "
                            "without a batch dimension; pass a list of batches: [images] or images.split(64).")
    modules = dict(model.named_modules())
    layer_names = list(layer_names)
    missing = [name for name in layer_names if name not in modules]
    if missing:
        some = ", ".join(name for name in list(modules)[1:8])
        raise BadInputError(f"{model.__class__.__name__} has no submodule named {missing}; names look "
                         f"like: {some}, ... (see model.named_modules()).")
    with recording(model, layer_names) as rec, torch.inference_mode():
        for index, batch in enumerate(batches):
            if num_batches is not None and index >= num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return {name: [call.output for call in rec.calls if call.path == name] for name in layer_names}
