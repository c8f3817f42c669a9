"""The integer-only requantization of Jacob et al. 2018 (gemmlowp): primitives and a whole model."""

from fractions import Fraction
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from qlib import data, int8, metrics, pretrained, ptq

INT32 = st.integers(-(2 ** 31), 2 ** 31 - 1)


def round_half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


def round_half_away(q: Fraction) -> int:
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), q))


@settings(max_examples=300, deadline=None)
@given(INT32, st.integers(-(2 ** 31), 2 ** 31 - 1))
def test_saturating_rounding_doubling_high_mul(a, b):
    got = int(int8.saturating_rounding_doubling_high_mul(torch.tensor([a]), b))
    if a == b == -(2 ** 31):
        assert got == 2 ** 31 - 1                      # the one product that overflows: saturate
    else:                                              # a*b / 2**31, ties towards +infinity
        assert got == round_half_up(Fraction(a * b, 2 ** 31))


@settings(max_examples=300, deadline=None)
@given(INT32, st.integers(0, 31))
def test_rounding_divide_by_power_of_two(x, exponent):
    got = int(int8.rounding_divide_by_pot(torch.tensor([x]), exponent))
    assert got == round_half_away(Fraction(x, 2 ** exponent))


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 0.999999))
def test_quantize_multiplier(real):
    m0, shift = int8.quantize_multiplier(real)
    assert 2 ** 30 <= m0 < 2 ** 31                      # Q31 value in [0.5, 1)
    assert abs(Fraction(m0, 2 ** 31) * Fraction(2) ** -shift - Fraction(real)) <= Fraction(2) ** -(32 + shift)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2 ** 24), 2 ** 24), st.floats(1e-5, 0.99))
def test_multiply_by_quantized_multiplier_is_within_one(x, real):
    m0, shift = int8.quantize_multiplier(real)
    got = int(int8.multiply_by_quantized_multiplier(torch.tensor([x]), m0, shift))
    assert abs(got - x * real) <= 1


def test_quantize_multiplier_rejects_non_positive():
    with pytest.raises(ValueError):
        int8.quantize_multiplier(0.0)


@pytest.fixture(scope="module")
def seednet():
    qmodel = ptq.quantize_static(pretrained.load("seednet-fmnist"), data.calibration_subset(256),
                                 engine="x86", progress=False)
    images, labels = data.fashion_mnist("test").tensors()
    return qmodel, images[:1000], labels[:1000]


def test_fixed_point_seednet_stays_close_to_pytorch(seednet):
    qmodel, x, y = seednet
    ours, theirs = int8.run(qmodel, x, requant="fixedpoint"), qmodel(x)
    assert not torch.equal(ours, theirs)               # a different rounding, visibly
    scale = qmodel.classifier[4].scale
    assert ((ours - theirs).abs() / scale).round().max() <= 3   # a few int8 steps at most
    assert abs(metrics.accuracy(ours.argmax(1), y) - metrics.accuracy(theirs.argmax(1), y)) <= 0.5


def test_fixed_point_mode_makes_no_float_tensor(seednet, monkeypatch):
    qmodel, x, _ = seednet
    int8.run(qmodel, x[:8], requant="fixedpoint")      # the guard checks every op's result

    def float_multiplier(v, m0, shift):                # a float shortcut sneaking in
        return torch.round(v.double() * torch.as_tensor(m0) / 2.0 ** 31 / 2.0 ** torch.as_tensor(shift)).long()

    monkeypatch.setattr(int8.fixedpoint, "multiply_by_quantized_multiplier", float_multiplier)
    with pytest.raises(AssertionError, match="float tensor in fixed-point mode"):
        int8.run(qmodel, x[:8], requant="fixedpoint")
