"""Bad input to the PTQ pipeline: calibration data, the order of its steps, models eager mode
cannot quantize. Each case asserts the error type and that the message names the cause and the fix;
the quantizability rules are proved by running what they predict on torch itself."""

import operator
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import (DeQuantStub, MinMaxObserver, QConfig, QuantStub, convert,
                                   default_weight_observer, get_default_qconfig, prepare)

from qlib import engines, ptq, quantizable, stages
from qlib.data import calibration_subset
from qlib.errors import BadInputError, PipelineOrderError, QlibError
from qlib.models import SeedNet

MINMAX = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_weight_observer)


@pytest.fixture(scope="module")
def images():
    subset = calibration_subset(64)
    return torch.stack([subset[i][0] for i in range(len(subset))])


@pytest.fixture(scope="module")
def seednet():
    return SeedNet().eval()


# --- 1. calibration data ----------------------------------------------------------------------------

def _with_nan(images, value=float("nan")):
    damaged = images.clone()
    damaged[3, 0, 5, 7] = value
    return [images[:32], damaged]


BAD_DATA = {
    "nan pixel": (lambda x: _with_nan(x), "NaN or infinite", "isfinite"),
    "inf pixel": (lambda x: _with_nan(x, float("inf")), "NaN or infinite", "Drop or repair"),
    "-inf pixel": (lambda x: _with_nan(x, float("-inf")), "NaN or infinite", "Drop or repair"),
    "one tensor": (lambda x: x, "one tensor", r"\[images\]"),
    "uint8 images": (lambda x: [(x * 50).clamp(0, 255).to(torch.uint8)], "uint8", "/ 255"),
    "int64 images": (lambda x: [x.to(torch.int64)], "int64", "/ 255"),
    "float64 images": (lambda x: [x.double()], "float64", r"images\.float\(\)"),
    "float16 images": (lambda x: [x.half()], "float16", r"images\.float\(\)"),
    "dict": (lambda x: {"images": x}, "a dict", "list of batches"),
    "numpy array": (lambda x: x.numpy(), "numpy array", "from_numpy"),
    "list of numpy arrays": (lambda x: [x.numpy()], "numpy array", "from_numpy"),
    "string": (lambda x: "data/fashion-mnist", "a str", "DataLoader"),
    "None": (lambda x: None, "a NoneType", "calibration_subset"),
    "a number": (lambda x: 64, "an int", "list of batches"),
    "no batch dimension": (lambda x: [x[0, 0, 0]], "no batch dimension", "unsqueeze"),
    "wrong channels": (lambda x: [x.repeat(1, 3, 1, 1)], r"shape \(64, 3, 28, 28\) does not fit", "N, C, H, W"),
    "wrong size": (lambda x: [x[:, :, :20, :20]], r"does not fit", "training images"),
    "list of labels": (lambda x: [[1, 2, 3]], "an int", "float32 tensor of images"),
    "empty list": (lambda x: [], "no images", "at least one batch"),
    "empty batches": (lambda x: [x[:0], x[:0]], "no images", "at least one batch"),
}


@pytest.mark.parametrize("case", BAD_DATA)
@pytest.mark.parametrize("qconfig", [None, MINMAX], ids=["default-qconfig", "minmax"])
def test_bad_calibration_data_is_refused_with_cause_and_fix(case, qconfig, seednet, images):
    make, cause, fix = BAD_DATA[case]
    prepared = ptq.prepare_static(seednet, qconfig=qconfig)
    with pytest.raises(BadInputError, match=cause) as error:
        ptq.calibrate(prepared, make(images), progress=False)
    assert re.search(fix, str(error.value)), str(error.value)


