"""Bad answers to the exercise checkers: each is refused (False) with a message naming its cause,
nothing ever raises, and right answers given in other acceptable forms still pass."""

import builtins
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from qlib import checks, observers, qmath

# capsys is read (and emptied) once per example, so reusing it across hypothesis examples is safe
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

XMIN, XMAX = -1.5, 4.2
S, Z = qmath.qparams(XMIN, XMAX, torch.quint8)
NAN, INF = float("nan"), float("inf")


def quantized(values):
    return torch.quantize_per_tensor(torch.as_tensor(values, dtype=torch.float32), 0.1, 0, torch.quint8)


def refused(capsys, result, *causes):
    """The checker returned False, said "Not yet" (never "Correct!"), and named every cause."""
    out = capsys.readouterr().out
    assert result is False, out
    assert "Not yet:" in out and "Correct!" not in out, out
    for cause in causes:
        assert cause.lower() in out.lower(), f"{cause!r} not in {out!r}"
    return out


def accepted(capsys, result):
    out = capsys.readouterr().out
    assert result is True and "Correct!" in out, out


# ---------------------------------------------------------------- check_qparams

BAD_ZERO_POINTS = [
    (Z + 0.9, "not an integer"), (Z - 0.7, "not an integer"), (Z + 0.5, "zero points are integers"),
    (torch.tensor(Z + 0.25), "not an integer"), (torch.tensor(Z - 0.5, dtype=torch.float64), "not an integer"),
    (np.float64(Z + 0.1), "not an integer"), (True, "bool"), (torch.tensor(True), "bool"), (None, "None"),
    (str(Z), "str"), ({"zero_point": Z}, "dict"), ([Z, Z], "list"), (torch.tensor([Z, Z]), "one integer"),
    (NAN, "finite"), (INF, "finite"), (torch.tensor(-INF), "finite"), (quantized([Z]), ".int_repr()"),
    (complex(Z, 0), "complex"), (10**30, "differs"), (Z + 1, "differs"), (float(Z - 1), "differs"),
]
BAD_SCALES = [
    (S * 1.01, "differs"), (torch.tensor(S, dtype=torch.float16), "float16"),
    (torch.tensor(S, dtype=torch.bfloat16), "bfloat16"), (NAN, "finite"), (INF, "finite"),
    (torch.tensor(-INF), "finite"), (None, "None"), (str(S), "str"), (True, "bool"), ([S, S], "one number"),
    (torch.full((3,), S), "one number"), (quantized([S]), "quantized"), (complex(S, 0), "complex"),
    ({"scale": S}, "dict"), (-S, "differs"), (0, "differs"),
]
RIGHT_QPARAMS = [
    (S, Z), (torch.tensor(S), torch.tensor(Z)), (torch.tensor(S, dtype=torch.float64), float(Z)),
    (np.float32(S), np.int64(Z)), (torch.tensor([S]), torch.tensor([Z])), (np.float64(S), torch.tensor(float(Z))),
    (torch.tensor(S, requires_grad=True), torch.tensor(Z, dtype=torch.int32)),
]


@pytest.mark.parametrize("zero_point, cause", BAD_ZERO_POINTS)
def test_check_qparams_refuses_bad_zero_points(capsys, zero_point, cause):
    refused(capsys, checks.check_qparams(S, zero_point, XMIN, XMAX), cause)


@pytest.mark.parametrize("scale, cause", BAD_SCALES)
def test_check_qparams_refuses_bad_scales(capsys, scale, cause):
    refused(capsys, checks.check_qparams(scale, Z, XMIN, XMAX), cause)


@pytest.mark.parametrize("zero_point, cause", [(False, "bool"), (0.4, "integer"), (-0.5, "integer"),
                                               (torch.tensor(False), "bool")])
def test_check_qparams_refuses_stand_ins_for_a_zero_zero_point(capsys, zero_point, cause):
    scale, _ = qmath.qparams(-0.3, 2.0, torch.qint8, symmetric=True)
    refused(capsys, checks.check_qparams(scale, zero_point, -0.3, 2.0, torch.qint8, symmetric=True), cause)


@pytest.mark.parametrize("scale, zero_point", RIGHT_QPARAMS)
def test_check_qparams_accepts_the_right_values_in_any_numeric_form(capsys, scale, zero_point):
    accepted(capsys, checks.check_qparams(scale, zero_point, XMIN, XMAX))


