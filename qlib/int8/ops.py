"""The interpreter's layers without weights: activations, pooling, mean, and FloatFunctional's add / mul / cat.

Each computes integer sums or comparisons here and asks dispatch.py for the rest (which kernel
PyTorch runs for this engine, layout and CPU, and its float32 or fixed-point step). Outputs keep
the memory order PyTorch's kernel gives them, since later ops' scalar tails depend on it.
Notebook 08, section 3.
"""

from __future__ import annotations

import torch

from . import dispatch, elementwise, integer
from .layers import Interpreted, UnsupportedModuleError, inside, is_channels_last, values


class ReLUI(Interpreted):
    """ReLU on int8: max(q, zero point); scale and zero point unchanged."""

    def forward(self, x):
        zp = x.q_zero_point()
        return self.emit(values(x).clamp_min(zp), x.q_scale(), zp, like=x)


class ClampI(Interpreted):
    """clamp / hardtanh / relu6 (and nnq.ReLU6): both bounds quantized, then an integer clamp."""

    def __init__(self, path, m, ctx, low=None, high=None):
        super().__init__(path, m, ctx)
        self.low, self.high = low, high
        self.apply = dispatch.clamp(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        s, zp = x.q_scale(), x.q_zero_point()
        low = 0 if self.low is None else elementwise.quantize_bound(self.low, s, zp)
        high = 255 if self.high is None else elementwise.quantize_bound(self.high, s, zp)
        nhwc = is_channels_last(x) and not x.is_contiguous()
        r, scrambled = self.apply(values(x), low, high, nhwc)
        return self.emit(r, s, zp, like=None if scrambled else x)    # scrambled: labelled contiguous


class ActivationI(Interpreted):
    """nnq.Hardswish (its own output qparams) and hardsigmoid (output scale 1/256, zero point 0)."""

    def __init__(self, path, m, ctx, op):
        super().__init__(path, m, ctx)
        self.op = op
        self.out = (float(m.scale), int(m.zero_point)) if op == "hardswish" else (1.0 / 256.0, 0)
        self.apply = dispatch.activation(op, ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        q = self.apply(values(x), x.q_scale(), x.q_zero_point(), *self.out)
        return self.emit(q, *self.out, like=x)


class PoolI(Interpreted):
    """A pooling layer: keeps the original module for its window settings."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.pool = m


class MaxPoolI(PoolI):
    """Max pooling: the largest integer of each window; scale and zero point unchanged. QNNPACK
    clamps taps outside the image to its edge instead of skipping them (it matters only with
    dilation > 1 and padding)."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.windows = dispatch.max_windows(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        windows = self.windows(values(x), self.pool)
        return self.emit(windows.amax((-1, -2)), x.q_scale(), x.q_zero_point(), like=x)


class AvgPoolI(PoolI):
    """Average pooling: integer window sums of (q - zp), divided as the kernel PyTorch picks does."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.divide = dispatch.average(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        p = self.pool
        h, w = x.shape[-2:]

        def sums(t, pad_value):
            return integer.pool_windows(t, p.kernel_size, p.stride, p.padding, 1, p.ceil_mode,
                                        pad_value).sum((-1, -2))

        zp, q = x.q_zero_point(), values(x)
        acc = sums(q - zp, 0)
        divisor = sums(torch.ones(h, w, dtype=torch.int32), 1 if p.count_include_pad else 0)
        if p.divisor_override:
            divisor = torch.full_like(divisor, p.divisor_override)
        kh, kw = integer.pair(p.kernel_size)
        out = self.divide(acc, divisor.expand_as(acc), kh * kw, x.q_scale(), zp, is_channels_last(x), p.ceil_mode)
        return self.emit(out, x.q_scale(), zp, like=x)


class AdaptiveAvgPoolI(PoolI):
    """Adaptive average pooling: windows of varying size, each divided by its own size."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.divide = dispatch.adaptive_average(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        h, w = x.shape[-2:]
        oh, ow = (v if v is not None else d for v, d in zip(integer.pair(self.pool.output_size), (h, w)))
        divides = (oh, ow) != (h, w) and h % oh == 0 and w % ow == 0
        q, s_in, zp, nhwc = values(x), x.q_scale(), x.q_zero_point(), is_channels_last(x)
        rows = []
        for h0, h1 in integer.adaptive_windows(h, oh):
            cols = []
            for w0, w1 in integer.adaptive_windows(w, ow):
                raw = q[:, :, h0:h1, w0:w1].sum((-1, -2))
                cols.append(self.divide(raw - zp * (h1 - h0) * (w1 - w0), raw, h1 - h0, w1 - w0, s_in, zp, nhwc,
                                        divides))
            rows.append(torch.stack(cols, -1))
        return self.emit(torch.stack(rows, -2), s_in, zp, like=x)


class MeanI(Interpreted):
    """x.mean([2, 3]): a global average pool written as a reduction (shufflenet)."""

    def __init__(self, path, m, ctx, keepdim=False):
        super().__init__(path, m, ctx)
        self.keepdim = keepdim
        self.reduce = dispatch.mean(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, x):
        q = self.reduce(values(x), x.q_scale(), x.q_zero_point(), is_channels_last(x))
        if self.keepdim:
            q = q.view(*q.shape, 1, 1)
        return self.emit(q, x.q_scale(), x.q_zero_point())


def _layout_of_cat(xs, dim) -> torch.Tensor:
    """An empty tensor with the memory order of float torch.cat of inputs with these strides (the
    generic cat's output)."""
    return torch.cat([torch.empty_strided(t.shape, t.stride(), dtype=torch.uint8) for t in xs], dim)


class QFunctionalI(Interpreted):
    """FloatFunctional after convert(): add, add_relu, mul and cat on int8 tensors."""

    def __init__(self, path, m, ctx):
        super().__init__(path, m, ctx)
        self.scale, self.zero_point = float(m.scale), int(m.zero_point)
        self.add_, self.mul_ = (dispatch.binary(op, ctx.engine, ctx.cpu, ctx.requant) for op in ("add", "mul"))
        self.move = dispatch.cat(ctx.engine, ctx.cpu, ctx.requant)

    def forward(self, *args):
        raise UnsupportedModuleError(f"{self.path} ({self.kind}) is not callable; use its methods.")

    def _binary(self, fn, a, b, relu):
        with inside(self):
            q = fn(values(a), a.q_scale(), a.q_zero_point(), values(b), b.q_scale(), b.q_zero_point(),
                   self.scale, self.zero_point, relu)
            return self.emit(q, self.scale, self.zero_point, like=a)

    def add(self, a, b):
        return self._binary(self.add_, a, b, False)

    def add_relu(self, a, b):
        return self._binary(self.add_, a, b, True)

    def mul(self, a, b):
        return self._binary(self.mul_, a, b, False)

    def cat(self, xs, dim=0):
        with inside(self):
            xs = list(xs)
            nhwc = dim in (1, -3) and all(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                                          for t in xs)
            parts = self.move([(values(t), t.q_scale(), t.q_zero_point()) for t in xs], self.scale,
                              self.zero_point, nhwc)
            like = None if nhwc else _layout_of_cat(xs, dim)
            return self.emit(torch.cat(parts, dim), self.scale, self.zero_point, like=like, channels_last=nhwc)

    def add_scalar(self, *args):
        raise UnsupportedModuleError(f"{self.path} ({self.kind}).add_scalar is not supported.")

    mul_scalar = matmul = add_scalar
