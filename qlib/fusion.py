"""Conv + BatchNorm folding written out by hand, to compare with torch's fuse_modules.

In eval mode BatchNorm is a fixed per-channel affine map, y = gamma * (x - mean) / sqrt(var + eps)
+ beta, applied to the convolution's output x = w * input + b. Both maps are affine, so their
composition is one convolution with

    w' = w * gamma / sqrt(var + eps)            (scaled per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

That is all `torch.ao.quantization.fuse_modules` does for Conv+BN; a following ReLU is kept as
an activation of the same fused module (ConvReLU2d), so that the quantized kernel applies it
while writing its output; the other slots of the group become nn.Identity placeholders. In
training mode BN normalises with each batch's own statistics, which no fixed weights can
reproduce: folding is an eval-mode transformation only.
Notebook 05.
"""

from __future__ import annotations

import copy

import torch
import torch.ao.nn.intrinsic as nni
from torch import nn

from .errors import QlibError
from .qmath import check_same_shape


class FoldingError(QlibError, ValueError):
    """The modules cannot be folded (training mode, wrong types, mismatched channels)."""


def _check_foldable(conv: nn.Module, bn: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise FoldingError(f"fold_bn folds an nn.Conv2d followed by an nn.BatchNorm2d, not "
                           f"{type(conv).__name__} + {type(bn).__name__}.")
    if conv.training or bn.training:
        raise FoldingError(
            "Conv+BN folding needs eval mode: in training mode BatchNorm normalises with each "
            "batch's statistics, which fixed folded weights cannot reproduce. Call model.eval() "
            "first (for quantization-aware training, use the QAT fusions that keep BN instead).")
    if bn.num_features != conv.out_channels:
        raise FoldingError(f"The BatchNorm has {bn.num_features} channels but the convolution "
                           f"outputs {conv.out_channels}: they are not consecutive layers.")
    if not bn.track_running_stats or bn.running_mean is None:
        raise FoldingError("The BatchNorm keeps no running statistics (track_running_stats=False), "
                           "so in eval mode it still uses batch statistics and cannot be folded.")


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to `bn(conv(x))` in eval mode (the inputs are left untouched)."""
    _check_foldable(conv, bn)
    gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)                     # one per out channel
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight = nn.Parameter(conv.weight.detach() * factor.reshape(-1, 1, 1, 1))
        folded.bias = nn.Parameter((bias - bn.running_mean) * factor + beta)
    return folded.eval()


def fold_model_by_hand(model: nn.Module, groups: list[list[str]]) -> nn.Module:
    """A copy of `model` fused like fuse_modules(model, groups, inplace=False), with BN folded by `fold_bn`.

    The surgery fuse_modules does: the first slot of each group receives the fused module (the folded
    Conv2d for [conv, bn]; torch.ao.nn.intrinsic's ConvReLU2d(folded conv, relu) for [conv, bn, relu];
    LinearReLU(linear, relu) or ConvReLU2d(conv, relu) for a pair with nothing to fold), and every other
    slot an nn.Identity placeholder, so that the model's forward() still runs unchanged.
    """
    fused = copy.deepcopy(model)
    names = dict(fused.named_modules())
    for group in groups:
        missing = [name for name in group if name not in names] if not isinstance(group, str) else [group]
        if missing:
            raise FoldingError(f"Group {group!r} names {missing}, which {type(model).__name__} does not have as "
                               "submodules; each group is a list of names from model.named_modules(), e.g. "
                               "['features.0', 'features.1', 'features.2'].")
        _set_submodule(fused, group[0], _fused_module([names[name] for name in group], group))
        for name in group[1:]:
            _set_submodule(fused, name, nn.Identity())
    return fused


def _fused_module(modules: list[nn.Module], group) -> nn.Module:
    """The module fuse_modules puts in a group's first slot."""
    kinds = tuple(type(m) for m in modules)
    if kinds == (nn.Conv2d, nn.BatchNorm2d):
        return fold_bn(*modules)
    if kinds == (nn.Conv2d, nn.BatchNorm2d, nn.ReLU):
        return nni.ConvReLU2d(fold_bn(*modules[:2]), copy.deepcopy(modules[2]))
    if kinds == (nn.Conv2d, nn.ReLU):
        return nni.ConvReLU2d(*copy.deepcopy(modules))
    if kinds == (nn.Linear, nn.ReLU):
        return nni.LinearReLU(*copy.deepcopy(modules))
    raise FoldingError(f"Group {group} is {[k.__name__ for k in kinds]}, not one of [conv, bn], [conv, bn, relu], "
                       "[conv, relu] or [linear, relu] (Conv2d, BatchNorm2d, ReLU, Linear).")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over all elements, as a Python float (a and b: tensors of one shape)."""
    check_same_shape(a, b, "max_abs_difference")
    return float((a.detach() - b.detach()).abs().max())
