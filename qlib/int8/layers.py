"""The interpreter's layers with weights (conv, linear), the stubs, and what every layer shares.

Each layer reads what the converted module stores (int8 weights, scales, zero points, float
bias), asks dispatch.py once which arithmetic to follow, and in forward() takes the integers out
of its input, computes, and wraps the result back into a quantized tensor. That tensor is only a
container (uint8 values + scale + zero point, in the memory order PyTorch's kernel would give
it), so that views in the model's forward() (flatten, a channel shuffle) work as they do in
PyTorch. The integer path of a conv reads in one sitting: ConvI.forward -> integer.conv_accumulate
-> the requantization dispatch chose. Layers without weights (pooling, add, cat, activations)
are in ops.py.
Notebook 08, sections 1-2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BadInputError, QlibError
from . import dispatch, elementwise, fixedpoint, integer
from .cpu import CpuProfile
from .runstate import current_layer, inside, is_offline, offline  # noqa: F401 (layers.offline etc.)

class UnsupportedModuleError(QlibError, TypeError):
    """A model contains a module or calls a function the interpreter has no integer form of."""



# --- integers in and out of PyTorch's quantized tensors -------------------------------------------------


def uint8_of(t: torch.Tensor) -> torch.Tensor:
    """The uint8 values inside a quantized tensor (the wrapped ones kept: saves an int_repr copy)."""
    u = getattr(t, "_int8_values", None)
    return t.int_repr() if u is None else u


def values(t: torch.Tensor) -> torch.Tensor:
    """The integers inside a quantized tensor, as int32 for arithmetic."""
    return uint8_of(t).to(torch.int32)


def is_channels_last(t: torch.Tensor) -> bool:
    """Would a kernel take its NHWC path for t? (It asks is_contiguous(channels_last), which a
    tensor with one channel or a 1x1 image satisfies whatever its strides.)"""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def suggests_channels_last(t: torch.Tensor) -> bool:
    """ATen's suggest_memory_format() == ChannelsLast (is_channels_last_strides_2d): the memory
    order PyTorch gives the output of an op on t when the output's shape differs from t's."""
    if t.dim() != 4 or t.stride(1) == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if t.shape[d] == 0 or t.stride(d) < low or (d == 0 and low == t.stride(1)):
            return False
        low = t.stride(d) * (t.shape[d] if t.shape[d] > 1 else 1)
    return True


def wrap(q: torch.Tensor, scale: float, zero_point: int, like: torch.Tensor | None = None,
         channels_last: bool = False) -> torch.Tensor:
    """Integers back into a quantized tensor, in the memory order PyTorch's kernel gives its output:
    the strides of `like` (an input of the same shape: empty_like), else N, H, W, C where
    `channels_last` or where `like` suggests it, else contiguous."""
    u = q.to(torch.uint8)
    if like is not None and tuple(like.shape) == tuple(u.shape):
        out = torch.empty_like(uint8_of(like) if like.is_quantized else like, dtype=torch.uint8)
        out.copy_(u)
        u = out
    elif u.dim() == 4 and (channels_last or (like is not None and suggests_channels_last(like))):
        n, c, h, w = u.shape
        out = torch.empty(n, h, w, c, dtype=torch.uint8).permute(0, 3, 1, 2)
        out.copy_(u)
        u = out
    else:
        u = u.contiguous()
    t = torch._make_per_tensor_quantized_tensor(u, scale, zero_point)
    t._int8_values = u if u.stride() == t.stride() else t.int_repr()
    return t


@dataclass
class Context:
    """What every layer needs to know: whose arithmetic (engine, CPU, mode) and what to record."""

    engine: str
    cpu: CpuProfile
    requant: str = "exact"
    record: dict | None = None
    saturation: dict = field(default_factory=dict)
    input_shape: tuple | None = None      # the model's input in the current call (for messages)

    def store(self, path: str, q: torch.Tensor) -> None:
        if self.record is not None:
            key, k = path, 1
            while key in self.record:
                k += 1
                key = f"{path}#{k}"
            self.record[key] = q.detach().clone()


class Interpreted(nn.Module):
    """Base of the interpreter's layers: knows its path in the model and the context."""

    def __init__(self, path: str, original: nn.Module, ctx: Context):
        super().__init__()
        self.path, self.kind, self.ctx = path, type(original).__name__, ctx

    def extra_repr(self) -> str:
        return f"{self.path}: {self.kind}"

    def __call__(self, *args, **kwargs):
        with inside(self):
            return super().__call__(*args, **kwargs)

    def emit(self, q, scale, zero_point, like=None, channels_last=False):
        t = wrap(q, scale, zero_point, like, channels_last)
        self.ctx.store(self.path, t._int8_values)
        return t