@pytest.mark.parametrize("num_batches", [-1, 0, 1.5, True, "2"])
def test_num_batches_must_be_a_positive_whole_number(num_batches, seednet, images):
    with pytest.raises(BadInputError, match=r"num_batches must be a whole number >= 1.*\(or None to use every batch\)"):
        ptq.quantize_static(seednet, [images], num_batches=num_batches, progress=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(0, 3), index=st.integers(0, 16 * 28 * 28 - 1),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_any_single_non_finite_pixel_is_caught_before_the_observers_see_it(batch, index, value, seednet, images):
    batches = [b.clone() for b in images.split(16)]
    batches[batch].view(-1)[index] = value
    prepared = ptq.prepare_static(seednet, qconfig=MINMAX)
    with pytest.raises(BadInputError, match=f"Calibration batch {batch} holds 1 NaN or infinite"):
        ptq.calibrate(prepared, batches, progress=False)
    assert not any(torch.isnan(o.min_val).any() for o in stages.observers(prepared).values())  # no NaN got in


def test_what_the_check_prevents_a_nan_pixel_makes_torchs_int8_model_output_nan(seednet, images):
    """The silent failure behind the first case, shown on torch itself."""
    model = SeedNet().eval()
    model.load_state_dict(seednet.state_dict())
    model.qconfig = MINMAX
    prepared = prepare(model)
    prepared(_with_nan(images)[1])
    assert torch.isnan(prepared.quant.activation_post_process.min_val)   # the observer took the NaN in
    with engines.engine_active("x86"):
        quantized = convert(prepared)
        assert torch.isnan(quantized.quant.scale).item() and torch.isnan(quantized(images)).all()


# --- 2. the order of the steps ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def by_stage(seednet, images):
    prepared = ptq.prepare_static(seednet)
    calibrated = ptq.prepare_static(seednet)
    ptq.calibrate(calibrated, [images], progress=False)
    return dict(float=seednet, prepared=prepared, calibrated=calibrated,
                converted=ptq.convert_static(calibrated))


ORDER = [
    ("calibrate", "float", "never prepared", r"prepare_static\(model\) first"),
    ("calibrate", "converted", "already converted", "before convert_static"),
    ("convert_static", "float", "never prepared", r"prepare_static\(model\) first"),
    ("convert_static", "converted", "already converted", "prepared model"),
    ("convert_static", "prepared", "have seen no data", r"ptq\.calibrate\(prepared, data\) first"),
    ("prepare_static", "prepared", "already prepared", "Prepare the float model"),
    ("prepare_static", "calibrated", "already calibrated", "Prepare the float model"),
    ("prepare_static", "converted", "already converted", "Prepare the float model"),
]


@pytest.mark.parametrize("step, stage, cause, fix", ORDER, ids=[f"{s}-on-{m}" for s, m, *_ in ORDER])
def test_a_skipped_or_repeated_step_is_named(step, stage, cause, fix, by_stage, images):
    call = {"calibrate": lambda m: ptq.calibrate(m, [images], progress=False),
            "convert_static": ptq.convert_static,
            "prepare_static": ptq.prepare_static}[step]
    with warnings.catch_warnings():
        warnings.simplefilter("error", quantizable.NotCheckedWarning)  # the order is named first, not a failed trace
        with pytest.raises(PipelineOrderError, match=cause) as error:
            call(by_stage[stage])
    assert re.search(fix, str(error.value)), str(error.value)


def test_what_the_order_check_prevents_torch_converts_an_uncalibrated_model_to_zeros(by_stage, images):
    with pytest.warns(UserWarning, match="must run observer before calling calculate_qparams"):
        silent = convert(by_stage["prepared"], inplace=False)
    assert silent.quant.scale.item() == 1.0 and silent.quant.zero_point.item() == 0
    assert (silent(images) == 0).all()
    # and convert() on a float model returns it unchanged, with no int8 layer at all
    assert not stages.is_converted(convert(SeedNet().eval(), inplace=False))


class _TwoBranches(nn.Module):
    """The second branch never runs during calibration (a flag), so its observer stays empty."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
        self.use_b = False

    def forward(self, x):
        x = self.quant(x)
        return self.dequant(self.b(x) if self.use_b else self.a(x))


def test_layers_the_calibration_never_reached_are_named(images):
    prepared = ptq.prepare_static(_TwoBranches().eval(), check=False)
    ptq.calibrate(prepared, [images], progress=False)
    with pytest.raises(PipelineOrderError, match=r"1 of \d+ observers have seen no data \(first: b\..*never reaches"):
        ptq.convert_static(prepared)


@pytest.mark.parametrize("engine", ["", 3, "X86", "cuda"])
def test_an_unknown_engine_is_refused_naming_the_available_ones(engine, seednet):
    with pytest.raises(BadInputError, match=r"is not a quantized engine this torch build has.*Pass one of \[.*'x86'"):
        ptq.prepare_static(seednet, engine=engine)


@pytest.mark.parametrize("chosen", ["", "X86", "arm"])
def test_a_misspelt_QLIB_ENGINE_is_refused_not_replaced(chosen, seednet, monkeypatch):
    monkeypatch.setenv("QLIB_ENGINE", chosen)
    with pytest.raises(BadInputError, match=r"\$QLIB_ENGINE=.* unset it to let qlib choose"):
        ptq.prepare_static(seednet)


@pytest.mark.parametrize("chosen", ["qnnpack", "x86"])
def test_no_engine_means_the_course_engine_which_QLIB_ENGINE_sets(chosen, seednet, monkeypatch, images):
    monkeypatch.setenv("QLIB_ENGINE", chosen)
    assert ptq.quantize_static(seednet, [images], progress=False).qengine == chosen


def test_without_QLIB_ENGINE_the_course_engine_is_x86_on_x86_64_and_qnnpack_elsewhere(monkeypatch):
    from qlib import engines
    monkeypatch.delenv("QLIB_ENGINE", raising=False)
    expected = "x86" if "x86" in engines.available_engines() and engines.on_x86_64() else "qnnpack"
    assert engines.course_engine() == expected
    # Linux ARM64 torch lists x86 (its default there), onednn and fbgemm: the course takes qnnpack
    # (data/kernel-recordings/arm64: the interpreter reproduces qnnpack there, not x86 / onednn) and
    # offers no fbgemm, which fails on ARM
    monkeypatch.setattr(engines.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(engines, "torch_engines", lambda: ["qnnpack", "onednn", "x86", "fbgemm", "none"])
    assert engines.course_engine() == "qnnpack"
    assert engines.available_engines() == ["qnnpack", "onednn", "x86"]


@pytest.mark.parametrize("qconfig", ["x86", get_default_qconfig, {"activation": None}])
def test_a_qconfig_that_is_not_one_is_refused(qconfig, seednet):
    with pytest.raises(BadInputError, match=r"not a torch\.ao\.quantization\.QConfig.*get_default_qconfig"):
        ptq.prepare_static(seednet, qconfig=qconfig)


@pytest.mark.parametrize("model", [None, "seednet", SeedNet().state_dict()], ids=["None", "str", "state_dict"])
def test_something_that_is_not_a_model_is_refused(model):
    with pytest.raises(QlibError, match="Expected a torch.nn.Module"):
        ptq.quantize_static(model, [torch.zeros(1, 1, 28, 28)], progress=False)
    with pytest.raises(BadInputError, match="needs the prepared model"):
        ptq.calibrate(model, [torch.zeros(1, 1, 28, 28)], progress=False)


# --- 3. models eager mode cannot quantize -----------------------------------------------------------

def _quantized(shape, scale, seed):
    torch.manual_seed(seed)
    return torch.quantize_per_tensor(torch.randn(shape), scale, 10, torch.quint8)


_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "matmul"}
_DIM_METHODS = {"softmax", "log_softmax", "cumsum", "amax", "argmax"}


def _call(target, q, r):
    """Apply one NO_INT8_KERNEL entry to quantized tensors, as a model would."""
    if isinstance(target, str):
        args = (r,) if target in _BINARY_METHODS else (2,) if target == "pow" else (1,) if target in _DIM_METHODS else ()
        return getattr(q, target)(*args)
    special = {torch.cat: lambda: torch.cat([q, r]), torch.concat: lambda: torch.concat([q, r]),
               torch.stack: lambda: torch.stack([q, r]), operator.neg: lambda: -q,
               torch.softmax: lambda: torch.softmax(q, 1), F.softmax: lambda: F.softmax(q, 1),
               F.log_softmax: lambda: F.log_softmax(q, 1), F.silu: lambda: F.silu(q),
               F.hardswish: lambda: F.hardswish(q), F.layer_norm: lambda: F.layer_norm(q, (4,)),
               torch.amax: lambda: torch.amax(q, 1), torch.argmax: lambda: torch.argmax(q, 1),
               torch.where: lambda: torch.where(q > 0, q, r), torch.einsum: lambda: torch.einsum("ij,jk->ik", q, r),
               torch.sum: lambda: torch.sum(q), torch.exp: lambda: torch.exp(q), torch.log: lambda: torch.log(q),
               torch.sqrt: lambda: torch.sqrt(q), torch.abs: lambda: torch.abs(q),
               torch.pow: lambda: torch.pow(q, 2), operator.pow: lambda: q ** 2,
               F.linear: lambda: F.linear(q, torch.randn(4, 4)), F.conv2d: lambda: F.conv2d(q[None, None], torch.randn(1, 1, 1, 1))}
    return special[target]() if target in special else target(q, r)


@pytest.mark.parametrize("target", list(quantizable.NO_INT8_KERNEL), ids=lambda t: quantizable.NO_INT8_KERNEL[t][0])
def test_every_entry_of_the_no_int8_kernel_table_is_true_on_this_torch(target):
    """Re-measure the table: each entry fails on quantized tensors, or (joins) clips to the first scale."""
    q, r = _quantized((4, 4), 0.05, 0), _quantized((4, 4), 0.2, 1)
    symbol, fix, why = quantizable.NO_INT8_KERNEL[target]
    if "clipped" in why:
        joined = _call(target, q, r)
        assert joined.q_scale() == q.q_scale()  # the first input's scale, not the joined range's
        assert (joined.dequantize() - torch.cat([q.dequantize(), r.dequantize()]).view_as(joined)).abs().max() > 0.1
    else:
        with pytest.raises((NotImplementedError, RuntimeError)):
            _call(target, q, r)


@pytest.mark.parametrize("module", [m() if m is not nn.Softmax and m is not nn.LogSoftmax else m(1)
                                    for m in quantizable.NO_INT8_MODULES], ids=lambda m: type(m).__name__)
def test_every_float_only_module_fails_on_a_quantized_tensor(module):
    assert not isinstance(module, quantizable.CONVERTED_MODULES)  # convert() leaves it float
    with pytest.raises(NotImplementedError, match="QuantizedCPU"):
        module(_quantized((2, 4), 0.1, 0))


class _Net(nn.Module):
    """A small quantizable net; `step` is the one line that differs between the cases below."""

    def __init__(self, step, **extra):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 28 * 28, 10)
        self.step = step
        for name, module in extra.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.step(self, x)


def _head(self, x):
    return self.fc(self.conv(x).flatten(1))


CASES = {
    "linear after dequant": (lambda s, x: s.fc(s.dequant(s.conv(s.quant(x))).flatten(1)), {},
                             "the Linear gets a float tensor", r"qconfig = None"),
    "quant stub never called": (lambda s, x: s.dequant(_head(s, x)), {},
                                "the QuantStub is never called", r"x = self\.quant\(x\)"),
    "layer before quant": (lambda s, x: s.dequant(s.fc(s.quant(s.conv(x)).flatten(1))), {},
                           "the Conv2d gets a float tensor", "between the QuantStub and the DeQuantStub"),
    "division": (lambda s, x: s.dequant(_head(s, s.quant(x)) / 2), {}, r"bare `/`", "DeQuantStub before it"),
    "sum": (lambda s, x: s.dequant(_head(s, s.quant(x)).sum(1)), {}, r"bare `\.sum\(\)`", "runs in float"),
    "pow": (lambda s, x: s.dequant(_head(s, s.quant(x)).pow(2)), {}, r"bare `\.pow\(\)`", "runs in float"),
    "matmul": (lambda s, x: s.dequant(torch.matmul(_head(s, s.quant(x)), _head(s, s.quant(x)).T)), {},
               r"bare `torch\.matmul`", r"FloatFunctional.*\.matmul\("),
    "scalar add": (lambda s, x: s.dequant(_head(s, s.quant(x)) + 1), {}, r"bare `\+`", r"add_scalar"),
    "softmax function": (lambda s, x: s.dequant(F.softmax(_head(s, s.quant(x)), 1)), {}, r"bare `F\.softmax`",
                         "runs in float"),
    "softmax module": (lambda s, x: s.dequant(s.softmax(_head(s, s.quant(x)))), {"softmax": nn.Softmax(1)},
                       "the float Softmax gets a quantized tensor", "DeQuantStub before it"),
    "float functional after dequant": (lambda s, x: s.ff.add(s.dequant(_head(s, s.quant(x))), 1.0 * s.dequant(
        _head(s, s.quant(x)))), {"ff": FloatFunctional()}, "the FloatFunctional gets a float tensor", "qconfig = None"),
    "bare cat of two scales": (lambda s, x: s.dequant(torch.cat([s.conv(s.quant(x)), s.conv2(s.quant(x))], 1)),
                               {"conv2": nn.Conv2d(1, 4, 3, padding=1)}, r"bare `torch\.cat`.*clipped",
                               r"FloatFunctional.*\.cat\("),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_is_named_before_any_work_with_its_fix(case, images):
    step, extra, cause, fix = CASES[case]
    model = _Net(step, **extra).eval()
    with pytest.raises(quantizable.NotQuantizableError, match=cause) as error:
        ptq.quantize_static(model, [images], progress=False)
    message = str(error.value)
    assert re.search(fix, message), message
    assert "test_bad_input_pipeline.py:" in message or "forward()" in message  # where it is


@pytest.mark.parametrize("case", [c for c in CASES if c != "bare cat of two scales"])
def test_each_mistake_really_breaks_torchs_converted_model(case, images):
    """The check tells the truth: torch's own prepare / calibrate / convert of the same model fails."""
    step, extra, *_ = CASES[case]
    model = _Net(step, **extra).eval()
    model.qconfig = get_default_qconfig("x86")
    torch.backends.quantized.engine = "x86"
    with pytest.raises((NotImplementedError, RuntimeError, AssertionError)):
        prepared = prepare(model)
        prepared(images)
        convert(prepared)(images)


def test_a_bare_cat_really_clips_in_torchs_converted_model(images):
    step, extra, *_ = CASES["bare cat of two scales"]
    model = _Net(step, **extra).eval()
    with torch.no_grad():
        model.conv2.weight.mul_(20)                    # the second input spans a much wider range
    model.qconfig = get_default_qconfig("x86")
    torch.backends.quantized.engine = "x86"
    prepared = prepare(model)
    prepared(images)
    quantized = convert(prepared)
    error = (quantized(images) - model(images)).abs().max().item()
    assert error > 20 * quantized.conv2.scale          # far beyond rounding: clipped to conv's range


def test_a_layer_kept_in_float_is_fine_after_dequant_and_wrong_before_it(images):
    after = _Net(CASES["linear after dequant"][0]).eval()
    after.fc.qconfig = None                            # the fix the message gives
    assert quantizable.problems(after) == []
    ptq.quantize_static(after, [images], progress=False)
    inside = _Net(lambda s, x: s.dequant(_head(s, s.quant(x)))).eval()
    inside.fc.qconfig = None
    with pytest.raises(quantizable.NotQuantizableError, match="the float Linear gets a quantized tensor"):
        quantizable.check_quantizable(inside)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant, self.conv = QuantStub(), DeQuantStub(), nn.Conv2d(1, 2, 3)

    def forward(self, x):
        if x.sum() > 0:                                # data-dependent control flow: fx cannot trace it
            x = -x
        return self.dequant(self.conv(self.quant(x)))


def test_a_model_fx_cannot_trace_gets_a_warning_that_the_check_did_not_run():
    with pytest.warns(quantizable.NotCheckedWarning, match=r"could not trace _Untraceable.*NOT checked.*traceable"):
        quantizable.check_quantizable(_Untraceable().eval())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x0_5",
                                  "googlenet", "inception_v3", "resnext101_32x8d"])
def test_no_false_alarm_on_torchvisions_quantizable_models(name):
    import torchvision.models.quantization as tvq

    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = getattr(tvq, name)(weights=None, quantize=False, **kwargs).eval()
    assert quantizable.problems(model) == []


def test_a_float_model_with_float_functional_is_not_mistaken_for_a_converted_one():
    """FloatFunctional lives in torch.ao.nn.quantized, yet the quantizable ResNet is still float."""
    from qlib import inspection
    from qlib.models import resnet18

    model = resnet18(num_classes=10, in_channels=1, width=8, small_input=True, quantizable=True).eval()
    assert stages.stage(model) == "float"
    with pytest.raises(PipelineOrderError, match="never prepared, calibrated or converted.*quantize_static"):
        inspection.qparams_table(model)
