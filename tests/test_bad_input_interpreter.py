"""Bad input to the int8 interpreter, inspection and the metrics: one clear error, never silence.

Each case asserts the error's class (qlib.errors: BadInputError for a bad argument,
PipelineOrderError for a skipped step) and that its message names both the cause and the fix.
"""

import contextlib
import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from qlib import data, fusion, inspection, int8, metrics, pretrained, ptq, qmath
from qlib.errors import BadInputError, PipelineOrderError, QlibError

FIXTURES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def refused(error, *phrases):
    """The block raises `error` (a QlibError) whose message holds every phrase (cause and fix)."""
    with pytest.raises(error) as caught:
        yield caught
    assert isinstance(caught.value, QlibError)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"


def seednet(engine):
    return ptq.quantize_static(pretrained.load("seednet-fmnist"), data.calibration_subset(64), engine=engine,
                               progress=False)


@pytest.fixture(scope="module")
def qnnpack_model():
    return seednet("qnnpack")


@pytest.fixture(scope="module")
def x86_model():
    return seednet("x86")


@pytest.fixture(scope="module")
def images():
    return data.fashion_mnist("test").tensors()[0][:8]


@pytest.fixture(scope="module")
def interpreter(x86_model):
    return int8.Interpreter(x86_model)


# --- the engine: the model's own, a known name ---------------------------------------------------------------

