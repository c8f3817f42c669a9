import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from qlib import qmath, widgets  # noqa: E402


def test_8_bit_exploration_is_torch_quantize_per_tensor():
    result = widgets.explore(8, -2.0, 3.5, "affine", "gaussian")
    assert (result.scale, result.zero_point) == qmath.qparams(-2.0, 3.5, torch.quint8)
    expected = torch.quantize_per_tensor(result.x, result.scale, result.zero_point, torch.quint8)
    assert torch.equal(result.q, expected.int_repr().long())
    assert torch.equal(result.x_hat, expected.dequantize())


def test_8_bit_symmetric_exploration_is_qint8_symmetric():
    result = widgets.explore(8, -1.0, 2.5, "symmetric", "laplace (heavy tails)")
    assert (result.scale, result.zero_point) == qmath.qparams(-1.0, 2.5, torch.qint8, symmetric=True)
    expected = torch.quantize_per_tensor(result.x, result.scale, 0, torch.qint8)
    assert torch.equal(result.q, expected.int_repr().long())


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
@pytest.mark.parametrize("scheme", widgets.SCHEMES)
def test_rounding_error_is_at_most_half_a_step_and_clipping_is_counted(bits, scheme):
    result = widgets.explore(bits, -1.0, 1.5, scheme, "gaussian")
    stats = result.stats()
    assert stats["max |rounding error| (unclipped)"] <= result.scale / 2 * (1 + 1e-6)
    outside = (result.error.abs() > result.scale / 2 * (1 + 1e-6)).float().mean()   # farther than S/2 from the grid
    assert stats["clipped fraction"] == pytest.approx(float(outside)) and stats["clipped fraction"] > 0
    assert stats["max |clipping error|"] > result.scale / 2
    assert result.q.min() >= result.qmin and result.q.max() <= result.qmax
    assert stats["levels"] == 2**bits


def test_more_bits_means_less_error():
    errors = [widgets.explore(b, -3, 3).stats()["MSE"] for b in (2, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="bits"):
        widgets.explore(1)
    with pytest.raises(ValueError, match="scheme"):
        widgets.explore(8, scheme="log")
    with pytest.raises(ValueError, match="distribution"):
        widgets.explore(8, distribution="uniform")
    with pytest.raises(ValueError, match="above"):
        widgets.explore(8, 2.0, 1.0)


def test_plot_has_three_panels():
    fig = widgets.plot_exploration(widgets.explore(4))
    assert len(fig.axes) == 3
    plt.close(fig)


def test_widget_result_follows_its_sliders():
    w = widgets.explorer()
    first = w.result
    assert isinstance(first, widgets.Exploration) and first.bits == 3
    bits, value_range, scheme, distribution = w.children[:4]
    bits.value = 6
    scheme.value = "symmetric"
    value_range.value = (-1.0, 2.0)
    assert (w.result.bits, w.result.scheme) == (6, "symmetric")
    assert (w.result.scale, w.result.zero_point) == qmath.qparams_for_range(-1.0, 2.0, -32, 31, True)
    distribution.value = "after ReLU"
    assert torch.equal(w.result.x, widgets.sample("after ReLU"))
    plt.close("all")
