"""qlib.qat and notebook 09's checkers: QAT preparation, the two switches, conversion, checked against torch.

SeedNet (the small checkpoint) keeps every test to a fraction of a second per training step.
"""

import pytest
import torch
import torch.ao.nn.intrinsic.qat as nniqat
from torch.ao.quantization import FakeQuantize, get_default_qat_qconfig
from torch.ao.quantization.observer import ObserverBase

from qlib import engines, checks, data, errors, metrics, pretrained, qat
from qlib.models import SeedNet


@pytest.fixture(scope="module")
def seednet():
    return pretrained.load("seednet-fmnist")


@pytest.fixture(scope="module")
def batches():
    images, labels = metrics.as_tensors(data.calibration_subset(256, seed=3))
    return list(zip(images.split(32), labels.split(32)))


def _probes():
    return {"act_scale": lambda m: float(m.features[0].activation_post_process.scale),
            "bn_mean": lambda m: float(m.features[0].bn.running_mean[0])}


# --- qconfig -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_range_is_the_signed_range_of_that_many_bits(bits):
    qmin, qmax = qat.weight_range(bits)
    assert qmax - qmin + 1 == 2 ** bits and qmin == -qmax - 1
    fake_quant = qat.qconfig(weight_bits=bits).weight()
    assert (fake_quant.quant_min, fake_quant.quant_max) == (qmin, qmax)


@pytest.mark.parametrize("bits", [1, 9, 4.0, True, "4", None])
def test_weight_range_refuses_what_int8_weights_cannot_hold(bits):
    with pytest.raises(errors.BadInputError, match="weight_bits"):
        qat.weight_range(bits)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [3, 8])
def test_ptq_and_qat_qconfigs_of_one_setting_quantize_weights_to_the_same_grid(per_channel, bits):
    torch.manual_seed(bits)
    weight = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 2, 8).reshape(-1, 1, 1, 1)
    observer = qat.qconfig(weight_bits=bits, per_channel=per_channel, qat=False).weight()
    fake_quant = qat.qconfig(weight_bits=bits, per_channel=per_channel, qat=True).weight()
    assert isinstance(observer, ObserverBase) and isinstance(fake_quant, FakeQuantize)
    observer(weight), fake_quant(weight)
    for ptq_value, qat_value in zip(observer.calculate_qparams(), fake_quant.calculate_qparams()):
        assert torch.equal(ptq_value, qat_value)
    assert fake_quant.scale.numel() == (8 if per_channel else 1)


def test_qat_and_ptq_activations_share_the_engines_range():
    ptq_activation = qat.qconfig("x86", qat=False).activation()
    qat_activation = qat.qconfig("x86", qat=True).activation()
    assert (ptq_activation.quant_min, ptq_activation.quant_max) == (0, 127)  # reduce_range on x86
    assert (qat_activation.quant_min, qat_activation.quant_max) == (0, 127)


@pytest.mark.parametrize("bad", [dict(engine="x87"), dict(per_channel="yes"), dict(qat=1), dict(weight_bits=0)])
def test_qconfig_refuses_bad_input(bad):
    with pytest.raises(errors.BadInputError):
        qat.qconfig(**bad)


def test_fused_fake_quant_trains_with_another_scale_than_convert_uses(seednet, batches):
    """The reason qlib.qat.qconfig uses the unfused FakeQuantize: torch's fused one disagrees with itself."""
    ours = qat.prepare_qat_copy(seednet, qat.qconfig(weight_bits=3))
    fused_qconfig = get_default_qat_qconfig("x86")
    fused_qconfig = fused_qconfig._replace(weight=fused_qconfig.weight.with_args(quant_min=-4, quant_max=3))
    fused = qat.prepare_qat_copy(seednet, fused_qconfig)
    for model in (ours, fused):
        model(batches[0][0])
    assert set(qat.scale_mismatches(ours).values()) == {0.0}
    weight_gaps = [gap for name, gap in qat.scale_mismatches(fused).items() if "weight" in name]
    assert len(weight_gaps) == 6 and min(weight_gaps) > 0.05  # 4 convolutions, 2 linear layers


# --- prepare_qat_copy ----------------------------------------------------------------------------------

def test_prepare_qat_copy_fuses_for_training_and_leaves_the_model_alone(seednet):
    state = {k: v.clone() for k, v in seednet.state_dict().items()}
    prepared = qat.prepare_qat_copy(seednet, qat.qconfig(weight_bits=4))
    assert not seednet.training and not hasattr(seednet, "qconfig")
    assert all(torch.equal(state[k], v) for k, v in seednet.state_dict().items())
    assert prepared.training
    convs = [prepared.features[i] for i in range(0, 12, 3)]
    assert all(type(conv) is nniqat.ConvBnReLU2d for conv in convs)
    assert all(torch.equal(conv.bn.running_mean, seednet.features[i + 1].running_mean)
               for conv, i in zip(convs, range(0, 12, 3)))  # BN kept as a module, not folded
    assert type(prepared.classifier[1]) is nniqat.LinearReLU
    weights = [fq for name, fq in qat.fake_quants(prepared).items() if name.endswith("weight_fake_quant")]
    assert len(weights) == 6 and all((fq.quant_min, fq.quant_max) == (-8, 7) for fq in weights)


