"""qlib.ptq: the eager static-quantization pipeline, its quantizability check, and its accuracy."""

import pytest
import torch
from torch import nn
from torch.ao.quantization import (DeQuantStub, HistogramObserver, MinMaxObserver, QConfig, QuantStub,
                                   QuantWrapper, convert, default_weight_observer, get_default_qconfig,
                                   prepare)

from qlib import engines, metrics, pretrained, ptq, quantizable
from qlib.bench import evaluate
from qlib.data import calibration_subset, evaluation_subset, fashion_mnist
from qlib.models import SeedNet, resnet18

RESNET_KWARGS = dict(num_classes=10, in_channels=1, width=16, small_input=True)


@pytest.fixture(scope="module")
def seednet():
    return pretrained.load("seednet-fmnist")


@pytest.fixture(scope="module")
def small_calibration():
    return calibration_subset(256)


def test_quantize_static_leaves_the_float_model_untouched(seednet, small_calibration):
    seednet.train()  # even its mode must survive
    state = {k: v.clone() for k, v in seednet.state_dict().items()}
    types = [type(m) for m in seednet.modules()]
    quantized = ptq.quantize_static(seednet, small_calibration, progress=False)
    assert seednet.training
    seednet.eval()
    assert state.keys() == seednet.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in seednet.state_dict().items())
    assert types == [type(m) for m in seednet.modules()]
    assert not hasattr(seednet, "qconfig")
    assert quantized is not seednet and quantized.features[0]._get_name() == "QuantizedConvReLU2d"


@pytest.mark.parametrize("engine", engines.available_engines())
def test_every_engine_converts_and_agrees_with_float(seednet, small_calibration, engine):
    quantized = ptq.quantize_static(seednet, small_calibration, engine=engine, progress=False)
    assert quantized.qengine == engine and torch.backends.quantized.engine == engine
    images, _ = evaluation_subset(500).dataset.tensors()
    images = images[:500]
    agree = metrics.accuracy(metrics.predict(quantized, images), metrics.predict(seednet, images))
    assert agree > 95, f"{engine}: int8 and float agree on only {agree:.1f}% of 500 images"


def test_calibrate_counts_images_and_honours_num_batches(seednet, small_calibration):
    prepared = ptq.prepare_static(seednet)
    assert ptq.calibrate(prepared, small_calibration, num_batches=None, progress=False) == 256
    loader = torch.utils.data.DataLoader(small_calibration, batch_size=32)
    assert ptq.calibrate(prepared, loader, num_batches=3, progress=False) == 96


def test_empty_calibration_is_refused(seednet):
    with pytest.raises(ValueError, match="no images"):
        ptq.quantize_static(seednet, [], progress=False)


def test_unknown_engine_is_refused_with_the_choices(seednet, small_calibration):
    with pytest.raises(ValueError, match="x86"):
        ptq.quantize_static(seednet, small_calibration, engine="tpu", progress=False)


def test_engine_active_restores_the_previous_engine():
    engines.use_engine("x86")
    with engines.engine_active("qnnpack") as engine:
        assert engine == torch.backends.quantized.engine == "qnnpack"
    assert torch.backends.quantized.engine == "x86"


def test_a_custom_qconfig_is_used(seednet, small_calibration):
    per_tensor = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_weight_observer)
    prepared = ptq.prepare_static(seednet, qconfig=per_tensor)
    assert isinstance(prepared.features[0].activation_post_process, MinMaxObserver)
    quantized = ptq.quantize_static(seednet, small_calibration, qconfig=per_tensor, progress=False)
    weight = quantized.features[0].weight()
    # torch stores symmetric int8 weights with the affine scheme and a zero point of 0.
    assert weight.qscheme() == torch.per_tensor_affine and weight.q_zero_point() == 0
    default = ptq.quantize_static(seednet, small_calibration, engine="x86", progress=False)
    assert default.features[0].weight().qscheme() == torch.per_channel_affine  # x86: symmetric, stored affine
    assert isinstance(ptq.prepare_static(seednet, "x86").features[0].activation_post_process, HistogramObserver)


def test_convert_static_keeps_the_prepared_model_calibrating(seednet, small_calibration):
    prepared = ptq.prepare_static(seednet)
    ptq.calibrate(prepared, small_calibration, progress=False)
    first = ptq.convert_static(prepared)
    assert isinstance(prepared.features[0].activation_post_process, HistogramObserver)
    second = ptq.convert_static(prepared)
    assert first.features[0].scale == second.features[0].scale


# --- the quantizability check ---------------------------------------------------------------------