ENTRY_POINTS = {
    "Interpreter": lambda q, x, **kw: int8.Interpreter(q, **kw),
    "run": lambda q, x, **kw: int8.run(q, x, **kw),
    "compare_layers": lambda q, x, **kw: int8.compare_layers(q, x, **kw),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("engine", ["x86", "fbgemm", "onednn"])
def test_another_engine_than_the_models_own_is_refused(qnnpack_model, images, entry, engine):
    with refused(BadInputError, f"engine={engine!r}", "converted under 'qnnpack'", "engine=None",
                 "allow_other_engine=True"):
        ENTRY_POINTS[entry](qnnpack_model, images[:2], engine=engine)


@pytest.mark.parametrize("engine", ["qnnpack", "fbgemm", "onednn"])
def test_the_x86_model_refuses_other_engines_too(x86_model, engine):
    with refused(BadInputError, "converted under 'x86'", "engine=None"):
        int8.Interpreter(x86_model, engine=engine)


def test_the_models_own_engine_or_none_is_accepted_and_the_what_if_needs_opting_in(qnnpack_model, images):
    assert int8.Interpreter(qnnpack_model).engine == "qnnpack"
    assert int8.Interpreter(qnnpack_model, engine="qnnpack").engine == "qnnpack"
    what_if = int8.Interpreter(qnnpack_model, engine="x86", allow_other_engine=True)
    assert what_if.engine == "x86"
    assert what_if(images[:2]).shape == (2, 10)
    assert int8.engine_of(qnnpack_model, "x86", allow_other_engine=True) == "x86"
    with refused(BadInputError, "allow_other_engine='yes'", "True or False"):
        int8.Interpreter(qnnpack_model, engine="x86", allow_other_engine="yes")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("engine", ["", "X86", "tpu", "none", "fbgemm ", 3, ["x86"]])
def test_unknown_engine_names_are_refused_naming_the_valid_ones(x86_model, images, entry, engine):
    with refused(BadInputError, f"engine={engine!r}", "not an engine", *int8.ENGINES, "engine=None"):
        ENTRY_POINTS[entry](x86_model, images[:2], engine=engine)


@pytest.mark.parametrize("engine", ["", "arm", 0])
def test_engine_of_refuses_unknown_names_too(x86_model, engine):
    with refused(BadInputError, "not an engine", "qnnpack"):
        int8.engine_of(x86_model, engine)


@pytest.mark.parametrize("requant", ["", "Exact", "fixed", "float", None, 1, True])
def test_unknown_requant_modes_are_refused(x86_model, requant):
    with refused(BadInputError, f"requant={requant!r}", "'exact'", "'fixedpoint'"):
        int8.Interpreter(x86_model, requant=requant)


# --- the CPU and its int16 switch -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["no", "False", "yes", 0, 1, 1.0, torch.tensor(True)])
def test_int16_saturation_takes_only_none_true_or_false(x86_model, value):
    with refused(BadInputError, "int16_saturation=", "Pass None", "True or False"):
        int8.Interpreter(x86_model, int16_saturation=value)
    with refused(BadInputError, "int16_saturation="):
        int8.CpuProfile("custom", int16_saturation=value)


@pytest.mark.parametrize("value", [None, True, False])
def test_int16_saturation_none_true_false_are_kept(x86_model, value):
    assert int8.Interpreter(x86_model, int16_saturation=value, cpu="avx2").cpu.int16_saturation is value


@pytest.mark.parametrize("cpu", ["zz", "", "AVX2", "avx-2", 3, 1.5, ["avx2"], {"kind": "avx2"}])
def test_unknown_cpu_kinds_are_refused_naming_the_known_ones(x86_model, cpu):
    with refused(BadInputError, "cpu=", "avx2", "arm64", "CpuProfile", "None for this machine"):
        int8.Interpreter(x86_model, cpu=cpu)


# --- a model that was never converted ----------------------------------------------------------------------

def float_seednet():
    return pretrained.load("seednet-fmnist")


def prepared_seednet():
    return ptq.prepare_static(pretrained.load("seednet-fmnist"), "x86")


def calibrated_seednet():
    prepared = prepared_seednet()
    ptq.calibrate(prepared, data.calibration_subset(32), progress=False)
    return prepared


def no_stubs():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()


UNCONVERTED = {  # how the model was made -> what the message must say is missing
    "float": (float_seednet, ["never prepared, calibrated or converted", "quantize_static"]),
    "prepared": (prepared_seednet, ["neither calibrated nor converted", "calibrate", "convert_static"]),
    "calibrated": (calibrated_seednet, ["calibrated", "but not converted", "convert_static",
                                        "torch.ao.quantization.convert"]),
    "no stubs": (no_stubs, ["without QuantStub", "quantizable=True", "quantize_static"]),
}
READERS = {
    "Interpreter": lambda model, x: int8.Interpreter(model),
    "run": lambda model, x: int8.run(model, x),
    "compare_layers": lambda model, x: int8.compare_layers(model, x),
    "qparams_table": lambda model, x: inspection.qparams_table(model),
    "trace_qparams": lambda model, x: inspection.trace_qparams(model, x),
}


@pytest.fixture(scope="module")
def unconverted():
    return {name: make() for name, (make, _) in UNCONVERTED.items()}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("state", UNCONVERTED)
def test_an_unconverted_model_names_the_missing_step(unconverted, images, reader, state):
    with refused(PipelineOrderError, *UNCONVERTED[state][1]):
        READERS[reader](unconverted[state], images[:2])


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("thing", [None, "seednet-fmnist", {"weight": torch.zeros(1)}, int8.run])
def test_something_that_is_not_a_model_is_refused(images, reader, thing):
    with refused(BadInputError, "converted int8 model", "quantize_static"):
        READERS[reader](thing, images[:2])


def test_a_model_in_training_mode_is_refused(x86_model):
    model = copy.deepcopy(x86_model).train()
    with refused(BadInputError, "training mode", ".eval()"):
        int8.Interpreter(model)


# --- the input tensor -----------------------------------------------------------------------------------

BAD_INPUTS = {  # name -> (make from good images [N, 1, 28, 28], phrases of cause and fix)
    "one image, rank 3": (lambda x: x[0], ["[N, 1, H, W]", "(1, 28, 28)", "x.unsqueeze(0)"]),
    "rank 2": (lambda x: x[0, 0], ["[N, 1, H, W]", "(28, 28)"]),
    "rank 5": (lambda x: x[None], ["[N, 1, H, W]", "(1, 8, 1, 28, 28)"]),
    "3 channels": (lambda x: x.repeat(1, 3, 1, 1), ["1 input channel", "not 3", "1 channel"]),
    "2 channels": (lambda x: x.repeat(1, 2, 1, 1), ["1 input channel", "not 2"]),
    "5x5 images": (lambda x: x[..., :5, :5], ["does not fit", "(8, 1, 5, 5)", "size the model was trained on"]),
    "20x20 images": (lambda x: x[..., :20, :20], ["256 features", "(8, 1, 20, 20)", "shape the model was trained on"]),
    "uint8": (lambda x: (x * 255).to(torch.uint8), ["uint8", "float32", "[N, 1, H, W]", "x.float()"]),
    "int64": (lambda x: x.long(), ["int64", "float32", "x.float()"]),
    "float64": (lambda x: x.double(), ["float64", "float32", "x.float()"]),
    "float16": (lambda x: x.half(), ["float16", "float32", "x.float()"]),
    "bool": (lambda x: x > 0, ["bool", "float32"]),
    "NaN": (lambda x: x.masked_fill(x > 0.5, float("nan")), ["NaN", "nan_to_num"]),
    "a list": (lambda x: x.tolist(), ["a list", "[N, 1, H, W]", "torch.as_tensor"]),
    "a numpy array": (lambda x: x.numpy(), ["numpy array", "float32 images", "torch.as_tensor"]),
    "quantized": (lambda x: torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), ["quint8", "float32"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_tensors_name_the_expected_shape_and_dtype(interpreter, images, case):
    make, phrases = BAD_INPUTS[case]
    with refused(BadInputError, *phrases):
        interpreter(make(images))


@pytest.mark.parametrize("case", ["one image, rank 3", "3 channels", "uint8", "NaN"])
def test_run_and_compare_layers_refuse_bad_inputs_the_same_way(x86_model, images, case):
    make, phrases = BAD_INPUTS[case]
    with refused(BadInputError, *phrases):
        int8.run(x86_model, make(images))
    with refused(BadInputError, *phrases):
        int8.compare_layers(x86_model, make(images))


@FIXTURES
@given(st.integers(2, 16))
def test_any_channel_count_but_the_models_is_refused(interpreter, images, channels):
    with refused(BadInputError, "1 input channel", f"not {channels}"):
        interpreter(images[:1].repeat(1, channels, 1, 1))


@FIXTURES
@given(st.integers(0, 8 * 28 * 28 - 1))
def test_one_nan_anywhere_is_refused(interpreter, images, position):
    x = images.clone()
    x.view(-1)[position] = float("nan")
    with refused(BadInputError, "1 NaN value", "nan_to_num"):
        interpreter(x)


def test_good_input_still_runs_after_a_refused_one(interpreter, x86_model, images):
    with pytest.raises(BadInputError):
        interpreter(images[:2].repeat(1, 3, 1, 1))
    assert interpreter(images).shape == (8, 10)
    assert int8.run(x86_model, torch.nn.functional.pad(images, (2, 2, 2, 2))).shape == (8, 10)  # 32x32: fine


# --- int8.trace: one output by hand ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced(interpreter, images):
    record = {}
    interpreter(images[:1], record=record)
    layers = dict(interpreter.model.named_modules())
    quant = interpreter.model.quant
    return dict(conv=layers["features.0"], conv_in=record["quant"][0], conv_out=record["features.0"][0],
                linear=layers["classifier.4"], linear_in=record["classifier.1"][0],
                linear_out=record["classifier.4"][0], s=quant.scale, z=quant.zero_point,
                linear_s=layers["classifier.1"].scale, linear_z=layers["classifier.1"].zero_point)


def trace_conv(t, index):
    return int8.trace(t["conv"], t["conv_in"], t["s"], t["z"], index)


@FIXTURES
@given(st.tuples(st.integers(-40, 60), st.integers(-40, 60), st.integers(-40, 60)))
def test_any_conv_index_outside_the_output_is_refused_and_any_inside_is_exact(traced, index):
    shape = tuple(traced["conv_out"].shape)          # [16, 14, 14]
    inside = all(0 <= i < n for i, n in zip(index, shape))
    if inside:
        assert trace_conv(traced, index)["requantized"] == int(traced["conv_out"][index])
    else:
        with refused(BadInputError, f"index={index!r}", "outside", str(list(shape)), "0 <= oc < 16",
                     "0 <= y < 14", "0 <= x < 14"):
            trace_conv(traced, index)


@FIXTURES
@given(st.integers(-1000, 1000))
def test_any_linear_index_outside_the_output_is_refused(traced, o):
    call = lambda: int8.trace(traced["linear"], traced["linear_in"], traced["linear_s"], traced["linear_z"], (o,))
    if 0 <= o < 10:
        assert call()["requantized"] == int(traced["linear_out"][o])
    else:
        with refused(BadInputError, "outside", "0 <= o < 10"):
            call()


@pytest.mark.parametrize("index", [(0, 0), (0, 0, 0, 0), 3, "000", (0.0, 0, 0), (True, 0, 0), None])
def test_an_index_of_the_wrong_form_is_refused(traced, index):
    with refused(BadInputError, "does not name one output", "(oc, y, x)", "index=(0, 0, 0)"):
        trace_conv(traced, index)


def test_trace_refuses_wrong_layers_inputs_and_qparams(traced, interpreter):
    t = traced
    with refused(BadInputError, "conv or linear layer", "named_modules"):
        int8.trace(interpreter.model.quant, t["conv_in"], t["s"], t["z"], (0, 0, 0))
    with refused(BadInputError, "q_in has shape (1, 1, 28, 28)", "[1, H, W]", "q[0]"):
        int8.trace(t["conv"], t["conv_in"][None], t["s"], t["z"], (0, 0, 0))
    with refused(BadInputError, "q_in has shape (16, 7, 7)", "[100]", "flatten"):
        int8.trace(t["linear"], torch.zeros(16, 7, 7, dtype=torch.uint8), t["linear_s"], t["linear_z"], (0,))
    with refused(BadInputError, "integers of the layer's input", "float32", "int_repr"):
        int8.trace(t["conv"], t["conv_in"].float(), t["s"], t["z"], (0, 0, 0))
    for scale in (0.0, -0.1, float("nan"), "0.1", None):
        with refused(BadInputError, f"in_scale={scale!r}", "positive finite", ".scale"):
            int8.trace(t["conv"], t["conv_in"], scale, t["z"], (0, 0, 0))
    for zp in (-1, 256, 1.5, True):
        with refused(BadInputError, f"in_zp={zp!r}", "[0, 255]", ".zero_point"):
            int8.trace(t["conv"], t["conv_in"], t["s"], zp, (0, 0, 0))


# --- inspection.qparams_table: a converted model, a sample that fits ---------------------------------------

class Tiny(nn.Module):
    """A 3-channel conv net (the default 1x28x28 sample does not fit it) or a linear-only one."""

    def __init__(self, channels=3, conv=True):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.body = (nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)) if conv
                     else nn.Sequential(nn.Linear(12, 5)))

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))