@EXAMPLES
@given(st.floats().filter(lambda z: not (math.isfinite(z) and z.is_integer())))
def test_check_qparams_refuses_any_non_integer_zero_point(capsys, zero_point):
    out = refused(capsys, checks.check_qparams(S, zero_point, XMIN, XMAX))
    assert ("not an integer" in out) or ("not a finite number" in out)


@EXAMPLES
@given(st.one_of(st.none(), st.booleans(), st.text(), st.binary(), st.complex_numbers(), st.floats(),
                 st.integers(), st.lists(st.floats()), st.dictionaries(st.text(), st.integers())),
       st.one_of(st.none(), st.booleans(), st.text(), st.floats(), st.integers(), st.lists(st.integers())))
def test_check_qparams_never_raises_nor_accepts_arbitrary_answers(capsys, scale, zero_point):
    refused(capsys, checks.check_qparams(scale, zero_point, XMIN, XMAX))


# ---------------------------------------------------------------- check_quantize

def _right_qint8(x, scale, zero_point):
    return qmath.quantize(x, scale, zero_point, torch.qint8)


def _not_written(x, scale, zero_point):
    raise NotImplementedError


def _calls_a_helper_that_fails(x, scale, zero_point):
    return _helper_that_fails(x)


def _helper_that_fails(x):
    return {}["missing key"]


BAD_QUANTIZE = [
    (lambda x, s, z: torch.quantize_per_tensor(x, s, z, torch.qint8),
     "you returned a quantized tensor; return its integers with .int_repr()"),
    (lambda x, s, z: _right_qint8(x, s, z).double(), "float tensor (torch.float64)"),
    (lambda x, s, z: _right_qint8(x, s, z).half(), "float tensor (torch.float16)"),
    (lambda x, s, z: x / s + z, "non-integer"),
    (lambda x, s, z: x / 0 * 0, "finite"),
    (lambda x, s, z: _right_qint8(x, s, z) > 0, "bool"),
    (lambda x, s, z: _right_qint8(x, s, z).to(torch.complex64), "complex"),
    (lambda x, s, z: None, "None"),
    (lambda x, s, z: "q", "str"),
    (lambda x, s, z: {"q": _right_qint8(x, s, z)}, "dict"),
    (lambda x, s, z: (_right_qint8(x, s, z), s), "tuple"),
    (lambda x, s, z: _right_qint8(x, s, z)[:-1], "shape"),
    (lambda x, s, z: _right_qint8(x, s, z).unsqueeze(0), "shape"),
    (lambda x, s, z: 3, "shape"),
    (lambda x, s, z: _right_qint8(x, s, z).to(torch.uint8), "cannot hold torch.qint8's range"),
    (lambda x, s, z: _right_qint8(x, s, z) + 1, "differ"),
    (_not_written, "not written yet"),
    (_calls_a_helper_that_fails, "raised KeyError: 'missing key'"),
    (lambda x, s, z: 1 / 0, "raised ZeroDivisionError"),
    (lambda x, s, z: x[5000], "raised IndexError"),
    (lambda x, s, z: torch.ones(3) + x, "raised RuntimeError"),
    (lambda x, s, z: qmath.quantize(x, -s, z, torch.qint8), "raised"),
    (lambda x, s, z: torch.quantize_per_tensor(x, s, z, torch.qint8) * 2.5, "raised RuntimeError"),
    (lambda x, s, z: x.no_such_method(), "raised AttributeError"),
    (lambda x: x, "raised TypeError"),
    (torch.ones(3), "expected your function"),
    (None, "expected your function"),
]
RIGHT_QUANTIZE = [
    _right_qint8,
    lambda x, s, z: _right_qint8(x, s, z).to(torch.int64),
    lambda x, s, z: _right_qint8(x, s, z).to(torch.int16),
    lambda x, s, z: _right_qint8(x, s, z).tolist(),
    lambda x, s, z: _right_qint8(x, s, z).numpy(),
    lambda x, s, z: torch.quantize_per_tensor(x, s, z, torch.qint8).int_repr(),
]


