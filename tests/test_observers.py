"""qlib.observers reproduces torch's observers bit for bit; qlib.activations records and cleans up."""

import pytest
import torch
from torch import nn
from torch.ao.quantization import (HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                                   PerChannelMinMaxObserver)

from qlib import activations, histogram_search, observers, qmath


@pytest.fixture
def batches():
    torch.manual_seed(0)
    return [torch.relu(torch.randn(4, 6, 5, 5) * (1 + i)) - 0.1 * i for i in range(6)]


def test_minmax_range(batches):
    observer = MinMaxObserver()
    for b in batches:
        observer(b)
    lo, hi = observers.minmax_range(batches)
    assert torch.equal(lo, observer.min_val) and torch.equal(hi, observer.max_val)
    s, z = observer.calculate_qparams()
    assert qmath.qparams(lo, hi) == (float(s), int(z))


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_moving_average_range(batches, c):
    observer = MovingAverageMinMaxObserver(averaging_constant=c, reduce_range=True)
    for b in batches:
        observer(b)
    lo, hi = observers.moving_average_range(batches, c)
    assert torch.equal(lo, observer.min_val) and torch.equal(hi, observer.max_val)
    s, z = observer.calculate_qparams()
    assert qmath.qparams(lo, hi, reduce_range=True) == (float(s), int(z))


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_channel_range(batches, axis):
    observer = PerChannelMinMaxObserver(ch_axis=axis, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    for b in batches:
        observer(b)
    lo, hi = observers.per_channel_range(batches, axis)
    assert torch.equal(lo, observer.min_val) and torch.equal(hi, observer.max_val)
    s, z = observer.calculate_qparams()
    ours_s, ours_z = qmath.qparams_per_channel(lo, hi, torch.quint8, symmetric=False)
    assert torch.equal(ours_s, s) and torch.equal(ours_z, z.to(torch.int64))


def test_histogram_observer_clips_heavy_tails_and_lowers_the_error():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    histogram = HistogramObserver()
    histogram(x)
    s, z = (v.item() for v in histogram.calculate_qparams())
    s_mm, z_mm = qmath.qparams(x.min(), x.max())
    lo, hi = qmath.representable(s, z, 0, 255)
    assert hi < 0.95 * x.max()  # it clips the long tail
    assert observers.quantization_mse(x, s, z) < observers.quantization_mse(x, s_mm, z_mm)


def test_mse_curve_measures_each_candidate_range():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((5000,)).abs()
    highs = torch.linspace(0.5, float(x.max()), 40)
    errors = observers.mse_curve(x, highs, reduce_range=True)
    assert len(errors) == 40 and errors[0] > 100 * errors[-1]  # heavy clipping costs most
    s, z = qmath.qparams(0.0, highs[7], reduce_range=True)
    assert errors[7] == observers.quantization_mse(x, s, z)


def test_representable_range_and_mse():
    assert qmath.representable(0.5, 10, 0, 255) == (-5.0, 122.5)
    x = torch.tensor([0.0, 0.5, 0.26])
    assert observers.quantization_mse(x, 0.5, 0) == pytest.approx((0.24**2) / 3)


def test_vpmaddubsw_saturates_pairs_to_int16():
    a = torch.tensor([255, 255, 127, 127, 255, 0])
    w = torch.tensor([127, 127, 127, 127, -128, -128])
    assert observers.vpmaddubsw(a, w).tolist() == [32767, 32258, -32640]
    with pytest.raises(ValueError, match="even"):
        observers.vpmaddubsw(a[:3], w[:3])
    with pytest.raises(ValueError, match="u8"):
        observers.vpmaddubsw(a + 1, w)


def test_record_outputs_collects_each_batch_and_removes_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    data = [(torch.randn(2, 1, 6, 6), torch.zeros(2)) for _ in range(3)]
    recorded = activations.record_outputs(model, ["1", "3"], data, num_batches=2)
    assert len(recorded["1"]) == 2 and recorded["1"][0].shape == (2, 3, 4, 4)
    assert torch.equal(recorded["3"][1], model(data[1][0]))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no submodule"):
        activations.record_outputs(model, ["conv9"], data)


# ---------------------------------------------------------------- HistogramObserver's search, replayed

def _histogram_data():
    torch.manual_seed(0)
    return {
        "normal": [torch.randn(10_000) for _ in range(3)],
        "laplace": [torch.distributions.Laplace(0.0, 1.0).sample((20_000,)) for _ in range(2)],
        "relu, growing": [torch.relu(torch.randn(4, 16, 8, 8) * (1 + i)) for i in range(4)],
        "shifting": [torch.randn(5_000) * (1 + i) + i for i in range(5)],
        "squared exponential": [torch.empty(30_000).exponential_() ** 2],
        "bytes": [torch.randint(0, 256, (5_000,)).float() / 255],
    }


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("name", list(_histogram_data()))
def test_search_replays_the_observer_bit_for_bit(name, reduce_range):
    observer = HistogramObserver(reduce_range=reduce_range)
    for batch in _histogram_data()[name]:
        observer(batch)
    search = histogram_search.search_observer(observer)
    new_min, new_max = observer._non_linear_param_search()
    assert torch.equal(search.new_min, new_min) and torch.equal(search.new_max, new_max)
    scale, zero_point = observer.calculate_qparams()
    assert qmath.qparams(search.new_min, search.new_max, reduce_range=reduce_range) == (scale.item(), zero_point.item())
    for candidate in search.candidates:   # every score is torch's own, exactly
        assert candidate.error == observer._compute_quantization_error(candidate.start_bin, candidate.end_bin)
    accepted = [c for c in search.candidates if c.accepted]
    assert accepted and search.candidates[0].accepted          # the first candidate is never compared
    assert (search.start_bin, search.end_bin) == (accepted[-1].start_bin, accepted[-1].end_bin)
    errors = [c.error for c in accepted]
    assert errors == sorted(errors, reverse=True)               # it only goes down ...
    if search.stopped_by is not None:                           # ... until the first rise
        assert search.stopped_by is search.candidates[-1] and search.stopped_by.error > errors[-1]


def test_search_scores_256_levels_even_with_reduce_range():
    data = _histogram_data()["laplace"]
    full, reduced = HistogramObserver(), HistogramObserver(reduce_range=True)
    for batch in data:
        full(batch), reduced(batch)
    assert reduced.dst_nbins == 256 and reduced.quant_max - reduced.quant_min + 1 == 128
    a, b = histogram_search.search_observer(full), histogram_search.search_observer(reduced)
    assert a.candidates == b.candidates and torch.equal(a.new_max, b.new_max)
    with_128 = histogram_search.search_observer(reduced, levels=128)
    assert with_128.candidates[0].error > 3 * a.candidates[0].error   # twice the step: about 4x the error


def test_walking_past_the_stop_keeps_torchs_answer():
    observer = HistogramObserver()
    for batch in _histogram_data()["laplace"]:
        observer(batch)
    stopped = histogram_search.search_observer(observer)
    walked = histogram_search.search_observer(observer, stop_at_first_increase=False, max_candidates=50)
    assert len(walked.candidates) == 50 and walked.candidates[:len(stopped.candidates)] == stopped.candidates
    assert (walked.start_bin, walked.end_bin) == (stopped.start_bin, stopped.end_bin)
    assert torch.equal(walked.new_max, stopped.new_max)
    low, high = walked.range_of(walked.candidates[0])
    assert low == pytest.approx(observer.min_val.item()) and high < observer.max_val.item()


def test_search_refuses_bad_input():
    with pytest.raises(ValueError, match="1-D float tensor"):
        histogram_search.search(torch.ones(4, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="negative, NaN"):
        histogram_search.l2_error(torch.tensor([1.0, float("nan")]), 0.1, 0, 1)
    with pytest.raises(ValueError, match="start_bin"):
        histogram_search.l2_error(torch.ones(8), 0.1, 5, 2)
    with pytest.raises(ValueError, match="min <= max"):
        histogram_search.search(torch.ones(8), 1.0, 0.0)
    with pytest.raises(ValueError, match="seen no data"):
        histogram_search.search_observer(HistogramObserver())
    with pytest.raises(ValueError, match="HistogramObserver"):
        histogram_search.search_observer(MinMaxObserver())


def test_quantization_mse_equals_qmaths_fake_quantize():
    torch.manual_seed(0)
    x = torch.randn(5000) * 3
    for scale, zero_point in [qmath.qparams(x.min(), x.max()), qmath.qparams(-1.0, 2.0), (0.01, 255)]:
        ours = float((qmath.fake_quantize(x, scale, zero_point).double() - x.double()).pow(2).mean())
        assert observers.quantization_mse(x, scale, zero_point) == ours
    with pytest.raises(ValueError, match="NaN"):
        observers.quantization_mse(torch.tensor([float("nan")]), 0.1, 0)