def converted_tiny(sample, **kwargs):
    torch.manual_seed(0)
    model = Tiny(**kwargs)
    model(sample)                                       # materialise the lazy layer
    return ptq.quantize_static(model.eval(), [sample], engine="x86", progress=False)


@pytest.fixture(scope="module")
def rgb_model():
    return converted_tiny(torch.randn(4, 3, 28, 28))


def test_the_default_sample_follows_the_models_input_channels(rgb_model):
    table = inspection.qparams_table(rgb_model)           # was a [1, 1, 28, 28] sample: a torch error
    assert list(table.index) == ["quant", "body.0", "body.3", "dequant"]
    assert table.loc["body.0", "in_scale"] == float(rgb_model.quant.scale)
    sample, origin = inspection.default_sample(rgb_model)
    assert sample.shape == (1, 3, 28, 28) and "3 input channels" in origin


def test_the_default_sample_of_a_linear_model_has_its_features():
    model = converted_tiny(torch.randn(8, 12), conv=False)
    sample, origin = inspection.default_sample(model)
    assert sample.shape == (1, 12) and "12 input features" in origin
    assert list(inspection.qparams_table(model).index) == ["quant", "body.0", "dequant"]


def test_a_default_sample_that_does_not_fit_says_to_pass_one():
    model = converted_tiny(torch.randn(4, 3, 40, 40))       # its linear layer takes 40x40 images only
    with refused(BadInputError, "default sample derived from its first conv", "(1, 3, 28, 28)", "Pass sample="):
        inspection.qparams_table(model)
    assert "body.3" in inspection.qparams_table(model, torch.zeros(1, 3, 40, 40)).index


