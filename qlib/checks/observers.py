"""Notebook 02: the observers' range rules, one step of HistogramObserver's search, and per-channel
weight qparams."""

from __future__ import annotations

import math

import torch

from .. import histogram_search
from .core import (_ZERO_POINTS_ARE_INTEGERS, _call_learner, _checker, _read_number, _read_pair,
                   _read_tensor, report)


@_checker("fn: your function fn(batches, c), returning a pair (min, max) of numbers")
def check_moving_average(fn, averaging_constant: float = 0.01) -> bool:
    """Does fn(batches, c) return the (min, max) MovingAverageMinMaxObserver ends with?

    Bit for bit, in any form holding the two numbers (tuple, list, tensor of two, Python floats):
    the exercise is to reproduce the observer's float32 arithmetic, so a float64 result counts
    only if it equals the float32 one exactly.
    """
    from torch.ao.quantization import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    batches = [torch.randn(64) * (1 + i) + i for i in range(5)]
    observer = MovingAverageMinMaxObserver(averaging_constant=averaging_constant)
    for batch in batches:
        observer(batch)
    expected = (float(observer.min_val), float(observer.max_val))
    lo, hi = _read_pair(_call_learner(fn, [b.clone() for b in batches], averaging_constant),
                        "your function returned")
    got = (_read_number(lo, "the min (the first value returned)"),
           _read_number(hi, "the max (the second value returned)"))
    if got == expected:
        return report(True, f"(min, max) = ({expected[0]:.6g}, {expected[1]:.6g}), as the observer computes.")
    close = all(math.isclose(g, e, rel_tol=1e-5) for g, e in zip(got, expected))
    hint = ("nearly there: compute in float32 tensors (torch.aminmax, then min + c * (cur - min)), as the "
            "observer does, to match bit for bit." if close else
            "the first batch sets min and max; each later batch moves them: min <- min + c * (batch_min - min).")
    return report(False, "", f"got {got}, the observer has {expected}.", hint)


@_checker("scales: one positive number per output channel (a tensor or list); zero_points: one integer "
          "per output channel")
def check_per_channel_qparams(scales, zero_points, weight: torch.Tensor) -> bool:
    """Are these the per-channel (axis 0) symmetric qint8 qparams of x86's weight observer?

    Judged by value in any shape holding one value per channel: scales of any float dtype but
    float16 / bfloat16 (too few digits to match to 1e-6), zero points with integer values.
    """
    from torch.ao.quantization import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight.detach())
    expected_s, expected_z = (v.to(torch.float64) for v in observer.calculate_qparams())
    channels = weight.shape[0]
    scales = _read_tensor(scales, "scales is", f"{channels} scales, one per output channel").flatten()
    zero_points = _read_tensor(zero_points, "zero_points is", f"{channels} integer zero points", integers=True,
                               hint=_ZERO_POINTS_ARE_INTEGERS).flatten()
    if scales.numel() != channels or zero_points.numel() != channels:
        return report(False, "", f"expected one scale and one zero point per output channel ({channels}), "
                      f"got {scales.numel()} and {zero_points.numel()}.", "reduce over every axis but 0.")
    if not torch.equal(zero_points.to(torch.float64), expected_z):
        return report(False, "", "the zero points differ.", "symmetric qint8 puts every zero point at 0.")
    differs = ~torch.isclose(scales.to(torch.float64), expected_s, rtol=1e-6, atol=0)
    if differs.any():
        c = int(differs.nonzero()[0])
        return report(False, "", f"{int(differs.sum())} of {channels} scales differ; channel {c}: "
                      f"{scales[c].item():.6g} vs {expected_s[c].item():.6g}.",
                      "per channel: S_c = max(|min_c|, |max_c|) / 127.5 (qmax - qmin = 255, halved).")
    return report(True, f"all {channels} scales and zero points equal PerChannelMinMaxObserver's.")


