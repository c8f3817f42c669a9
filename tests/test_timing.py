"""qlib.timing: warm-up before any timing, interleaved rounds, and no verdict inside the noise."""

import pytest
import torch
from torch import nn

from qlib import timing
from qlib.errors import BadInputError


class _Logged(nn.Module):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_every_model_is_warmed_up_before_any_is_timed_and_rounds_interleave():
    log = []
    models = {"a": _Logged("a", log), "b": _Logged("b", log)}
    result = timing.compare(models, torch.zeros(2, 3), rounds=3, repeats=2, warmup=1)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3
    for name, t in result.items():
        assert t.name == name and t.rounds == 3 and t.repeats == 2 and t.threads == 1
        assert t.fastest_ms <= t.low_ms <= t.median_ms <= t.high_ms


def _t(name, median, low, high):
    return timing.Timing(name, median, low, high, low, 5, 10, 1)


def test_a_direction_only_where_the_spreads_are_apart():
    int8, fp32 = _t("INT8", 1.0, 0.9, 1.1), _t("FP32", 2.0, 1.8, 2.3)
    assert timing.is_faster(int8, fp32) is True and timing.is_faster(fp32, int8) is False
    assert "INT8 is faster" in timing.verdict(int8, fp32) and "FP32 is slower" in timing.verdict(fp32, int8)
    close = _t("INT8", 1.9, 1.7, 2.0)
    assert timing.is_faster(close, fp32) is None
    assert "within the noise" in timing.verdict(close, fp32) and "faster" not in timing.verdict(close, fp32)
    assert timing.fastest({"INT8": close, "FP32": fp32, "x": _t("x", 5.0, 4.0, 6.0)}) == ("INT8", ["FP32"])


def test_threads_are_fixed_and_restored():
    before = torch.get_num_threads()
    t = timing.compare({"m": nn.Identity()}, torch.zeros(1), rounds=1, repeats=1, warmup=0, num_threads=1)["m"]
    assert t.threads == 1 and torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, cause", [(dict(rounds=0), "rounds"), (dict(repeats=0), "repeats"),
                                           (dict(warmup=-1), "warmup")])
def test_bad_counts_are_refused(kwargs, cause):
    with pytest.raises(BadInputError, match=cause):
        timing.compare({"m": nn.Identity()}, torch.zeros(1), **kwargs)


def test_no_models_or_no_tensor_is_refused():
    with pytest.raises(BadInputError, match="empty"):
        timing.compare({}, torch.zeros(1))
    with pytest.raises(BadInputError, match="not a tensor"):
        timing.compare({"m": nn.Identity()}, [1, 2])


def test_too_few_rounds_give_no_verdict():
    one = timing.Timing("a", 1.0, 1.0, 1.0, 1.0, 1, 5, 1)
    other = timing.Timing("b", 9.0, 9.0, 9.0, 9.0, 1, 5, 1)
    assert timing.is_faster(one, other) is None and "not judged" in timing.verdict(one, other)


def test_a_grid_gives_timings_per_variant():
    import pandas as pd

    from qlib import bench

    grid = pd.DataFrame([dict(variant=v, model="m", threads=1, batch_size=1, latency_ms=f, median_ms=m, low_ms=lo,
                              high_ms=hi) for v, f, m, lo, hi in (("FP32", 1.9, 2.0, 1.95, 2.1), ("INT8", 0.9, 1.0, 0.95, 1.1))])
    ts = bench.timings_of(grid, rounds=3, repeats=5, model="m", threads=1, batch_size=1)
    assert timing.is_faster(ts["INT8"], ts["FP32"]) is True and ts["INT8"].fastest_ms == 0.9
    with pytest.raises(BadInputError, match="select one"):
        bench.timings_of(pd.concat([grid, grid]), rounds=3, repeats=5, model="m")