def test_a_model_with_nothing_to_read_a_shape_from_needs_a_sample():
    class StubsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()

        def forward(self, x):
            return self.dequant(self.quant(x))

    model = ptq.quantize_static(StubsOnly().eval(), [torch.randn(2, 5)], engine="x86", progress=False)
    with refused(BadInputError, "cannot derive a sample", "no quantized conv or linear layer", "Pass sample="):
        inspection.qparams_table(model)
    assert list(inspection.qparams_table(model, torch.zeros(1, 5)).index) == ["quant", "dequant"]


@pytest.mark.parametrize("sample", [torch.zeros(1, 3, 28, 28), torch.zeros(28, 28), torch.zeros(1, 1, 4, 4),
                                    torch.zeros(1, 1, 28, 28, dtype=torch.uint8), [[0.0]], "images"])
@pytest.mark.parametrize("reader", ["qparams_table", "trace_qparams"])
def test_a_sample_the_model_refuses_is_named(x86_model, sample, reader):
    shown = "sample, " if isinstance(sample, torch.Tensor) else "sample must be"
    with refused(BadInputError, shown, "images[:1]"):
        getattr(inspection, reader)(x86_model, sample)


# --- metrics -------------------------------------------------------------------------------------------------

CONFUSION = {  # name -> (predictions, labels, num_classes, phrases)
    "prediction = num_classes": ([0, 10], [0, 1], 10, ["predictions hold 1 value(s) outside [0, 10)", "e.g. 10",
                                                      "num_classes=11"]),
    "negative prediction": ([0, -1], [0, 1], 10, ["predictions", "e.g. -1", "negative"]),
    "label = num_classes": ([0, 1], [3, 1], 3, ["labels hold 1 value(s) outside [0, 3)", "num_classes=4"]),
    "more predictions": ([0, 1, 2], [0, 1], 10, ["3 predictions and 2 labels", "one per image"]),
    "fewer predictions": ([0], [0, 1], 10, ["1 predictions and 2 labels"]),
    "float predictions": (torch.tensor([0.0, 1.0]), [0, 1], 10, ["float32", "argmax(1)"]),
    "bool labels": ([0, 1], torch.tensor([True, False]), 10, ["labels is a bool tensor", "integer class indices"]),
    "logits": (torch.zeros(2, 10, dtype=torch.long), [0, 1], 10, ["1-D", "looks like logits", ".argmax(1)"]),
    "a list": ("list", [0, 1], 10, ["a list", "torch.as_tensor"]),
    "num_classes 0": ([0], [0], 0, ["num_classes=0", "positive int"]),
    "num_classes True": ([0], [0], True, ["num_classes=True", "positive int"]),
    "num_classes 2.0": ([0], [0], 2.0, ["num_classes=2.0", "positive int"]),
}


