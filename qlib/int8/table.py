"""The one table of converted module -> interpreter layer, and the lookup the interpreter, its
torch-function handlers (functional.py) and the replay of recordings share.
"""

from __future__ import annotations

import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import nn

from ..recorder import KERNEL_MODULES
from . import layers, ops

# The one table of converted module -> interpreter layer.
LAYERS = {nnq.Quantize: layers.QuantizeI, nnq.DeQuantize: layers.DeQuantizeI, nnq.QFunctional: ops.QFunctionalI,
          nn.ReLU: ops.ReLUI, nn.MaxPool2d: ops.MaxPoolI, nn.AvgPool2d: ops.AvgPoolI,
          nn.AdaptiveAvgPool2d: ops.AdaptiveAvgPoolI,
          nnq.Hardswish: lambda path, m, ctx: ops.ActivationI(path, m, ctx, "hardswish"),
          nn.Hardsigmoid: lambda path, m, ctx: ops.ActivationI(path, m, ctx, "hardsigmoid"),
          nnq.ReLU6: lambda path, m, ctx: ops.ClampI(path, m, ctx, 0.0, 6.0),
          nn.ReLU6: lambda path, m, ctx: ops.ClampI(path, m, ctx, 0.0, 6.0)}
WEIGHTED = {nnq.Conv2d: (layers.ConvI, False), nniq.ConvReLU2d: (layers.ConvI, True),
            nnq.Linear: (layers.LinearI, False), nniq.LinearReLU: (layers.LinearI, True)}


def layer_for(module: nn.Module, path: str, ctx: layers.Context):
    """The interpreter layer standing in for one module, None where the module is kept as it is."""
    kind = type(module)
    if kind in LAYERS:
        return LAYERS[kind](path, module, ctx)
    if kind in WEIGHTED:
        layer, relu = WEIGHTED[kind]
        return layer(path, module, ctx, relu)
    if isinstance(module, KERNEL_MODULES):
        supported = sorted({f"{k.__module__.split('.')[-2]}.{k.__name__}" for k in (*LAYERS, *WEIGHTED)})
        raise layers.UnsupportedModuleError(
            f"{path or '<model>'} is a {kind.__module__}.{kind.__name__}, which the integer interpreter "
            f"does not implement. Supported modules: {', '.join(supported)}; plus the torch functions on int8 "
            "activations that qlib.int8.functional.HANDLERS lists.")
    return None
