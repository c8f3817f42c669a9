"""qlib.qmath against torch itself, bit for bit, on random and adversarial inputs (hypothesis).

Run with `--hypothesis-show-statistics` to see how many examples each test tried.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from qlib import qmath

# One profile for every property below: about 30 s in all on 2 shared cores, same examples each run.
settings.register_profile("qmath", max_examples=120, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
QMATH = settings.get_profile("qmath")

DTYPES = [torch.quint8, torch.qint8, torch.qint32]
f32 = st.floats(width=32, allow_nan=False)  # includes +-inf, 0, -0, subnormals, float32 max
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def scales(draw):
    """A usable scale: powers of two (exact inverse), tiny, huge, and ordinary ones."""
    kind = draw(st.sampled_from(["pow2", "any", "ordinary"]))
    if kind == "pow2":
        return 2.0 ** draw(st.integers(-126, 120))
    if kind == "ordinary":
        return draw(st.floats(1e-4, 10.0))
    scale = draw(st.floats(min_value=2.0**-127, max_value=2.0**127, width=32))
    assume(math.isfinite(1 / scale))
    return scale


def zero_points(dtype):
    qmin, qmax, _ = qmath.QRANGES[dtype]
    return st.one_of(st.sampled_from([qmin, qmax, 0, qmin + (qmax - qmin) // 2 + 1]),
                     st.integers(qmin, qmax))


@st.composite
def tensors_for(draw, scale, size=st.integers(1, 40)):
    """float32 values: exact ties (k + 0.5) * scale, values far outside any range, +-inf, anything."""
    n = draw(size)
    scale32 = float(torch.tensor(scale, dtype=torch.float32))
    ties = st.integers(-(2**31), 2**31).map(lambda k: (k + 0.5) * scale32)
    small_ties = st.integers(-300, 300).map(lambda k: (k + 0.5) * scale32)
    multiples = st.integers(-400, 400).map(lambda k: k * scale32)
    values = draw(st.lists(st.one_of(f32, small_ties, ties, multiples), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float32)  # out-of-float32 ties become +-inf: fine


@QMATH
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_quantize_equals_quantize_per_tensor(data, dtype):
    scale = data.draw(scales(), label="scale")
    zero_point = data.draw(zero_points(dtype), label="zero_point")
    x = data.draw(tensors_for(scale), label="x")
    expected = torch.quantize_per_tensor(x, scale, zero_point, dtype)
    ours = qmath.quantize(x, scale, zero_point, dtype)
    assert ours.dtype == expected.int_repr().dtype
    assert torch.equal(ours, expected.int_repr()), (x, scale, zero_point, dtype)
    # dequantize: same float32 bits (compare bit patterns so that -0.0 != 0.0 would show)
    back = qmath.dequantize(ours, scale, zero_point)
    assert torch.equal(back.view(torch.int32), expected.dequantize().view(torch.int32))


@QMATH
@given(data=st.data(), dtype=st.sampled_from(DTYPES), shape=st.sampled_from([(3, 5), (2, 3, 4), (4, 3, 2, 5)]))
def test_quantize_per_channel_equals_torch_on_every_axis(data, dtype, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    channels = shape[axis]
    scale_list = data.draw(st.lists(scales(), min_size=channels, max_size=channels), label="scales")
    zp_list = data.draw(st.lists(zero_points(dtype), min_size=channels, max_size=channels), label="zps")
    numel = math.prod(shape)
    values = data.draw(st.lists(st.one_of(f32, st.integers(-300, 300).map(lambda k: k + 0.5)),
                                min_size=numel, max_size=numel), label="values")
    # values scaled per channel so that ties of each channel's scale occur
    s = torch.tensor(scale_list, dtype=torch.float64)
    x = torch.tensor(values, dtype=torch.float32).reshape(shape)
    view = [1] * len(shape)
    view[axis] = -1
    x = x * s.float().reshape(view)
    z = torch.tensor(zp_list, dtype=torch.int64)
    assume(not torch.isnan(x).any())  # inf * 0 cannot occur, but 0 * inf can: skip those draws
    expected = torch.quantize_per_channel(x, s, z, axis % len(shape), dtype)
    ours = qmath.quantize_per_channel(x, s, z, axis, dtype)
    assert torch.equal(ours, expected.int_repr())
    back = qmath.dequantize_per_channel(ours, s, z, axis)
    assert torch.equal(back.view(torch.int32), expected.dequantize().view(torch.int32))


def test_zero_point_is_added_after_rounding():
    """torch 2.14.1 rounds x / S first: 2.5 -> 2 (+1 = 3), 3.5 -> 4 (+1 = 5), 0.5 -> 0 (+1 = 1)."""
    x = torch.tensor([2.5, 3.5, 0.5, -0.5, -1.5])
    for dtype in DTYPES:
        expected = torch.quantize_per_tensor(x, 1.0, 1, dtype).int_repr()
        assert torch.equal(qmath.quantize(x, 1.0, 1, dtype), expected)
        assert qmath.quantize(x, 1.0, 1, dtype)[:3].tolist() == [3, 5, 1]


def test_infinities_match_torch_including_the_int32_overflow_quirk():
    x = torch.tensor([float("inf"), float("-inf"), 3e38, -3e38, 2.2e9, 2.1e9] * 3)  # vector + tail
    for dtype in DTYPES:
        qmin, qmax, _ = qmath.QRANGES[dtype]
        for zero_point in sorted({qmin, 0 if qmin < 0 else 1, qmax, 128 if dtype == torch.quint8 else 5}):
            expected = torch.quantize_per_tensor(x, 1.0, zero_point, dtype).int_repr()
            assert torch.equal(qmath.quantize(x, 1.0, zero_point, dtype), expected)
    # The quirk documented in quantize(): +inf -> 0 for quint8 with a zero point >= 128.
    assert qmath.quantize(torch.tensor([float("inf")]), 1.0, 200, torch.quint8).item() == 0
    assert qmath.quantize(torch.tensor([float("-inf")]), 0.1, -3, torch.qint8).item() == 127
    assert qmath.quantize_per_channel(torch.tensor([[float("inf")]]), [1.0], [200], 0, torch.quint8).item() == 255


SETTINGS = [(dtype, symmetric, reduce_range) for dtype in (torch.quint8, torch.qint8)
            for symmetric in (False, True) for reduce_range in (False, True)
            if not (symmetric and reduce_range and dtype == torch.quint8)]  # torch refuses that one


@pytest.mark.parametrize("dtype,symmetric,reduce_range", SETTINGS)
@QMATH
@given(a=finite_f32, b=finite_f32, spread=st.sampled_from(["as drawn", "positive", "negative", "tiny"]))
def test_qparams_equals_minmax_observer(dtype, symmetric, reduce_range, a, b, spread):
    lo, hi = min(a, b), max(a, b)
    if spread == "positive":
        lo, hi = abs(lo), abs(lo) + abs(hi)
    elif spread == "negative":
        lo, hi = -abs(lo) - abs(hi), -abs(lo)
    elif spread == "tiny":
        lo, hi = lo * 1e-38, hi * 1e-38
    lo, hi = torch.tensor([lo, hi], dtype=torch.float32).tolist()
    assume(math.isfinite(lo) and math.isfinite(hi) and lo <= hi)
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    observer = MinMaxObserver(dtype=dtype, qscheme=scheme, reduce_range=reduce_range)
    observer(torch.tensor([lo, hi]))
    scale, zero_point = observer.calculate_qparams()
    with torch.no_grad():
        ours = qmath.qparams(lo, hi, dtype, symmetric, reduce_range)
    if math.isinf(hi - lo) or math.isinf(float(scale)):
        assume(False)  # float32 overflow of max - min: the observer's answer is inf
    assert ours == (float(scale), int(zero_point))


def test_symmetric_reduced_quint8_is_refused_like_torch():
    with pytest.raises(NotImplementedError):
        MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric, reduce_range=True)
    with pytest.raises(ValueError, match="reduce_range"):
        qmath.qparams(-1.0, 1.0, torch.quint8, symmetric=True, reduce_range=True)


@pytest.mark.parametrize("dtype,symmetric", [(torch.qint8, True), (torch.qint8, False), (torch.quint8, False)])
@QMATH
@given(data=st.data(), axis=st.integers(0, 2))
def test_qparams_per_channel_equals_per_channel_observer(data, dtype, symmetric, axis):
    shape = [3, 4, 5]
    values = data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=60, max_size=60))
    x = torch.tensor(values, dtype=torch.float32).reshape(shape)
    scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    observer = PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=scheme)
    observer(x)
    scales, zps = observer.calculate_qparams()
    ours_s, ours_z = qmath.qparams_per_channel(*qmath.channel_ranges(x, axis), dtype, symmetric)
    assert torch.equal(ours_s, scales) and torch.equal(ours_z, zps.to(torch.int64))


def test_qparams_of_a_real_weight_tensor_match_the_x86_weight_observer():
    torch.manual_seed(0)
    weight = torch.nn.Conv2d(16, 32, 3).weight.detach()
    observer = torch.ao.quantization.get_default_qconfig("x86").weight()
    observer(weight)
    scales, zps = observer.calculate_qparams()
    ours_s, ours_z = qmath.qparams_per_channel(*qmath.channel_ranges(weight, 0))
    assert torch.equal(ours_s, scales) and torch.equal(ours_z, zps)
    expected = torch.quantize_per_channel(weight, scales.double(), zps, 0, torch.qint8).int_repr()
    assert torch.equal(qmath.quantize_per_channel(weight, ours_s, ours_z, 0, torch.qint8), expected)


def test_qrange():
    assert qmath.qrange(torch.quint8) == (0, 255)
    assert qmath.qrange(torch.quint8, reduce_range=True) == (0, 127)
    assert qmath.qrange(torch.qint8, reduce_range=True) == (-64, 63)
    assert qmath.qrange(torch.qint32) == (-(2**31), 2**31 - 1)


def test_zero_is_exact_whatever_the_range():
    for lo, hi in [(-0.3, 7.1), (0.0, 6.0), (-5.5, -0.25), (1.5, 2.0)]:
        scale, zero_point = qmath.qparams(lo, hi)
        q = qmath.quantize(torch.zeros(3), scale, zero_point)
        assert torch.equal(q, torch.full((3,), zero_point, dtype=torch.uint8))
        assert torch.equal(qmath.dequantize(q, scale, zero_point), torch.zeros(3))


@pytest.mark.parametrize("scale,why", [(0.0, "> 0"), (-1.0, "> 0"), (float("nan"), "not finite"),
                                       (float("inf"), "not finite"), (1e39, "overflows"),
                                       (1e-40, "so small"), ("big", "one positive number")])
def test_bad_scale_is_refused_with_the_reason(scale, why):
    with pytest.raises(ValueError, match="scale") as info:
        qmath.quantize(torch.ones(2), scale, 0, torch.quint8)
    assert why in str(info.value)


@pytest.mark.parametrize("dtype,zero_point", [(torch.quint8, -1), (torch.quint8, 256), (torch.qint8, 128),
                                              (torch.qint8, -129), (torch.quint8, 1.5), (torch.qint32, 2**31)])
def test_bad_zero_point_is_refused(dtype, zero_point):
    with pytest.raises(ValueError, match="zero_point"):
        qmath.quantize(torch.ones(2), 0.1, zero_point, dtype)


def test_bad_dtype_nan_and_non_float32_input_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        qmath.quantize(torch.ones(2), 0.1, 0, torch.float16)
    with pytest.raises(ValueError, match="NaN"):
        qmath.quantize(torch.tensor([1.0, float("nan")]), 0.1, 0)
    with pytest.raises(ValueError, match="float32"):
        qmath.quantize(torch.ones(2, dtype=torch.float64), 0.1, 0)
    with pytest.raises(ValueError, match="NaN"):
        qmath.quantize_per_channel(torch.tensor([[float("nan")]]), [1.0], [0], 0)


def test_bad_per_channel_arguments_are_refused():
    x = torch.ones(3, 4)
    with pytest.raises(ValueError, match="3 channels"):
        qmath.quantize_per_channel(x, [0.1, 0.1], [0, 0], 0)
    with pytest.raises(ValueError, match=r"scales\[1\]"):
        qmath.quantize_per_channel(x, [0.1, 0.0, 0.1], [0, 0, 0], 0)
    with pytest.raises(ValueError, match=r"zero_points\[2\]"):
        qmath.quantize_per_channel(x, [0.1] * 3, [0, 0, 300], 0, torch.quint8)
    with pytest.raises(ValueError, match="axis"):
        qmath.quantize_per_channel(x, [0.1] * 3, [0] * 3, 2)


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="above"):
        qmath.qparams(2.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        qmath.qparams(float("-inf"), 1.0)
    with pytest.raises(ValueError, match="dtype"):
        qmath.qparams(-1.0, 1.0, torch.qint32)


def test_dequantize_refuses_float_input_and_out_of_range_integers():
    with pytest.raises(ValueError, match="integer tensor"):
        qmath.dequantize(torch.ones(2), 0.1, 0)
    with pytest.raises(ValueError, match="range"):
        qmath.dequantize(torch.tensor([300]), 0.1, 0, torch.quint8)
    with pytest.raises(ValueError, match="pass dtype"):
        qmath.dequantize(torch.tensor([3]), 0.1, 0)


@pytest.mark.parametrize("dtype,symmetric,reduce_range", SETTINGS)
def test_any_range_functions_equal_the_8_bit_ones(dtype, symmetric, reduce_range):
    torch.manual_seed(1)
    qmin, qmax = qmath.qrange(dtype, reduce_range)
    for lo, hi in [(-0.7, 2.3), (0.0, 5.0), (-3.0, -1.0), (-1e-3, 1e-3)]:
        scale, zero_point = qmath.qparams_for_range(lo, hi, qmin, qmax, symmetric)
        assert (scale, zero_point) == qmath.qparams(lo, hi, dtype, symmetric, reduce_range)
        x = torch.randn(1000) * 3
        full_min, full_max = qmath.qrange(dtype)  # torch clamps to the dtype, even after reduce_range
        assert torch.equal(qmath.quantize_to_range(x, scale, zero_point, full_min, full_max),
                           torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr().long())


def test_sqnr_db():
    x = torch.tensor([3.0, 4.0])
    assert qmath.sqnr_db(x, x) == math.inf
    assert qmath.sqnr_db(x, x + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
