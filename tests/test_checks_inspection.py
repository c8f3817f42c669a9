"""qlib.checks.inspection (notebook 07's exercises): each checker accepts the reference solution,
refuses the typical mistake with a message that names it, and refuses an unwritten stub."""

import pytest
import torch
from torch.ao.quantization import default_qconfig

from qlib import checks, pretrained, ptq
from qlib.data import calibration_subset


# --- the reference solutions, as the notebook has them ------------------------------------------

def input_qparams(mean, std, quant_min, quant_max):
    lo, hi = min((0.0 - mean) / std, 0.0), max((1.0 - mean) / std, 0.0)
    scale = (hi - lo) / (quant_max - quant_min)
    return scale, min(quant_max, max(quant_min, quant_min - round(lo / scale)))


def weight_by_hand(weight):
    q = weight.int_repr().long()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * weight.dim()
        shape[weight.q_per_channel_axis()] = -1
        scale = weight.q_per_channel_scales().view(shape)
        zero_point = weight.q_per_channel_zero_points().view(shape)
    else:
        scale, zero_point = torch.tensor(weight.q_scale()), weight.q_zero_point()
    return ((q - zero_point) * scale).float()


def activation_qparams(qmodel, sample):
    found, handles = {}, []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_quantized:
                found[name] = (output.q_scale(), output.q_zero_point())
        return hook

    for name, module in qmodel.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.inference_mode():
            qmodel(sample)
    finally:
        for handle in handles:
            handle.remove()
    return found


def stub(*args):
    raise NotImplementedError()


@pytest.fixture(scope="module")
def qseed():
    return ptq.quantize_static(pretrained.load("seednet-fmnist"), calibration_subset(64), progress=False)


@pytest.fixture(scope="module")
def qforum():
    return ptq.quantize_static(pretrained.load("seednet-fmnist"), calibration_subset(64), progress=False,
                               qconfig=default_qconfig)


SAMPLE = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def said(capsys, *words):
    out = capsys.readouterr().out
    assert all(word in out for word in words), out
    return out


# --- 7.1 the forum's input line ------------------------------------------------------------------

def test_input_qparams_accepts_the_reference_and_decodes_the_forum(capsys):
    assert checks.check_input_qparams(input_qparams)
    said(capsys, "Correct!", "0.0256", "zero point 17")
    assert [round(v, 4) for v in input_qparams(0.1307, 0.3081, 0, 127)] == [0.0256, 17]
    assert [round(v, 4) for v in input_qparams(0.1307, 0.3081, 0, 255)] == [0.0127, 33]


def test_input_qparams_refuses_levels_instead_of_steps(capsys):
    def by_levels(mean, std, quant_min, quant_max):
        lo, hi = min(-mean / std, 0.0), max((1 - mean) / std, 0.0)
        scale = (hi - lo) / (quant_max - quant_min + 1)
        return scale, quant_min - round(lo / scale)
    assert not checks.check_input_qparams(by_levels)
    said(capsys, "Not yet", "not by the number of levels")


def test_input_qparams_refuses_a_range_not_widened_to_zero(capsys):
    def unwidened(mean, std, quant_min, quant_max):
        lo, hi = -mean / std, (1 - mean) / std
        scale = (hi - lo) / (quant_max - quant_min)
        return scale, min(quant_max, max(quant_min, quant_min - round(lo / scale)))
    assert not checks.check_input_qparams(unwidened)
    said(capsys, "Not yet", "mean=1.5", "widened to include 0")


def test_input_qparams_refuses_a_zero_point_with_the_wrong_sign(capsys):
    def wrong_sign(mean, std, quant_min, quant_max):
        scale, zero_point = input_qparams(mean, std, quant_min, quant_max)
        return scale, quant_min + round(min(-mean / std, 0) / scale)
    assert not checks.check_input_qparams(wrong_sign)
    said(capsys, "Not yet", "zero point", "quant_min - round(min / S)")


def test_input_qparams_refuses_stubs_and_odd_answers(capsys):
    assert not checks.check_input_qparams(stub)
    said(capsys, "not written yet")
    assert not checks.check_input_qparams(lambda *a: 0.0256)
    said(capsys, "expected a pair (scale, zero_point)")
    assert not checks.check_input_qparams(lambda *a: (input_qparams(*a)[0], input_qparams(*a)[1] + 0.4))
    said(capsys, "not an integer")


# --- 7.3 an int8 weight back to floats -----------------------------------------------------------

def test_weight_by_hand_accepts_the_reference_on_both_schemes(capsys, qseed, qforum):
    assert checks.check_weight_by_hand(weight_by_hand, qseed.features[0].weight(), qforum.classifier[1].weight())
    said(capsys, "Correct!", "bit for bit on 6 weights")


def test_weight_by_hand_refuses_a_forgotten_zero_point(capsys):
    def no_zero_point(weight):
        scales = (weight.q_per_channel_scales() if weight.qscheme() == torch.per_channel_affine
                  else torch.tensor([weight.q_scale()], dtype=torch.float64))
        shape = [1] * weight.dim()
        if weight.qscheme() == torch.per_channel_affine:
            shape[weight.q_per_channel_axis()] = -1
        return (weight.int_repr().double() * scales.view(shape)).float()
    assert not checks.check_weight_by_hand(no_zero_point)
    said(capsys, "Not yet", "zero point 5")


