"""The checkers of notebooks 01 and 02: each accepts the reference solution, refuses the typical
mistake with a message that names it, and refuses an unwritten stub."""

import numpy as np
import pytest
import torch

from qlib import checks, histogram_search, qmath, quiet

quiet.quiet_deprecations()


def verdict(capsys, result):
    out = capsys.readouterr().out
    return result, out


def accepted(capsys, result):
    ok, out = verdict(capsys, result)
    assert ok is True and "Correct!" in out, out


def refused(capsys, result, *causes):
    ok, out = verdict(capsys, result)
    assert ok is False and "Not yet:" in out and "Correct!" not in out, out
    for cause in causes:
        assert cause.lower() in out.lower(), f"{cause!r} not in {out!r}"
    return out


def stub(*args):
    raise NotImplementedError()


# ---------------------------------------------------------------- 01: qparams from a range

def test_check_qparams_reference_and_mistakes(capsys):
    lo, hi = torch.tensor(-0.8), torch.tensor(2.3)
    scale = ((hi - lo) / 255).item()
    zero_point = int(0 - torch.round(lo / torch.tensor(scale)))
    accepted(capsys, checks.check_qparams(scale, zero_point, -0.8, 2.3))
    refused(capsys, checks.check_qparams(scale, 0.8 / scale, -0.8, 2.3), "zero points are integers")
    refused(capsys, checks.check_qparams(2.3 / 255, 0, 0.0, 2.3, reduce_range=True), "scale", "[0, 127]")


# ---------------------------------------------------------------- 01: quantize, per tensor and per channel

def reference_quantize(x, scale, zero_point):
    inverse = 1 / torch.tensor(scale, dtype=torch.float32)
    return (torch.round(x * inverse) + zero_point).clamp(-128, 127).to(torch.int8)


def test_check_quantize_reference_and_mistakes(capsys):
    accepted(capsys, checks.check_quantize(reference_quantize))
    refused(capsys, checks.check_quantize(lambda x, s, z: torch.round(x / s + z).clamp(-128, 127).to(torch.int8)),
            "ties", "after rounding")
    refused(capsys, checks.check_quantize(stub), "not written yet")


def reference_quantize_per_channel(weight, scales, zero_points):
    shape = (-1,) + (1,) * (weight.dim() - 1)
    inverse = 1 / scales.to(torch.float32).reshape(shape)
    q = torch.round(weight * inverse) + zero_points.reshape(shape)
    return q.clamp(-128, 127).to(torch.int8)


def test_check_quantize_per_channel_accepts_the_reference(capsys):
    accepted(capsys, checks.check_quantize_per_channel(reference_quantize_per_channel))
    accepted(capsys, checks.check_quantize_per_channel(
        lambda w, s, z: qmath.quantize_per_channel(w, s, z, 0, torch.qint8)))
    accepted(capsys, checks.check_quantize_per_channel(            # any wide integer dtype
        lambda w, s, z: reference_quantize_per_channel(w, s, z).to(torch.int64)))


@pytest.mark.parametrize("wrong, causes", [
    (lambda w, s, z: (torch.round(w * (1 / s.max())) + 0).clamp(-128, 127).to(torch.int8), ["own scale", "axis 0"]),
    (lambda w, s, z: reference_quantize_per_channel(w, s, torch.zeros_like(z)), ["zero point", "after rounding"]),
    (lambda w, s, z: torch.round(w * (1 / s.reshape((-1,) + (1,) * (w.dim() - 1))) + z.reshape(
        (-1,) + (1,) * (w.dim() - 1))).to(torch.int8), ["where torch gives -128 or 127", "clamp"]),
    (lambda w, s, z: reference_quantize_per_channel(w, s, z).float(), ["float tensor"]),
    (lambda w, s, z: reference_quantize_per_channel(w, s, z)[:1], ["shape"]),
    (stub, ["not written yet"]),
    (lambda w, s, z: w @ s, ["raised RuntimeError"]),
])
def test_check_quantize_per_channel_refuses_the_typical_mistakes(capsys, wrong, causes):
    refused(capsys, checks.check_quantize_per_channel(wrong), *causes)


def test_check_quantize_per_channel_names_division_instead_of_the_inverse(capsys):
    def divides(w, s, z):
        shape = (-1,) + (1,) * (w.dim() - 1)
        return (torch.round(w / s.reshape(shape)) + z.reshape(shape)).clamp(-128, 127).to(torch.int8)
    refused(capsys, checks.check_quantize_per_channel(divides), "round(w / S_c)", "float32 inverse")


# ---------------------------------------------------------------- 02: MinMax and moving-average rules

def reference_minmax_update(lo, hi, batch):
    return torch.minimum(lo, batch.min()), torch.maximum(hi, batch.max())


def test_check_minmax_update(capsys):
    accepted(capsys, checks.check_minmax_update(reference_minmax_update))
    accepted(capsys, checks.check_minmax_update(lambda lo, hi, b: [min(float(lo), b.min().item()),
                                                                    max(float(hi), b.max().item())]))
    refused(capsys, checks.check_minmax_update(lambda lo, hi, b: (min(float(lo), b.min().item(), 0.0),
                                                                   max(float(hi), b.max().item()))),
            "only later, by calculate_qparams")
    refused(capsys, checks.check_minmax_update(lambda lo, hi, b: (b.min(), b.max())), "after batch 1",
            "running extremes")
    refused(capsys, checks.check_minmax_update(lambda lo, hi, b: b.min()), "pair (min, max)")
    refused(capsys, checks.check_minmax_update(lambda lo, hi, b: (float("nan"), b.max())), "not a finite number")
    refused(capsys, checks.check_minmax_update(stub), "not written yet")


