"""qlib.observers reproduces torch's observers bit for bit; qlib.activations records and cleans up."""

import pytest
import torch
from torch import nn
from torch.ao.quantization import (HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                                   PerChannelMinMaxObserver)

from qlib import activations, observers, qmath


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