def test_weight_by_hand_refuses_channels_along_the_wrong_axis(capsys):
    def axis_zero(weight):
        if weight.qscheme() != torch.per_channel_affine:
            return weight_by_hand(weight)
        shape = [-1] + [1] * (weight.dim() - 1)
        return ((weight.int_repr().double() - weight.q_per_channel_zero_points().view(shape))
                * weight.q_per_channel_scales().view(shape)).float()
    assert not checks.check_weight_by_hand(axis_zero)  # the axis-1 case cannot even broadcast: the learner's error
    said(capsys, "Not yet", "your function raised RuntimeError", "in axis_zero")

    # a square weight broadcasts along the wrong axis without an error
    square = torch.quantize_per_channel(torch.randn(4, 4), torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64),
                                        torch.tensor([0, 1, 2, 3]), 1, torch.qint8)
    assert not checks.check_weight_by_hand(lambda w: axis_zero(w) if w.shape == (4, 4) else weight_by_hand(w), square)
    said(capsys, "Not yet", "along axis 1")


def test_weight_by_hand_accepts_float32_rounding_and_says_it_is_not_bit_for_bit(capsys):
    def in_float32(weight):
        if weight.qscheme() != torch.per_channel_affine:
            return weight_by_hand(weight)
        shape = [1] * weight.dim()
        shape[weight.q_per_channel_axis()] = -1
        return ((weight.int_repr().float() - weight.q_per_channel_zero_points().view(shape).float())
                * weight.q_per_channel_scales().view(shape).float())
    assert checks.check_weight_by_hand(in_float32)
    said(capsys, "Correct!", "bit for bit on all but", "float64")


def test_weight_by_hand_refuses_stubs_integers_and_float64(capsys):
    assert not checks.check_weight_by_hand(stub)
    said(capsys, "not written yet")
    assert not checks.check_weight_by_hand(lambda w: w.int_repr())
    said(capsys, "Not yet")
    assert not checks.check_weight_by_hand(lambda w: weight_by_hand(w).double())
    said(capsys, "torch.float64", "float32")
    assert not checks.check_weight_by_hand(lambda w: weight_by_hand(w)[0])
    said(capsys, "expected a tensor of shape")
    assert not checks.check_weight_by_hand(weight_by_hand, torch.ones(3))
    said(capsys, "not a quantized tensor")


# --- 7.4 the forward-hook reader -----------------------------------------------------------------

def test_activation_qparams_accepts_the_reference(capsys, qseed, qforum):
    assert checks.check_activation_qparams(activation_qparams, qseed, SAMPLE)
    said(capsys, "Correct!", "no hook left behind")
    assert checks.check_activation_qparams(activation_qparams, qforum, SAMPLE)


def test_activation_qparams_refuses_the_inputs_qparams(capsys, qseed):
    def inputs_instead(qmodel, sample):
        found, handles = {}, []
        for name, module in qmodel.named_modules():
            if name:
                def hook(module, inputs, output, name=name):
                    if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].is_quantized:
                        found[name] = (inputs[0].q_scale(), inputs[0].q_zero_point())
                handles.append(module.register_forward_hook(hook))
        qmodel(sample)
        for handle in handles:
            handle.remove()
        return found
    assert not checks.check_activation_qparams(inputs_instead, qseed, SAMPLE)
    said(capsys, "Not yet", "OUTPUT")


def test_activation_qparams_refuses_hooks_left_behind(capsys, qseed):
    def leaves_hooks(qmodel, sample):
        found = {}
        for name, module in qmodel.named_modules():
            if name:
                module.register_forward_hook(lambda m, i, o, name=name: found.__setitem__(name, (o.q_scale(), o.q_zero_point()))
                                             if isinstance(o, torch.Tensor) and o.is_quantized else None)
        qmodel(sample)
        return found
    assert not checks.check_activation_qparams(leaves_hooks, qseed, SAMPLE)
    said(capsys, "Not yet", "left", "handle.remove()")
    for module in qseed.modules():
        module._forward_hooks.clear()


def test_activation_qparams_refuses_top_level_only(capsys, qseed):
    def children_only(qmodel, sample):
        found, handles = {}, []
        for name, module in qmodel.named_children():
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: found.__setitem__(name, (o.q_scale(), o.q_zero_point()))
                if isinstance(o, torch.Tensor) and o.is_quantized else None))
        qmodel(sample)
        for handle in handles:
            handle.remove()
        return found
    assert not checks.check_activation_qparams(children_only, qseed, SAMPLE)
    said(capsys, "Not yet", "missing", "features.0")


def test_activation_qparams_refuses_stubs_and_odd_answers(capsys, qseed):
    assert not checks.check_activation_qparams(stub, qseed, SAMPLE)
    said(capsys, "not written yet")
    assert not checks.check_activation_qparams(lambda m, s: [1, 2], qseed, SAMPLE)
    said(capsys, "expected a dict")
    assert not checks.check_activation_qparams(activation_qparams, torch.nn.Linear(2, 2), SAMPLE)
    said(capsys, "Not yet")
    assert not checks.check_activation_qparams(activation_qparams, qseed, "images")
    said(capsys, "expected a batch of input images")


def test_activation_qparams_refuses_an_unknown_name(capsys, qseed):
    assert not checks.check_activation_qparams(lambda m, s: {**activation_qparams(m, s), "conv9": (0.1, 0)}, qseed, SAMPLE)
    said(capsys, "'conv9' is not the name")


# --- 7.2 the forum answer's attributes (moved here from test_inspection) ----------------------------

def test_layer_qparams_right_and_wrong(capsys, qseed):
    layer = qseed.classifier[4]
    assert checks.check_layer_qparams(layer.scale, layer.zero_point, qseed, "classifier.4")
    said(capsys, "Correct!")
    assert not checks.check_layer_qparams(qseed.features[0].scale, layer.zero_point, qseed, "classifier.4")
    said(capsys, "classifier.4.scale")
    assert not checks.check_layer_qparams(layer.scale, layer.zero_point + 1, qseed, "classifier.4")
    said(capsys, "classifier.4.zero_point")