@pytest.mark.parametrize("fn, cause", BAD_QUANTIZE)
def test_check_quantize_refuses_bad_functions(capsys, fn, cause):
    refused(capsys, checks.check_quantize(fn, torch.qint8), cause)


@pytest.mark.parametrize("fn", RIGHT_QUANTIZE)
def test_check_quantize_accepts_the_right_integers_in_any_wide_integer_form(capsys, fn):
    accepted(capsys, checks.check_quantize(fn, torch.qint8))


def test_a_learners_exception_names_the_line_of_the_learners_code(capsys):
    out = refused(capsys, checks.check_quantize(_calls_a_helper_that_fails))
    assert "in _helper_that_fails, line" in out and 'return {}["missing key"]' in out
    assert "returned nothing" in out and "shape" not in out
    out = refused(capsys, checks.check_quantize(lambda x, s, z: qmath.quantize(x, -s, z, torch.qint8)))
    assert "qmath.quantize(x, -s, z, torch.qint8)" in out  # the learner's line, not qlib's


def test_a_torch_op_that_is_not_implemented_is_not_an_unwritten_function(capsys):
    def adds_to_a_quantized_tensor(x, s, z):
        return torch.quantize_per_tensor(x, s, z, torch.qint8).add_(1)

    out = refused(capsys, checks.check_quantize(adds_to_a_quantized_tensor), "raised")
    assert "not written yet" not in out


# ---------------------------------------------------------------- check_moving_average

_moving_average = observers.moving_average_range  # the right answer, as notebook 02 writes it


def _indexes_past_the_end(batches, c):
    return torch.aminmax(batches[len(batches)])


BAD_MOVING_AVERAGE = [
    (_indexes_past_the_end, "raised IndexError"),
    (lambda b, c: float("minimum"), "raised ValueError"),
    (lambda b, c: None + c, "raised TypeError"),
    (lambda b, c: (*_moving_average(b, c), 0.0), "pair"),
    (lambda b, c: _moving_average(b, c)[:1], "pair"),
    (lambda b, c: dict(enumerate(_moving_average(b, c))), "dict"),
    (lambda b, c: "ab", "pair"),
    (lambda b, c: 3.0, "pair"),
    (lambda b, c: None, "None"),
    (lambda b, c: (x for x in _moving_average(b, c)), "generator"),
    (lambda b, c: torch.stack(_moving_average(b, c) + _moving_average(b, c)), "pair"),
    (lambda b, c: (NAN, NAN), "finite"),
    (lambda b, c: (_moving_average(b, c)[0], INF), "finite"),
    (lambda b, c: (True, False), "bool"),
    (lambda b, c: (_moving_average(b, c)[0], None), "None"),
    (lambda b, c: (_moving_average(b, c)[0], "3"), "str"),
    (lambda b, c: quantized(torch.stack(_moving_average(b, c))), "quantized"),
    (lambda b, c: tuple(v.half() for v in _moving_average(b, c)), "float16"),
    (lambda b, c: (torch.stack(_moving_average(b, c)), 0.0), "one number"),
    (lambda b, c: tuple(v.to(torch.complex64) for v in _moving_average(b, c)), "complex"),
    (lambda b, c: tuple(v.double() * (1 + 1e-12) for v in _moving_average(b, c)), "float32"),
]
RIGHT_MOVING_AVERAGE = [
    _moving_average,
    lambda b, c: list(_moving_average(b, c)),
    lambda b, c: torch.stack(_moving_average(b, c)),
    lambda b, c: tuple(float(v) for v in _moving_average(b, c)),
    lambda b, c: tuple(v.double() for v in _moving_average(b, c)),
    lambda b, c: tuple(v.numpy() for v in _moving_average(b, c)),
]


@pytest.mark.parametrize("fn, cause", BAD_MOVING_AVERAGE)
def test_check_moving_average_refuses_bad_functions(capsys, fn, cause):
    refused(capsys, checks.check_moving_average(fn), cause)


@pytest.mark.parametrize("fn", RIGHT_MOVING_AVERAGE)
def test_check_moving_average_accepts_the_right_pair_in_any_form(capsys, fn):
    accepted(capsys, checks.check_moving_average(fn))


def test_an_exception_in_the_learners_function_is_not_called_a_wrong_return_value(capsys):
    out = refused(capsys, checks.check_moving_average(_indexes_past_the_end), "line", "batches[len(batches)]")
    assert "should return a pair" not in out