def test_check_moving_average(capsys):
    def reference(batches, c):
        lo, hi = torch.aminmax(batches[0])
        for batch in batches[1:]:
            cur_lo, cur_hi = torch.aminmax(batch)
            lo, hi = lo + c * (cur_lo - lo), hi + c * (cur_hi - hi)
        return lo, hi
    accepted(capsys, checks.check_moving_average(reference))
    refused(capsys, checks.check_moving_average(lambda batches, c: (min(b.min() for b in batches),
                                                                    max(b.max() for b in batches))), "got")
    refused(capsys, checks.check_moving_average(stub), "not written yet")


# ---------------------------------------------------------------- 02: one step of HistogramObserver

def reference_histogram_error(histogram, bin_width, start_bin, end_bin, levels=256):
    counts = histogram.double()
    dst_width = bin_width * (end_bin - start_bin + 1) / levels
    begin = (torch.arange(len(counts), dtype=torch.float64) - start_bin) * bin_width
    end = begin + bin_width
    first = (begin / dst_width).floor().clamp(0, levels - 1)
    last = (end / dst_width).floor().clamp(0, levels - 1)
    half = dst_width / 2

    def integral(a, b):
        return (b**3 - a**3) / 3
    per_bin = (integral(begin - (first + 0.5) * dst_width, half) + (last - first - 1) * integral(-half, half)
               + integral(-half, end - (last + 0.5) * dst_width))
    return float((counts / bin_width * per_bin).sum())


def test_check_histogram_error_accepts_float64_and_torchs_float32(capsys):
    accepted(capsys, checks.check_histogram_error(reference_histogram_error))
    accepted(capsys, checks.check_histogram_error(histogram_search.l2_error))          # torch's float32, replayed
    accepted(capsys, checks.check_histogram_error(                                      # any one-number form
        lambda *args: torch.tensor([reference_histogram_error(*args)], dtype=torch.float32)))


def _inside_only(histogram, bin_width, start_bin, end_bin):
    counts = histogram.clone()
    counts[:start_bin], counts[end_bin + 1:] = 0, 0
    return reference_histogram_error(counts, bin_width, start_bin, end_bin)


@pytest.mark.parametrize("wrong, causes", [
    (lambda h, w, s, e: reference_histogram_error(h, w, s, e, levels=128), ["256 levels whatever reduce_range"]),
    (_inside_only, ["only the bins inside the range"]),
    (lambda h, w, s, e: reference_histogram_error(h, w, s, e, levels=255), ["centre of its bin"]),
    (lambda h, w, s, e: 3 * reference_histogram_error(h, w, s, e), ["(b**3 - a**3) / 3"]),
    (lambda h, w, s, e: np.float64("nan"), ["not a finite number"]),
    (lambda h, w, s, e: (1.0, 2.0), ["one number"]),
    (stub, ["not written yet"]),
    (lambda h, w, s, e: h[s:e + 1].sum() / 0 + h.undefined, ["raised AttributeError"]),
])
def test_check_histogram_error_refuses_the_typical_mistakes(capsys, wrong, causes):
    refused(capsys, checks.check_histogram_error(wrong), *causes)


# ---------------------------------------------------------------- 02: per-channel weight qparams (issue 11.2)

torch.manual_seed(0)
WEIGHT = torch.randn(8, 3, 3, 3)
SCALES, ZERO_POINTS = qmath.qparams_per_channel(*qmath.channel_ranges(WEIGHT, 0))


def test_check_per_channel_qparams_refuses_zero_points_of_0_9(capsys):
    refused(capsys, checks.check_per_channel_qparams(SCALES, torch.full((8,), 0.9), WEIGHT), "non-integer", "0.9")
    refused(capsys, checks.check_per_channel_qparams(SCALES, [0.9] * 8, WEIGHT), "non-integer")


def test_check_per_channel_qparams_takes_float64_without_torch_errors(capsys):
    accepted(capsys, checks.check_per_channel_qparams(SCALES.double(), ZERO_POINTS.double(), WEIGHT))
    accepted(capsys, checks.check_per_channel_qparams(SCALES.double(), ZERO_POINTS, WEIGHT.double()))


def test_check_per_channel_qparams_reference_and_mistakes(capsys):
    flat = WEIGHT.flatten(1)
    peak = torch.maximum(-flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0))
    scales = torch.clamp(peak / ((127 - (-128)) / 2), min=torch.finfo(torch.float32).eps)
    accepted(capsys, checks.check_per_channel_qparams(scales, torch.zeros(8, dtype=torch.int64), WEIGHT))
    refused(capsys, checks.check_per_channel_qparams(peak / 127, torch.zeros(8), WEIGHT), "scales differ", "127.5")
    refused(capsys, checks.check_per_channel_qparams(scales.max().repeat(8), torch.zeros(8), WEIGHT), "scales differ")


def test_check_quantize_refuses_dividing_by_the_scale_which_rounds_apart_from_torch_near_ties(capsys):
    from qlib import checks

    def divides(x, scale, zero_point):
        return (torch.round(x / scale) + zero_point).clamp(-128, 127).to(torch.int8)

    assert checks.check_quantize(divides, torch.qint8) is False
    assert "near-ties" in capsys.readouterr().out