def test_a_bare_skip_add_is_found_with_its_module_line_and_fix():
    plain = QuantWrapper(resnet18(**RESNET_KWARGS)).eval()
    with pytest.raises(quantizable.NotQuantizableError) as error:
        ptq.quantize_static(plain, calibration_subset(64), progress=False)
    message = str(error.value)
    assert "module.layer1.0" in message and "`out += identity`" in message and "models.py:" in message
    assert "(and 7 more)" in message and "FloatFunctional" in message and "add_relu" in message
    assert len(quantizable.problems(plain)) == 8  # one per BasicBlock


def test_the_check_tells_the_truth_the_converted_plain_model_fails_as_announced():
    plain = QuantWrapper(resnet18(**RESNET_KWARGS)).eval()
    plain.qconfig = get_default_qconfig("x86")
    prepared = prepare(plain)
    prepared(torch.randn(4, 1, 28, 28))
    with pytest.raises(NotImplementedError, match=r"aten::add\.out.*QuantizedCPU"):
        convert(prepared)(torch.randn(2, 1, 28, 28))


def test_a_model_without_quant_stub_is_refused():
    with pytest.raises(quantizable.NotQuantizableError, match="no QuantStub.*QuantWrapper"):
        quantizable.check_quantizable(resnet18(**RESNET_KWARGS))


class _Toy(nn.Module):
    """Shape arithmetic and float maths outside the quantized region are fine; `a * b` inside is not."""

    def __init__(self, multiply_inside: bool):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
        self.multiply_inside = multiply_inside

    def forward(self, x):
        n = x.size(0) + 1                      # Python ints: fine
        q = self.quant(x)
        a, b = self.conv1(q), self.conv2(q)
        if self.multiply_inside:
            a = a * b                          # quantized * quantized: no kernel
        return self.dequant(a) * 2 + n         # float again: fine


def test_the_check_is_generic_and_has_no_false_alarm_outside_the_quantized_region():
    assert quantizable.problems(_Toy(multiply_inside=False)) == []
    found = quantizable.problems(_Toy(multiply_inside=True))
    assert [(f.what, f.module) for f in found] == [("a bare `*` on quantized tensors", "(top level)")]
    with pytest.raises(quantizable.NotQuantizableError, match=r"bare `\*`.*FloatFunctional.*\.mul\("):
        quantizable.check_quantizable(_Toy(multiply_inside=True))


@pytest.mark.parametrize("model", [SeedNet(), resnet18(**RESNET_KWARGS, quantizable=True)],
                         ids=["seednet", "resnet18-quantizable"])
def test_the_course_models_pass_the_check(model):
    assert quantizable.problems(model) == []  # FloatFunctional's own torch.add is not a bare one
    quantizable.check_quantizable(model)


# --- accuracy on the full test split (FP32 figure: the manifest's, checked by test_pretrained) ----

@pytest.mark.parametrize("name, max_loss", [("seednet-fmnist", 1.0), ("resnet18-fmnist", 0.5)])
def test_int8_accuracy_on_the_full_test_split(name, max_loss):
    if name not in pretrained.available():
        pytest.skip(f"checkpoint {name} is not there yet (python -m qlib.train {name})")
    fp32_accuracy = pretrained.read_manifest()[name]["test_accuracy"]
    model = pretrained.load(name, quantizable=True)
    quantized = ptq.quantize_static(model, calibration_subset(2048), engine="x86", progress=False)
    int8_accuracy = evaluate(quantized, fashion_mnist("test"), progress=False)
    print(f"{name}: FP32 {fp32_accuracy:.2f}%  INT8 (x86) {int8_accuracy:.2f}%")
    assert int8_accuracy >= fp32_accuracy - max_loss


def test_describe_qconfig_reads_the_observers_back():
    x86, qnnpack = ptq.describe_qconfig(get_default_qconfig("x86")), ptq.describe_qconfig(get_default_qconfig("qnnpack"))
    assert x86["activation"] == "HistogramObserver(quint8, per_tensor_affine, reduce_range=True, range 0..127)"
    assert x86["weight"].startswith("PerChannelMinMaxObserver(qint8, per_channel_symmetric")
    assert qnnpack["weight"].startswith("MinMaxObserver(qint8, per_tensor_symmetric") and "0..255" in qnnpack["activation"]


def test_describe_qconfig_reads_reduce_range_inside_a_fake_quantize():
    from torch.ao.quantization import get_default_qat_qconfig

    qat = ptq.describe_qconfig(get_default_qat_qconfig("x86"))
    assert "reduce_range=True" in qat["activation"] and "range 0..127" in qat["activation"]