@pytest.mark.parametrize("case", CONFUSION)
def test_confusion_matrix_refuses_what_it_would_miscount(case):
    predictions, labels, num_classes, phrases = CONFUSION[case]
    as_tensor = lambda v: [0, 1] if v == "list" else v if isinstance(v, torch.Tensor) else torch.tensor(v)
    with refused(BadInputError, *phrases):
        metrics.confusion_matrix(as_tensor(predictions), as_tensor(labels), num_classes)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.lists(st.tuples(st.integers(-3, 15), st.integers(-3, 15)), min_size=1, max_size=30))
def test_confusion_matrix_counts_every_pair_or_refuses(num_classes, pairs):
    labels, predictions = (torch.tensor(column) for column in zip(*pairs))
    if all(0 <= v < num_classes for pair in pairs for v in pair):
        counts = metrics.confusion_matrix(predictions, labels, num_classes)
        assert int(counts.sum()) == len(pairs)
        for t, p in set(pairs):
            assert int(counts[t, p]) == pairs.count((t, p))
    else:
        with refused(BadInputError, f"outside [0, {num_classes})"):
            metrics.confusion_matrix(predictions, labels, num_classes)


ACCURACY = {
    "logits": (torch.zeros(4, 10), torch.zeros(4, dtype=torch.long), ["same shape", "take .argmax(1)"]),
    "lengths": (torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), ["(3,)", "(4,)", "same shape"]),
    "column": (torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, dtype=torch.long), ["same shape", "broadcast"]),
    "float": (torch.zeros(4), torch.zeros(4, dtype=torch.long), ["float32", "integers", "argmax(1)"]),
    "2-D both": (torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), ["1-D", "[N]"]),
    "lists": ([0, 1], [0, 1], ["a list", "two tensors"]),
    "empty": (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), ["empty", "at least one"]),
}


