"""The range rules of torch's observers, by hand, and measures to compare their choices.

MinMax, MovingAverageMinMax and PerChannelMinMax observers only track a (min, max) pair (per
channel for the last) and then call the same `_calculate_qparams` (qlib.qmath.qparams). These
functions reproduce the tracking in float32, as the observers do, so the results are equal
bit for bit (tests/test_observers.py). The HistogramObserver instead shrinks its range greedily
until an estimate of the L2 error rises (qlib.histogram_search replays it); `quantization_mse`
measures the real error of any choice.
Notebook 02.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import qmath
from .errors import BadInputError, kind_of


def _checked(batches: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """`batches` if it is a non-empty list of finite real tensors: a lone tensor would be read row by
    row and a NaN would become the range, both without an error."""
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Sequence) or len(batches) == 0:
        raise BadInputError(f"The observers' range rules take a non-empty list of batches, not {kind_of(batches)}; "
                            "wrap a single tensor in a list: [x].")
    for index, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor) or batch.is_quantized or batch.is_complex() or batch.numel() == 0:
            raise BadInputError(f"Batch {index} is {kind_of(batch)}; an observer sees non-empty real float "
                                "tensors (dequantize a quantized one, convert numpy with torch.from_numpy).")
        if not bool(torch.isfinite(batch).all()):
            raise BadInputError(f"Batch {index} holds NaN or infinite values: the range would become NaN or "
                                "infinite and every scale with it. Remove them first (torch.isfinite).")
    return batches


def minmax_range(batches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """MinMaxObserver: the running min and max over all batches (float32 scalars)."""
    lo, hi = torch.aminmax(_checked(batches)[0].float())
    for batch in batches[1:]:
        cur_lo, cur_hi = torch.aminmax(batch.float())
        lo, hi = torch.minimum(lo, cur_lo), torch.maximum(hi, cur_hi)
    return lo, hi


def moving_average_range(batches: Sequence[torch.Tensor], averaging_constant: float = 0.01
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """MovingAverageMinMaxObserver: the first batch sets (min, max); each later one moves them
    by a fraction c of the way: min <- min + c * (batch_min - min), in float32."""
    if isinstance(averaging_constant, bool) or not isinstance(averaging_constant, (int, float)) \
            or not 0 < averaging_constant <= 1:
        raise BadInputError(f"averaging_constant={averaging_constant!r} must be a number in (0, 1]: the fraction "
                            "of the way each batch moves the range (torch's default is 0.01).")
    lo, hi = torch.aminmax(_checked(batches)[0].float())
    for batch in batches[1:]:
        cur_lo, cur_hi = torch.aminmax(batch.float())
        lo = lo + averaging_constant * (cur_lo - lo)
        hi = hi + averaging_constant * (cur_hi - hi)
    return lo, hi


def per_channel_range(batches: Sequence[torch.Tensor], axis: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """PerChannelMinMaxObserver: running (min, max) of each channel along `axis`."""
    lo, hi = qmath.channel_ranges(_checked(batches)[0], axis)
    for batch in batches[1:]:
        cur_lo, cur_hi = qmath.channel_ranges(batch, axis)
        lo, hi = torch.minimum(lo, cur_lo), torch.maximum(hi, cur_hi)
    return lo, hi


def quantization_mse(x: torch.Tensor, scale: float, zero_point: int, dtype=torch.quint8) -> float:
    """Mean squared error of x after quantize + dequantize (rounding and clipping together).

    Runs torch's own kernels, which qmath.fake_quantize equals bit for bit (notebook 01) and which
    are about ten times faster: the notebooks call this for many candidate ranges.
    """
    x = qmath._check_input(x.detach().float())
    scale, zero_point = qmath.check_scale(scale), qmath.check_zero_point(zero_point, qmath.check_dtype(dtype))
    x_hat = torch.quantize_per_tensor(x, scale, zero_point, dtype).dequantize()
    return float((x_hat.double() - x.double()).pow(2).mean())


def mse_curve(x: torch.Tensor, highs, dtype=torch.quint8, reduce_range: bool = False) -> torch.Tensor:
    """Quantization MSE of x for calibration ranges [min(x), high], one per candidate `high`.

    Small highs clip much, large ones round coarsely: the curve shows the trade-off that the
    HistogramObserver's search estimates on its histogram.
    """
    lo = float(x.min())
    errors = []
    for high in highs:
        scale, zero_point = qmath.qparams(lo, float(high), dtype, reduce_range=reduce_range)
        errors.append(quantization_mse(x, scale, zero_point, dtype))
    return torch.tensor(errors, dtype=torch.float64)


def vpmaddubsw(activations_u8: torch.Tensor, weights_s8: torch.Tensor) -> torch.Tensor:
    """AVX2's vpmaddubsw on the last axis: u8 * s8 products summed in pairs, saturated to int16.

    This is the instruction fbgemm's AVX2 int8 kernels use; its saturation is why x86's default
    qconfig keeps activations to 7 bits (reduce_range).
    """
    a = activations_u8.to(torch.int32)
    w = weights_s8.to(torch.int32)
    if a.shape[-1] % 2 or a.shape != w.shape:
        raise BadInputError("vpmaddubsw multiplies equal-shaped tensors whose last axis has even length (the "
                            "instruction sums products in pairs); pad the last axis with a zero.")
    if a.min() < 0 or a.max() > 255 or w.min() < -128 or w.max() > 127:
        raise BadInputError("activations must be in [0, 255] (u8), weights in [-128, 127] (s8): the "
                            "instruction reads unsigned times signed bytes; clamp or requantize them first.")
    pairs = (a * w).reshape(*a.shape[:-1], -1, 2).sum(-1)
    return pairs.clamp(-(2**15), 2**15 - 1)