class QuantizeI(Interpreted):
    """QuantStub after convert(): float in, uint8 out (qlib.qmath's formula)."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.scale, self.zero_point = float(m.scale), int(m.zero_point)
        if m.dtype != torch.quint8:
            raise UnsupportedModuleError(f"{path} ({type(m).__name__}) quantizes to {m.dtype}; "
                                         "the interpreter handles quint8 activations only.")

    def forward(self, x):
        return self.emit(elementwise.quantize(x, self.scale, self.zero_point), self.scale, self.zero_point, like=x)


class DeQuantizeI(Interpreted):
    def forward(self, x):
        return elementwise.dequantize(values(x), x.q_scale(), x.q_zero_point())


class WeightedI(Interpreted):
    """Conv and Linear: int8 weights, per-tensor or per-channel scales, float bias."""

    op = ""

    def __init__(self, path, m, ctx, relu):
        super().__init__(path, m, ctx)
        w = m.weight()
        self.wq = w.int_repr()
        out_channels = self.wq.shape[0]
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            self.w_scale = w.q_per_channel_scales().to(torch.float64)
            self.w_zp = w.q_per_channel_zero_points().to(torch.int64)
            self.per_channel = True
        else:
            self.w_scale = torch.full((out_channels,), w.q_scale(), dtype=torch.float64)
            self.w_zp = torch.full((out_channels,), w.q_zero_point(), dtype=torch.int64)
            self.per_channel = False
        bias = m.bias()
        self.bias = None if bias is None else bias.detach().to(torch.float32).clone()
        self.scale, self.zero_point, self.relu = float(m.scale), int(m.zero_point), relu
        self.groups = getattr(m, "groups", 1)
        self.in_features = self.in_channels = self.wq.shape[1] * self.groups
        geometry = {"in_channels": self.in_channels, "out_channels": out_channels, "groups": self.groups}
        if self.op == "conv":
            geometry.update(kernel=tuple(self.wq.shape[2:]), stride=tuple(m.stride), padding=tuple(m.padding),
                            dilation=tuple(m.dilation))
        self.choose = dispatch.weighted(self.op, ctx.engine, ctx.cpu, ctx.requant, geometry,
                                        bool((self.w_zp == 0).all()))
        self.arithmetic = self.choose()  # the kernel of the last call (it may depend on the input's shape)
        self.constants = {}  # fixed-point bias and multipliers, per input scale

    def refuse(self, x: torch.Tensor, takes: str, why: str, fix: str):
        """A BadInputError naming this layer, what it takes, what it got and the model's input."""
        given = "" if self.ctx.input_shape is None else f" (the model's input has shape {self.ctx.input_shape})"
        return BadInputError(f"{self.path} ({self.kind}) takes {takes}, but its input has shape "
                             f"{tuple(x.shape)}{given}: {why}. {fix}")

    def count(self, stats):
        if stats.get("saturated"):
            self.ctx.saturation[self.path] = self.ctx.saturation.get(self.path, 0) + stats["saturated"]

    def requantize(self, acc, x):
        in_s = x.q_scale()
        if self.arithmetic.requantize is None:                      # fixed point
            if in_s not in self.constants:
                with offline():
                    self.constants[in_s] = fixedpoint.fixedpoint_constants(in_s, self.w_scale, self.bias, self.scale)
            return fixedpoint.requantize_fixedpoint(acc, self.constants[in_s], self.zero_point, self.relu)
        return self.arithmetic.requantize(acc, in_s, self.w_scale, self.bias, self.scale, self.zero_point,
                                          self.relu, self.per_channel)


class ConvI(WeightedI):
    op = "conv"

    def __init__(self, path, m, ctx, relu):
        super().__init__(path, m, ctx, relu)
        if m.padding_mode != "zeros":
            raise UnsupportedModuleError(f"{path} ({type(m).__name__}) uses padding_mode="
                                         f"{m.padding_mode!r}; only 'zeros' is supported.")
        self.stride, self.padding, self.dilation = m.stride, m.padding, m.dilation

    def out_hw(self, h, w):
        kh, kw = self.wq.shape[2:]
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                     zip((h, w), self.padding, self.dilation, (kh, kw), self.stride))

    def check_input(self, x):
        c, (kh, kw) = self.in_channels, self.wq.shape[2:]
        takes = f"[N, {c}, H, W] activations"
        if x.dim() != 4:
            one = f"; one image [{c}, H, W] is x.unsqueeze(0)" if x.dim() == 3 else ""
            raise self.refuse(x, takes, f"a 2-D convolution needs a batch of {c}-channel images (PyTorch's "
                              "quantized conv refuses other ranks too)", f"Pass a batch of images [N, {c}, H, W]{one}.")
        if x.shape[1] != c:
            raise self.refuse(x, takes, f"its weights were trained for {c} input channel(s), not {x.shape[1]}",
                              f"Pass images with {c} channel(s), as the model's training images had.")
        if min(self.out_hw(*x.shape[-2:])) < 1:
            raise self.refuse(x, takes, f"its {kh}x{kw} kernel (stride {tuple(self.stride)}, padding "
                              f"{tuple(self.padding)}, dilation {tuple(self.dilation)}) does not fit in "
                              f"{x.shape[2]}x{x.shape[3]}", "Pass images of the size the model was trained on.")

    def forward(self, x):
        self.check_input(x)
        oc, cg, kh, kw = self.wq.shape
        self.arithmetic = self.choose(x.shape[0], self.out_hw(*x.shape[-2:]))
        pairs = self.arithmetic.pairs(cg, kh * kw) if self.arithmetic.pairs else None
        stats = {}
        acc = integer.conv_accumulate(uint8_of(x), x.q_zero_point(), self.wq, self.w_zp, self.stride,
                                      self.padding, self.dilation, self.groups, pairs, stats)
        self.count(stats)
        return self.emit(self.requantize(acc, x), self.scale, self.zero_point, channels_last=True)


class LinearI(WeightedI):
    op = "linear"

    def forward(self, x):
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            got = "a scalar" if x.dim() == 0 else f"{x.shape[-1]} features"
            raise self.refuse(x, f"[..., {self.in_features}] activations", f"its weights take {self.in_features} "
                              f"features and {got} reach it, so the model's input is not the size or shape it "
                              "was built for", "Pass inputs of the shape the model was trained on.")
        self.arithmetic = self.choose(x.reshape(-1, x.shape[-1]).shape[0])
        pairs = self.arithmetic.pairs(self.wq.shape[1]) if self.arithmetic.pairs else None
        stats = {}
        acc = integer.linear_accumulate(uint8_of(x), x.q_zero_point(), self.wq, self.w_zp, pairs, stats)
        self.count(stats)
        return self.emit(self.requantize(acc, x), self.scale, self.zero_point)