@pytest.mark.parametrize("case", ACCURACY)
def test_accuracy_refuses_broadcasting_and_non_class_inputs(case):
    predictions, labels, phrases = ACCURACY[case]
    with refused(BadInputError, *phrases):
        metrics.accuracy(predictions, labels)


class Flat(nn.Module):
    def forward(self, x):
        return x.reshape(len(x), -1).sum(1)            # one number per image: not logits


@pytest.mark.parametrize("call, phrases", [
    (lambda x: metrics.predict(nn.Linear(4, 3), x.tolist()), ["images must be a tensor", "a list"]),
    (lambda x: metrics.predict(nn.Linear(4, 3), x[:0]), ["images is empty", "at least one"]),
    (lambda x: metrics.predict(nn.Linear(4, 3), x, batch_size=0), ["batch_size=0", "positive int"]),
    (lambda x: metrics.predict(nn.Linear(4, 3), x, batch_size=2.5), ["batch_size=2.5", "positive int"]),
    (lambda x: metrics.logits(nn.Linear(4, 3), x, batch_size=True), ["batch_size=True", "positive int"]),
    (lambda x: metrics.predict("seednet", x), ["a str", "callable"]),
    (lambda x: metrics.predict(Flat(), x), ["float32 tensor of shape (6,)", "logits [N, classes]", "metrics.logits"]),
    (lambda x: metrics.evaluate(nn.Linear(4, 3), (x, torch.zeros(5, dtype=torch.long))),
     ["6 images but 5 labels", "same length"]),
    (lambda x: metrics.evaluate(nn.Linear(4, 3), (x[:0], torch.zeros(0, dtype=torch.long))), ["empty", "at least one"]),
])
def test_predict_and_evaluate_refuse_bad_arguments(call, phrases):
    with refused(BadInputError, *phrases):
        call(torch.randn(6, 4))


# --- comparing two tensors: the same shape, never broadcast ------------------------------------------------

COMPARE = {"sqnr_db": qmath.sqnr_db, "max_abs_difference": fusion.max_abs_difference}


@pytest.mark.parametrize("name", COMPARE)
@pytest.mark.parametrize("shapes", [((3, 1), (3,)), ((3,), (1,)), ((2, 3), (3, 2)), ((4,), ()), ((1, 5), (5, 1))])
def test_tensors_of_different_shapes_are_not_broadcast(name, shapes):
    a, b = torch.ones(shapes[0]), torch.ones(shapes[1])
    with refused(BadInputError, name, str(tuple(shapes[0])), str(tuple(shapes[1])), "shapes differ",
                 "same shape"):
        COMPARE[name](a, b)


@pytest.mark.parametrize("name", COMPARE)
@pytest.mark.parametrize("pair", [([1.0], torch.ones(1)), (torch.ones(1), 1.0), (torch.ones(0), torch.ones(0))])
def test_non_tensors_and_empty_tensors_are_refused(name, pair):
    with refused(BadInputError, name, "Pass"):
        COMPARE[name](*pair)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=3), st.lists(st.integers(1, 4), min_size=0, max_size=3))
def test_any_two_shapes_compare_only_when_equal(shape_a, shape_b):
    a, b = torch.ones(shape_a), torch.full(shape_b, 0.5)
    for name, compare in COMPARE.items():
        if shape_a == shape_b:
            expected = 0.5 if name == "max_abs_difference" else pytest.approx(10 * torch.log10(torch.tensor(4.0)).item())
            assert compare(a, b) == expected
        else:
            with refused(BadInputError, "shapes differ"):
                compare(a, b)