def _constructible_with_a_message(error_type):
    try:
        error_type("message")
    except Exception:
        return False
    return True


BUILTIN_ERRORS = sorted((e for e in vars(builtins).values() if isinstance(e, type) and issubclass(e, Exception)
                         and e is not NotImplementedError and _constructible_with_a_message(e)),
                        key=lambda e: e.__name__)


@EXAMPLES
@given(st.sampled_from(BUILTIN_ERRORS + [torch.OutOfMemoryError]), st.text(max_size=30),
       st.sampled_from([checks.check_quantize, checks.check_moving_average]))
def test_any_exception_of_the_learners_function_is_reported_and_never_escapes(capsys, error_type, message, check):
    error = error_type(message)

    def learner(*args):
        raise error

    out = refused(capsys, check(learner), f"raised {error_type.__name__}", "in learner, line", "raise error")
    assert "not written yet" not in out


def test_an_exception_whose_message_cannot_be_printed_is_still_reported(capsys):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def learner(batches, c):
        raise Unprintable()

    refused(capsys, checks.check_moving_average(learner), "raised Unprintable", "could not be printed")


# ---------------------------------------------------------------- check_per_channel_qparams

torch.manual_seed(0)
WEIGHT = torch.randn(8, 3, 3, 3)
SCALES, ZERO_POINTS = qmath.qparams_per_channel(*qmath.channel_ranges(WEIGHT, 0))

BAD_PER_CHANNEL_ZERO_POINTS = [
    (ZERO_POINTS + 0.9, "non-integer value(s), e.g. 0.9"), ([0.9] * 8, "non-integer"),
    (torch.full((8,), 0.5, dtype=torch.float64), "zero points are integers"),
    (torch.zeros(8, dtype=torch.bool), "bool"), (quantized([0.0] * 8), ".int_repr()"),
    (torch.full((8,), NAN), "NaN"), (ZERO_POINTS[:4], "one zero point per output channel"),
    (ZERO_POINTS + 1, "zero points differ"), (torch.zeros(8, dtype=torch.complex64), "complex"),
    ("zeros", "str"), (None, "None"), ({"c0": 0}, "dict"), ([[0], [0, 0]], "list"),
]
BAD_PER_CHANNEL_SCALES = [
    (SCALES.half(), "float16"), (torch.full((8,), NAN), "NaN"), (SCALES / 0, "infinite"), (None, "None"),
    (["0.1"] * 8, "list"), ([[0.1], [0.1, 0.2]], "list"), ({"c0": 0.1}, "dict"), (quantized(SCALES), "quantized"),
    (SCALES.to(torch.complex64), "complex"), (SCALES[:4], "one scale"), (SCALES * 2, "scales differ"),
    (SCALES > 0, "bool"), (SCALES.int(), "scales differ"), (SCALES.max().repeat(8), "127.5"),
]
RIGHT_PER_CHANNEL = [
    (SCALES.double(), ZERO_POINTS), (SCALES.tolist(), ZERO_POINTS.tolist()), (SCALES.reshape(8, 1), ZERO_POINTS),
    (SCALES.numpy(), ZERO_POINTS.numpy()), (SCALES, ZERO_POINTS.float()), (SCALES, ZERO_POINTS.int()),
    (SCALES.requires_grad_(False).clone().requires_grad_(True), torch.zeros(8, 1, dtype=torch.float64)),
]


@pytest.mark.parametrize("zero_points, cause", BAD_PER_CHANNEL_ZERO_POINTS)
def test_check_per_channel_qparams_refuses_bad_zero_points(capsys, zero_points, cause):
    refused(capsys, checks.check_per_channel_qparams(SCALES, zero_points, WEIGHT), cause)


@pytest.mark.parametrize("scales, cause", BAD_PER_CHANNEL_SCALES)
def test_check_per_channel_qparams_refuses_bad_scales(capsys, scales, cause):
    refused(capsys, checks.check_per_channel_qparams(scales, ZERO_POINTS, WEIGHT), cause)


