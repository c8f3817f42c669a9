"""Torch functions that a model's forward() may call on int8 activations, and their integer forms.

A converted model computes not only in modules: torchvision's quantizable models call
`F.adaptive_avg_pool2d`, `F.avg_pool2d`, `F.max_pool2d`, `F.hardsigmoid`, a ReLU module calls
`F.relu`, a channel shuffle calls `view` / `transpose` / `contiguous`. The interpreter's guard
(interpreter.py) sees every torch function called on an int8 activation and looks it up here:

- qlib.recorder.GLUE: pure data movement and metadata, run by PyTorch itself on the container;
- `HANDLERS`: ops with arithmetic, each turned into the interpreter layer of the equivalent
  module (F.avg_pool2d(x, 3) is what nn.AvgPool2d(3) computes); F.hardswish is not among them
  because PyTorch has no kernel for it on int8 tensors either (nnq.Hardswish has one);
- anything else: UnsupportedModuleError naming the function and where it was called.
Notebook 08, section 3.
"""

from __future__ import annotations

from torch import nn

from . import layers, ops
from .table import layer_for

def _dropout(ctx, path, x, p=0.5, training=False, inplace=False):
    if training:
        raise layers.UnsupportedModuleError(f"{path}: dropout in training mode on an int8 activation; "
                                            "call .eval() on the model first.")
    return x


def _module_call(make):
    """A handler that builds the equivalent module and runs the interpreter layer for it."""
    def handler(ctx, path, x, *args, **kwargs):
        module = make(*args, **kwargs)
        return layer_for(module, path, ctx)(x)    # the one table of module -> layer
    return handler


def _max_pool2d(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise layers.UnsupportedModuleError("max_pool2d(return_indices=True) on an int8 activation")
    return nn.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)


def _relu(ctx, path, x, inplace=False):
    return ops.ReLUI(path, nn.ReLU(), ctx)(x)


def _clamp(low_name, high_name, low_default=None, high_default=None):
    def handler(ctx, path, x, *args, **kwargs):
        bounds = dict(zip((low_name, high_name), args))
        bounds.update({k: v for k, v in kwargs.items() if k in (low_name, high_name)})
        low, high = bounds.get(low_name, low_default), bounds.get(high_name, high_default)
        return ops.ClampI(path, nn.Identity(), ctx, low, high)(x)
    return handler


def _hardsigmoid(ctx, path, x, inplace=False):
    return ops.ActivationI(path, nn.Hardsigmoid(), ctx, "hardsigmoid")(x)


def _mean(ctx, path, x, dim=None, keepdim=False, dtype=None):
    dims = sorted(d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])) if dim is not None else None
    if x.dim() != 4 or dims != [2, 3] or dtype is not None:
        raise layers.UnsupportedModuleError(f"{path}: mean(dim={dim}) of a {x.dim()}-D int8 activation; the "
                                            "interpreter knows mean over dims [2, 3] of a 4-D one (global pooling).")
    return ops.MeanI(path, nn.Identity(), ctx, keepdim)(x)


HANDLERS = {
    "dropout": _dropout,
    "relu": _relu, "relu_": _relu,
    "clamp": _clamp("min", "max"), "clamp_": _clamp("min", "max"),
    "hardtanh": _clamp("min_val", "max_val", -1.0, 1.0), "hardtanh_": _clamp("min_val", "max_val", -1.0, 1.0),
    "relu6": lambda ctx, path, x, inplace=False: ops.ClampI(path, nn.Identity(), ctx, 0.0, 6.0)(x),
    "hardsigmoid": _hardsigmoid,
    "mean": _mean,
    "adaptive_avg_pool2d": _module_call(nn.AdaptiveAvgPool2d),
    "avg_pool2d": _module_call(nn.AvgPool2d),
    "max_pool2d": _module_call(_max_pool2d),
}