def test_prepare_qat_copy_refuses_a_ptq_qconfig_and_a_prepared_model(seednet):
    with pytest.raises(errors.BadInputError, match="fake quantization"):
        qat.prepare_qat_copy(seednet, qat.qconfig(qat=False))
    with pytest.raises(errors.BadInputError, match="QConfig"):
        qat.prepare_qat_copy(seednet, "x86")
    prepared = qat.prepare_qat_copy(seednet)
    prepared(torch.zeros(2, 1, 28, 28))
    with pytest.raises(errors.PipelineOrderError, match="already"):
        qat.prepare_qat_copy(prepared)


def test_prepare_qat_copy_refuses_a_model_without_fuse_groups():
    model = torch.ao.quantization.QuantWrapper(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))
    with pytest.raises(errors.BadInputError, match="fuse_groups"):
        qat.prepare_qat_copy(model)


# --- fine_tune: the switches ---------------------------------------------------------------------------

def test_fine_tune_freezes_bn_and_observers_at_the_steps_asked(seednet, batches):
    torch.manual_seed(0)
    prepared = qat.prepare_qat_copy(seednet, qat.qconfig(weight_bits=4))
    history = qat.fine_tune(prepared, batches, steps=6, lr=1e-3, freeze_bn_after=2, disable_observers_after=4,
                            probes=_probes(), progress=False)
    assert list(history.index) == [1, 2, 3, 4, 5, 6]
    assert list(history.bn_frozen) == [False, False, True, True, True, True]
    assert list(history.observers_on) == [True, True, True, True, False, False]
    bn, scale = history.bn_mean, history.act_scale
    assert bn[1] != bn[2] and (bn[3:] == bn[2]).all()          # running stats move until frozen
    assert scale[3] != scale[4] and (scale[5:] == scale[4]).all()  # scales move until observers are off
    assert all(bool(fq.observer_enabled == 0) for fq in qat.fake_quants(prepared).values())
    assert all(m.freeze_bn for m in prepared.modules() if isinstance(m, nniqat.ConvBnReLU2d))


def test_fine_tune_without_switches_keeps_both_on(seednet, batches):
    prepared = qat.prepare_qat_copy(seednet)
    history = qat.fine_tune(prepared, batches[:2], steps=5, probes=_probes(), progress=False)  # restarts the data
    assert not history.bn_frozen.any() and history.observers_on.all()
    assert history.bn_mean.nunique() == 5


def test_fine_tune_learns(batches):
    torch.manual_seed(0)
    prepared = qat.prepare_qat_copy(SeedNet().eval(), qat.qconfig(weight_bits=4))
    history = qat.fine_tune(prepared, batches[:1], steps=30, lr=0.05, progress=False)
    assert history.loss.iloc[-5:].mean() < 0.5 * history.loss.iloc[:5].mean()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=2.5), dict(steps=True), dict(lr=0), dict(lr=-1e-3),
                                 dict(lr="1e-3"), dict(lr=True), dict(lr=1.5), dict(freeze_bn_after=4),
                                 dict(freeze_bn_after=-1), dict(disable_observers_after=1.0), dict(momentum=1),
                                 dict(momentum="0.9"), dict(probes=["stem scale"]), dict(probes={"s": 0.5})])
def test_fine_tune_refuses_bad_settings(seednet, batches, bad):
    prepared = qat.prepare_qat_copy(seednet)
    settings = dict(steps=3, progress=False) | bad
    with pytest.raises(errors.BadInputError):
        qat.fine_tune(prepared, batches, **settings)


def test_fine_tune_refuses_a_float_model_and_empty_data(seednet):
    with pytest.raises(errors.PipelineOrderError, match="prepare_qat_copy"):
        qat.fine_tune(seednet, [], steps=1, progress=False)
    with pytest.raises(errors.BadInputError, match="no batch"):
        qat.fine_tune(qat.prepare_qat_copy(seednet), [], steps=1, progress=False)
    used_up = iter([])
    with pytest.raises(errors.BadInputError, match="used up"):
        qat.fine_tune(qat.prepare_qat_copy(seednet), used_up, steps=1, progress=False)


