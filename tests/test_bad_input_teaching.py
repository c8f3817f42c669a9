"""Bad input to the teaching helpers (observers' range rules, the quantization explorer, the
activation recorder): each case asserts the error type and that the message names cause and fix."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlib import activations, observers, widgets
from qlib.errors import BadInputError

RANGE_RULES = {"minmax": observers.minmax_range, "moving average": observers.moving_average_range,
               "per channel": lambda b: observers.per_channel_range(b, axis=0)}
BAD_BATCHES = {
    "one tensor": (torch.randn(4, 3), "non-empty list of batches", r"\[x\]"),
    "empty list": ([], "non-empty list of batches", "wrap"),
    "None": (None, "a NoneType", "wrap"),
    "a generator": ((b for b in [torch.randn(3)]), "a generator", "list"),
    "numpy batch": ([np.zeros(3, dtype=np.float32)], "numpy array", "from_numpy"),
    "quantized batch": ([torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8)], "quint8", "dequantize"),
    "empty batch": ([torch.randn(0)], "shape \\(0,\\)", "non-empty"),
    "complex batch": ([torch.randn(3, dtype=torch.complex64)], "complex64", "real float"),
    "nan": ([torch.tensor([0.0, float("nan")])], "NaN or infinite", "isfinite"),
    "inf in a later batch": ([torch.ones(3), torch.tensor([float("inf")])], "Batch 1 holds NaN or infinite", "Remove"),
    "a list of numbers": ([1.0, 2.0], "Batch 0 is a float", "real float tensors"),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
@pytest.mark.parametrize("rule", RANGE_RULES)
def test_range_rules_refuse_what_an_observer_never_sees(rule, case):
    batches, cause, fix = BAD_BATCHES[case]
    with pytest.raises(BadInputError, match=cause) as error:
        RANGE_RULES[rule](batches)
    assert re.search(fix, str(error.value)), str(error.value)


@pytest.mark.parametrize("constant", [0, -0.1, 1.5, "0.01", True, float("nan")])
def test_moving_average_constant_is_a_fraction(constant):
    with pytest.raises(BadInputError, match=r"averaging_constant=.*in \(0, 1\].*0\.01"):
        observers.moving_average_range([torch.randn(4)], constant)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=20), st.integers(0, 19))
def test_one_non_finite_value_anywhere_is_refused(values, position):
    batch = torch.tensor(values)
    batch[position % len(values)] = float("nan")
    with pytest.raises(BadInputError, match="NaN or infinite"):
        observers.minmax_range([torch.randn(5), batch])


@pytest.mark.parametrize("a, b, cause", [
    (torch.zeros(3), torch.zeros(3), "even length"), (torch.zeros(4), torch.zeros(2), "equal-shaped"),
    (torch.full((2,), 256), torch.zeros(2), r"\[0, 255\]"), (torch.zeros(2), torch.full((2,), -129), "s8"),
])
def test_vpmaddubsw_names_what_the_instruction_takes(a, b, cause):
    with pytest.raises(BadInputError, match=cause) as error:
        observers.vpmaddubsw(a, b)
    assert re.search("pad|clamp", str(error.value))


EXPLORER = [
    (dict(bits=1), "bits must be a whole number from 2 to 16, not 1", "bits=8"), (dict(bits=17), "not 17", "2 to 16"),
    (dict(bits=8.0), "not a float (8.0)", "whole number"), (dict(bits=True), "not a bool (True)", "whole number"),
    (dict(scheme="log"), "scheme='log'", "Pass one of"), (dict(scheme=None), "scheme=None", "affine"),
    (dict(distribution="uniform"), "distribution='uniform'", "Pass one of"),
    (dict(x=[0.1, 0.2]), "a list", "leave it out"), (dict(x=torch.arange(5)), "int64 tensor", "finite float"),
    (dict(x=torch.tensor([0.0, float("nan")])), "NaN", "leave it out"),
]


@pytest.mark.parametrize("kwargs, cause, fix", EXPLORER, ids=[str(k) for k, *_ in EXPLORER])
def test_the_explorer_refuses_what_it_cannot_draw(kwargs, cause, fix):
    with pytest.raises(BadInputError, match=re.escape(cause)) as error:
        widgets.explore(**kwargs)
    assert re.search(fix, str(error.value)), str(error.value)


def _tiny():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()


@pytest.mark.parametrize("names, batches, cause, fix", [
    ("0", [torch.randn(1, 1, 5, 5)], "one string, '0'", r"\['0'\]"),
    (["conv9"], [torch.randn(1, 1, 5, 5)], "no submodule named", "named_modules"),
    (["0"], torch.randn(2, 1, 5, 5), "one tensor", r"\[images\]"),
])
def test_the_activation_recorder_refuses_what_it_would_misread(names, batches, cause, fix):
    with pytest.raises(BadInputError, match=cause) as error:
        activations.record_outputs(_tiny(), names, batches)
    assert re.search(fix, str(error.value)), str(error.value)


@pytest.mark.parametrize("kwargs, cause", [
    (dict(batch_size=0), "batch_size must be a whole number >= 1, not 0"),
    (dict(repeats=0), "repeats must be a whole number >= 1, not 0"),
    (dict(warmup=-1), "warmup must be a whole number >= 0, not -1"),
    (dict(num_threads=0), "threads must be a whole number >= 1, not 0"),
    (dict(batch_size=2.0), "not a float (2.0)"),
])
def test_latency_refuses_counts_that_are_not_counts(kwargs, cause):
    from qlib import bench

    with pytest.raises(BadInputError, match=re.escape(cause)) as error:
        bench.latency(_tiny(), input_shape=(1, 5, 5), **kwargs)
    assert "pass e.g." in str(error.value)


@pytest.mark.parametrize("kwargs, error_type, cause", [
    (dict(names=["seednet-fmnits"]), "CheckpointError", "Unknown checkpoint 'seednet-fmnits'"),
    (dict(names=[3]), "BadInputError", "checkpoint name is a string"),
    (dict(engines=["avx512"]), "BadInputError", "'avx512' is not a quantized engine"),
])
def test_the_benchmark_refuses_a_misspelt_name_or_engine_before_any_work(kwargs, error_type, cause):
    from qlib import bench

    with pytest.raises(Exception, match=re.escape(cause)) as error:
        bench.benchmark(test_images=10, progress=False, **kwargs)
    assert type(error.value).__name__ == error_type
    assert re.search("Pass one of|pass one of", str(error.value)), str(error.value)


@pytest.mark.parametrize("groups, cause", [([["0", "9"]], r"names \['9'\]"), (["0"], r"Group '0' names \['0'\]"),
                                           ([["conv", "bn"]], r"\['conv', 'bn'\]")])
def test_folding_by_hand_names_a_group_the_model_does_not_have(groups, cause):
    from qlib import fusion

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    with pytest.raises(fusion.FoldingError, match=cause) as error:
        fusion.fold_model_by_hand(model, groups)
    assert "named_modules()" in str(error.value)