def _minmax_batches() -> list[torch.Tensor]:
    """Batches whose running range moves at both ends, then not at all; the last ones are positive,
    so widening the range to include 0 too early shows."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 8, generator=generator) * 0.5 + 2.0,      # all positive: min > 0
            torch.rand(4, 8, generator=generator) * 3.0 + 1.0,
            torch.randn(4, 8, generator=generator) * 0.1 + 2.5,      # inside the range: changes nothing
            torch.rand(4, 8, generator=generator) * 4.0 + 0.5]


@_checker("fn: your function fn(lo, hi, batch), returning the updated pair (lo, hi)")
def check_minmax_update(fn) -> bool:
    """Does folding fn(lo, hi, batch) over batches, from MinMaxObserver's initial (inf, -inf),
    end with the observer's (min_val, max_val)? Bit for bit, in any form holding the two numbers."""
    from torch.ao.quantization import MinMaxObserver

    batches = _minmax_batches()
    observer = MinMaxObserver()
    lo, hi = torch.tensor(float("inf")), torch.tensor(float("-inf"))   # the observer's buffers before any data
    for index, batch in enumerate(batches):
        observer(batch)
        pair = _read_pair(_call_learner(fn, lo, hi, batch.clone()), "your function returned")
        expected = (float(observer.min_val), float(observer.max_val))
        got = (_read_number(pair[0], f"after batch {index}, the min"), _read_number(pair[1], f"after batch {index}, the max"))
        if got != expected:
            widened = got == (min(expected[0], 0.0), max(expected[1], 0.0))
            hint = ("the observer keeps the data's own min and max; 0 is brought into the range only later, by "
                    "calculate_qparams." if widened else
                    "keep the running extremes: lo = min(lo, the batch's min), hi = max(hi, the batch's max) "
                    "(torch.minimum / torch.maximum work on the inf start).")
            return report(False, "", f"after batch {index}: got (min, max) = {got}, MinMaxObserver has {expected}.", hint)
        lo, hi = torch.as_tensor(got[0], dtype=torch.float32), torch.as_tensor(got[1], dtype=torch.float32)
    return report(True, f"after {len(batches)} batches (min, max) = ({lo.item():.6g}, {hi.item():.6g}), as "
                  "MinMaxObserver's min_val and max_val.")


def _histogram_cases():
    """(label, observer, start_bin, end_bin): calibrated HistogramObservers and candidate ranges
    that are whole, shrunk at one end or both, narrower than 256 bins, and a single bin."""
    from torch.ao.quantization import HistogramObserver

    generator = torch.Generator().manual_seed(0)
    data = {"normal values": torch.randn(20_000, generator=generator),
            "ReLU outputs": torch.relu(torch.randn(20_000, generator=generator)) * 3,
            "heavy tails": torch.randn(20_000, generator=generator) ** 3}
    observers = {}
    for label, x in data.items():
        observers[label] = HistogramObserver()
        observers[label](x)
    return [("normal values", observers["normal values"], 0, 2047),
            ("ReLU outputs", observers["ReLU outputs"], 0, 1500),
            ("heavy tails", observers["heavy tails"], 700, 1300),
            ("heavy tails", observers["heavy tails"], 1000, 1100),
            ("normal values", observers["normal values"], 900, 900)]


@_checker("fn: your function fn(histogram, bin_width, start_bin, end_bin), returning one number")
def check_histogram_error(fn) -> bool:
    """Does fn(histogram, bin_width, start_bin, end_bin) return HistogramObserver's L2 error
    estimate, `_compute_quantization_error(start_bin, end_bin)`, to 1e-3 (relative)?

    torch computes it in float32 (about 1e-4 from the exact value on wide ranges), so float32 and
    float64 answers both pass; the usual slips (only the bins inside the range, 128 levels, bin
    edges for levels) are several percent off and are named when recognised.
    """
    for label, observer, start, end in _histogram_cases():
        histogram, bins = observer.histogram.clone(), observer.bins
        bin_width = (observer.max_val.item() - observer.min_val.item()) / bins
        expected = observer._compute_quantization_error(start, end)
        case = f"{label}, bins {start}..{end} of {bins}"
        got = _read_number(_call_learner(fn, histogram, bin_width, start, end), f"on {case}, your estimate")
        if math.isclose(got, expected, rel_tol=1e-3):
            continue
        inside = observer.histogram.clone()
        inside[:start], inside[end + 1:] = 0, 0
        slips = {
            "only the bins inside the range were counted: values left of it go to the first level, right of it "
            "to the last, and their error counts too.": histogram_search.l2_error(inside, bin_width, start, end),
            "the estimate uses 2**8 = 256 levels whatever reduce_range says (dst_nbins).":
                histogram_search.l2_error(observer.histogram, bin_width, start, end, levels=128),
        }
        hint = next((text for text, value in slips.items() if math.isclose(got, value, rel_tol=1e-3)),
                    "spread each bin's count evenly over the bin (density = count / bin_width); cut the range into "
                    "256 bins of width W = bin_width * (end_bin - start_bin + 1) / 256, send each value to the centre "
                    "of its bin (clamped to the first / last), and integrate (x - centre)**2 * density: "
                    "the integral of t**2 from a to b is (b**3 - a**3) / 3.")
        return report(False, "", f"on {case}: your estimate is {got:.6g}, torch's is {expected:.6g} "
                      f"({(got - expected) / expected:+.2%}).", hint)
    return report(True, "your L2 estimate equals HistogramObserver._compute_quantization_error on whole, shrunk, "
                  "narrow and single-bin ranges.")