def test_fine_tune_refuses_batches_without_labels(seednet, batches):
    images = [images for images, _ in batches]
    with pytest.raises(errors.BadInputError, match="labels"):
        qat.fine_tune(qat.prepare_qat_copy(seednet), images, steps=1, progress=False)
    with pytest.raises(errors.BadInputError, match="not a collection"):
        qat.fine_tune(qat.prepare_qat_copy(seednet), images[0], steps=1, progress=False)
    swapped = [(labels, images) for images, labels in batches]
    with pytest.raises(errors.BadInputError, match="integer class labels"):
        qat.fine_tune(qat.prepare_qat_copy(seednet), swapped, steps=1, progress=False)


# --- convert_qat ---------------------------------------------------------------------------------------

def test_convert_qat_gives_int8_weights_on_the_narrow_grid_and_agrees_with_the_simulation(seednet, batches):
    torch.manual_seed(0)
    prepared = qat.prepare_qat_copy(seednet, qat.qconfig(weight_bits=4))
    qat.fine_tune(prepared, batches, steps=8, freeze_bn_after=4, disable_observers_after=6, progress=False)
    quantized = qat.convert_qat(prepared)
    assert prepared.training and quantized.qengine == engines.course_engine()
    weights = [m.weight() for m in quantized.modules() if hasattr(m, "weight") and callable(m.weight)]
    assert len(weights) == 6
    assert all(-8 <= int(w.int_repr().min()) and int(w.int_repr().max()) <= 7 for w in weights)
    images = data.fashion_mnist("test").tensors()[0][:500]
    simulated = metrics.predict(prepared.eval(), images)
    agree = metrics.accuracy(metrics.predict(quantized, images), simulated)
    assert agree > 97, f"the int8 model agrees with its QAT simulation on only {agree:.1f}% of 500 images"


def test_convert_qat_refuses_a_float_model_and_an_untrained_one(seednet):
    with pytest.raises(errors.PipelineOrderError, match="prepare_qat_copy"):
        qat.convert_qat(seednet)
    with pytest.raises(errors.PipelineOrderError, match="seen no data"):
        qat.convert_qat(qat.prepare_qat_copy(seednet))


# --- the notebook's checkers ---------------------------------------------------------------------------

def _fake_quantize(x, scale, zero_point, quant_min, quant_max):
    return (torch.clamp(torch.round(x * (1 / scale)) + zero_point, quant_min, quant_max) - zero_point) * scale


def _ste_gradient(grad_output, x, scale, zero_point, quant_min, quant_max):
    q = torch.round(x * (1 / scale)) + zero_point
    return grad_output * ((q >= quant_min) & (q <= quant_max))


def test_check_fake_quantize_accepts_torchs_arithmetic(capsys):
    assert checks.check_fake_quantize(_fake_quantize)
    assert checks.check_fake_quantize(lambda *a: _fake_quantize(*a).double())  # same values in float64
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, says", [
    (lambda x, s, z, lo, hi: (torch.clamp(torch.round(x / s) + z, lo, hi) - z) * s, "1 / scale"),
    (lambda x, s, z, lo, hi: torch.round(x * (1 / s)) * s, "clamp"),
    (lambda x, s, z, lo, hi: (torch.clamp(torch.round(x * (1 / s) + z), lo, hi) - z) * s, "after rounding"),
    (lambda x, s, z, lo, hi: torch.clamp(torch.round(x * (1 / s)) + z, lo, hi).long(), "dequantize"),
    (lambda x, s, z, lo, hi: x, "differ"),
    (lambda x, s, z, lo, hi: x[:5], "shape"),
    (lambda x, s, z, lo, hi: None, "None"),
    (lambda x, s, z, lo, hi: 1 / 0, "ZeroDivisionError"),
    ("not a function", "function"),
])
def test_check_fake_quantize_refuses_wrong_answers_without_raising(capsys, wrong, says):
    assert checks.check_fake_quantize(wrong) is False
    assert says in capsys.readouterr().out


def test_check_ste_gradient_accepts_the_straight_through_estimator(capsys):
    assert checks.check_ste_gradient(_ste_gradient)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, says", [
    (lambda g, x, s, z, lo, hi: g, "clipped"),
    (lambda g, x, s, z, lo, hi: torch.zeros_like(x), "derivative of round"),
    (lambda g, x, s, z, lo, hi: _ste_gradient(g, x, s, z, lo, hi).ne(0).float(), "chain rule"),
    (lambda g, x, s, z, lo, hi: g * ((x >= s * (lo - z)) & (x <= s * (hi - z))), "half a step"),
    (lambda g, x, s, z, lo, hi: g * ((torch.round(x / s) + z >= lo) & (torch.round(x / s) + z <= hi)), "1 / scale"),
    (lambda g, x, s, z, lo, hi: "1", "expected"),
])
def test_check_ste_gradient_refuses_wrong_answers_without_raising(capsys, wrong, says):
    assert checks.check_ste_gradient(wrong) is False
    assert says in capsys.readouterr().out