@pytest.mark.parametrize("scales, zero_points", RIGHT_PER_CHANNEL)
def test_check_per_channel_qparams_accepts_the_right_values_in_any_form(capsys, scales, zero_points):
    accepted(capsys, checks.check_per_channel_qparams(scales, zero_points, WEIGHT))


@EXAMPLES
@given(st.lists(st.floats(), min_size=8, max_size=8).filter(
    lambda zs: any(not (math.isfinite(z) and z.is_integer()) for z in zs)))
def test_check_per_channel_qparams_refuses_any_non_integer_zero_point(capsys, zero_points):
    out = refused(capsys, checks.check_per_channel_qparams(SCALES, zero_points, WEIGHT))
    assert ("non-integer" in out) or ("NaN or infinite" in out)


# ---------------------------------------------------------------- check_folded_conv

def _conv_bn():
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    return conv.eval(), bn.eval()


CONV, BN = _conv_bn()
FACTOR = BN.weight.detach() / torch.sqrt(BN.running_var + BN.eps)
FOLDED_WEIGHT = CONV.weight.detach() * FACTOR.reshape(-1, 1, 1, 1)
FOLDED_BIAS = -BN.running_mean * FACTOR + BN.bias.detach()

BAD_FOLDED = [
    (FOLDED_WEIGHT.half(), FOLDED_BIAS, "float16"), (FOLDED_WEIGHT / 0, FOLDED_BIAS, "NaN or infinite"),
    (quantized(FOLDED_WEIGHT), FOLDED_BIAS, "dequantize"),
    (FOLDED_WEIGHT.round().long(), FOLDED_BIAS, "integer tensor"),
    (None, FOLDED_BIAS, "None"), (FOLDED_WEIGHT[:, 0].tolist(), FOLDED_BIAS, "shape"),
    ({"weight": FOLDED_WEIGHT}, FOLDED_BIAS, "dict"), (FOLDED_WEIGHT > 0, FOLDED_BIAS, "bool"),
    (FOLDED_WEIGHT.to(torch.complex64), FOLDED_BIAS, "complex"), (FOLDED_WEIGHT, None, "bias is still None"),
    (FOLDED_WEIGHT, FOLDED_BIAS.reshape(4, 1), "shape"), (FOLDED_WEIGHT, "bias", "str"),
    (FOLDED_WEIGHT, FOLDED_BIAS + 1e-3, "bias differs"), (FOLDED_WEIGHT * 1.001, FOLDED_BIAS, "weight differs"),
]
RIGHT_FOLDED = [
    (FOLDED_WEIGHT.double(), FOLDED_BIAS.double()), (FOLDED_WEIGHT.tolist(), FOLDED_BIAS.tolist()),
    (CONV.weight * FACTOR.reshape(-1, 1, 1, 1), FOLDED_BIAS.numpy()),
]


@pytest.mark.parametrize("weight, bias, cause", BAD_FOLDED)
def test_check_folded_conv_refuses_bad_tensors(capsys, weight, bias, cause):
    refused(capsys, checks.check_folded_conv(weight, bias, CONV, BN), cause)


@pytest.mark.parametrize("weight, bias", RIGHT_FOLDED)
def test_check_folded_conv_accepts_the_right_values_in_any_float_form(capsys, weight, bias):
    accepted(capsys, checks.check_folded_conv(weight, bias, CONV, BN))


# ---------------------------------------------------------------- check_layer_qparams

def _converted_model():
    torch.manual_seed(2)
    model = nn.Sequential(torch.ao.quantization.QuantStub(), nn.Linear(4, 3), torch.ao.quantization.DeQuantStub())
    model.qconfig = torch.ao.quantization.get_default_qconfig(torch.backends.quantized.engine)
    prepared = torch.ao.quantization.prepare(model.eval())
    prepared(torch.randn(16, 4))
    return torch.ao.quantization.convert(prepared)


QMODEL = _converted_model()
LAYER_S, LAYER_Z = QMODEL[1].scale, QMODEL[1].zero_point

BAD_LAYER_QPARAMS = [
    (LAYER_S, LAYER_Z + 0.7, "not an integer"), (LAYER_S, LAYER_Z - 0.9, "zero points are integers"),
    (LAYER_S, torch.tensor(LAYER_Z + 0.5), "not an integer"), (LAYER_S, True, "bool"), (LAYER_S, None, "None"),
    (LAYER_S, str(LAYER_Z), "str"), (LAYER_S, {"zero_point": LAYER_Z}, "dict"),
    (LAYER_S, quantized([LAYER_Z]), ".int_repr()"), (LAYER_S, LAYER_Z + 1, "1.zero_point"),
    (NAN, LAYER_Z, "finite"), (INF, LAYER_Z, "finite"), ({"scale": LAYER_S}, LAYER_Z, "dict"),
    (quantized([LAYER_S]), LAYER_Z, "quantized"), (complex(LAYER_S), LAYER_Z, "complex"),
    ([LAYER_S, LAYER_Z], LAYER_Z, "one number"), (LAYER_S * 1.001, LAYER_Z, "1.scale"),
    (torch.tensor(LAYER_S).half(), LAYER_Z, "float16"),
]
RIGHT_LAYER_QPARAMS = [
    (LAYER_S, LAYER_Z), (torch.tensor(LAYER_S), float(LAYER_Z)), (np.float64(LAYER_S), np.int64(LAYER_Z)),
    (torch.tensor([LAYER_S], dtype=torch.float64), torch.tensor(LAYER_Z)),
]


@pytest.mark.parametrize("scale, zero_point, cause", BAD_LAYER_QPARAMS)
def test_check_layer_qparams_refuses_bad_answers(capsys, scale, zero_point, cause):
    refused(capsys, checks.check_layer_qparams(scale, zero_point, QMODEL, "1"), cause)


@pytest.mark.parametrize("scale, zero_point", RIGHT_LAYER_QPARAMS)
def test_check_layer_qparams_accepts_the_right_values_in_any_numeric_form(capsys, scale, zero_point):
    accepted(capsys, checks.check_layer_qparams(scale, zero_point, QMODEL, "1"))


@pytest.mark.parametrize("qmodel, name, cause", [
    (QMODEL, "7", "no module named '7'"), (QMODEL, 1, "no module named 1"),
    (nn.Sequential(nn.Linear(4, 3)), "0", "is the model converted"), (None, "1", "expected the converted model"),
])
def test_check_layer_qparams_says_what_is_wrong_with_the_model_or_name(capsys, qmodel, name, cause):
    refused(capsys, checks.check_layer_qparams(LAYER_S, LAYER_Z, qmodel, name), cause)


@EXAMPLES
@given(st.floats(min_value=-0.999, max_value=0.999).filter(lambda d: LAYER_Z + d != LAYER_Z))
def test_check_layer_qparams_refuses_any_zero_point_off_by_a_fraction(capsys, offset):
    """(An offset too small to change the float, such as 1e-300, leaves the right zero point.)"""
    refused(capsys, checks.check_layer_qparams(LAYER_S, LAYER_Z + offset, QMODEL, "1"), "not an integer")


# ---------------------------------------------------------------- every checker: never raises

UNREADABLE = [
    (checks.check_qparams, (torch.tensor(S, device="meta"), Z, XMIN, XMAX), "scale=a float32 tensor"),
    (checks.check_quantize, (_right_qint8, torch.float32), "dtype=a dtype"),
    (checks.check_moving_average, (_moving_average, "c"), "averaging_constant=a str"),
    (checks.check_per_channel_qparams, (SCALES, ZERO_POINTS, WEIGHT.tolist()), "weight=a list"),
    (checks.check_folded_conv, (FOLDED_WEIGHT, FOLDED_BIAS, "conv", BN), "conv=a str"),
    (checks.check_layer_qparams, (torch.tensor(LAYER_S, device="meta"), LAYER_Z, QMODEL, "1"), "scale=a float32"),
]


@pytest.mark.parametrize("check, args, got", UNREADABLE)
def test_an_unforeseen_failure_of_a_checker_is_reported_not_raised(capsys, check, args, got):
    refused(capsys, check(*args), "the checker could not read your answer", got, "expected")


@pytest.mark.parametrize("check", [checks.check_qparams, checks.check_quantize, checks.check_moving_average,
                                   checks.check_per_channel_qparams, checks.check_folded_conv,
                                   checks.check_layer_qparams])
def test_a_checker_called_with_the_wrong_arguments_says_how_to_call_it(capsys, check):
    refused(capsys, check(), "wrong arguments", f"call it as {check.__name__}(")
