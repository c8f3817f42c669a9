"""qlib.inspection: every layer's activation / weight qparams of a converted model, and its size."""

import pandas as pd
import pytest
import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, QConfig, default_weight_observer

from qlib import pretrained, ptq
from qlib.data import calibration_subset
from qlib.inspection import qparams_table, size_bytes, trace_qparams
from qlib.models import resnet18

RESNET_KWARGS = dict(num_classes=10, in_channels=1, width=16, small_input=True)


@pytest.fixture(scope="module")
def seednet_pair():
    """SeedNet and its int8 model with per-channel weights (x86's default; set explicitly, so that
    the tests read the same structure under every course engine)."""
    from torch.ao.quantization import default_per_channel_weight_observer, get_default_qconfig

    from qlib import engines

    model = pretrained.load("seednet-fmnist")
    per_channel = QConfig(activation=get_default_qconfig(engines.course_engine()).activation,
                          weight=default_per_channel_weight_observer)
    return model, ptq.quantize_static(model, calibration_subset(256), qconfig=per_channel, progress=False)


@pytest.fixture(scope="module")
def resnet_pair():
    torch.manual_seed(0)
    model = resnet18(**RESNET_KWARGS, quantizable=True).eval()
    return model, ptq.quantize_static(model, calibration_subset(128), progress=False)


def test_seednet_table_lists_the_forum_printouts_quantized_modules_in_order(seednet_pair):
    _, quantized = seednet_pair
    table = qparams_table(quantized)
    assert list(table.index) == ["quant", "features.0", "features.3", "features.6", "features.9",
                                 "classifier.0", "classifier.1", "classifier.3", "classifier.4", "dequant"]
    assert list(table.type) == ["Quantize"] + ["QuantizedConvReLU2d"] * 4 + [
        "QuantizedDropout", "QuantizedLinearReLU", "QuantizedDropout", "QuantizedLinear", "DeQuantize"]


def test_output_qparams_are_the_forum_answers_attributes(seednet_pair):
    _, quantized = seednet_pair
    table = qparams_table(quantized)
    for name in ("features.0", "features.3", "features.6", "features.9", "classifier.1", "classifier.4"):
        module = quantized.get_submodule(name)
        assert table.loc[name, "out_scale"] == module.scale
        assert table.loc[name, "out_zero_point"] == module.zero_point
    assert table.loc["quant", "out_scale"] == float(quantized.quant.scale)
    assert table.loc["quant", "out_zero_point"] == int(quantized.quant.zero_point)


def test_each_layer_receives_what_the_previous_one_produced(seednet_pair):
    _, quantized = seednet_pair
    table = qparams_table(quantized)
    assert table.in_scale.iloc[1:].tolist() == table.out_scale.iloc[:-1].tolist()
    assert table.in_zero_point.iloc[1:].tolist() == table.out_zero_point.iloc[:-1].tolist()
    assert table.loc["quant"].isna()["in_scale"] and table.loc["dequant"].isna()["out_scale"]


def test_weight_columns_match_the_packed_weights(seednet_pair):
    _, quantized = seednet_pair
    table = qparams_table(quantized)
    for name in ("features.0", "classifier.4"):
        weight = quantized.get_submodule(name).weight()
        scales = weight.q_per_channel_scales()
        assert table.loc[name, "weight_scale_min"] == scales.min().item()
        assert table.loc[name, "weight_scale_max"] == scales.max().item()
        assert table.loc[name, "weight_channels"] == len(scales) == weight.shape[0]
        assert table.loc[name, "weight_dtype"] == "qint8"


def test_per_tensor_weights_show_one_scale(seednet_pair):
    model, _ = seednet_pair
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_weight_observer)
    quantized = ptq.quantize_static(model, calibration_subset(64), qconfig=qconfig, progress=False)
    row = qparams_table(quantized).loc["features.0"]
    assert row.weight_channels == 1 and row.weight_scale_min == row.weight_scale_max
    assert row.weight_scale_min == quantized.features[0].weight().q_scale()


def test_skip_adds_show_both_operands(resnet_pair):
    _, quantized = resnet_pair
    table = qparams_table(quantized)
    add = table.loc["layer1.0.skip_add"]
    assert add.type == "QFunctional"
    # operand 1: the block's conv2 output; operand 2: the block's input (the stem's output)
    assert (add.in_scale, add.in_zero_point) == (quantized.layer1[0].conv2.scale, quantized.layer1[0].conv2.zero_point)
    assert (add.in2_scale, add.in2_zero_point) == (quantized.conv1.scale, quantized.conv1.zero_point)
    assert add.out_scale == quantized.layer1[0].skip_add.scale
    down = table.loc["layer2.0.skip_add"]  # the identity branch goes through the downsample conv
    assert down.in2_scale == quantized.layer2[0].downsample[0].scale
    assert len(table) == 1 + 1 + 8 * 3 + 3 + 1 + 1  # quant, stem, 8 blocks, 3 downsamples, fc, dequant


def test_tracing_leaves_no_hook_or_patched_method_behind(resnet_pair):
    _, quantized = resnet_pair
    trace_qparams(quantized, torch.zeros(1, 1, 28, 28))
    for module in quantized.modules():
        assert not module._forward_hooks
        assert "add_relu" not in vars(module) and "add" not in vars(module)


def test_size_bytes_is_the_saved_files_size(seednet_pair, tmp_path):
    model, _ = seednet_pair
    # torch.save names the zip's inner folder after the file ("archive" for an in-memory buffer),
    # so only a file of that name has the very same bytes; other names differ by a few per entry.
    torch.save(model.state_dict(), tmp_path / "archive.pt")
    assert size_bytes(model) == (tmp_path / "archive.pt").stat().st_size


def test_resnet_int8_is_at_most_30_percent_of_fp32(resnet_pair):
    model, quantized = resnet_pair
    assert size_bytes(quantized) <= 0.30 * size_bytes(model)


def test_seednet_int8_weights_take_exactly_a_quarter_of_the_bytes(seednet_pair):
    """SeedNet is small enough that per-channel scales, float biases and pickling overhead weigh:
    its whole state dict lands just above 30%, but the weights themselves are exactly 4x smaller."""
    model, quantized = seednet_pair
    float_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear)))
    int8_bytes = sum(m.weight().int_repr().numel() * m.weight().int_repr().element_size()
                     for m in quantized.modules() if hasattr(m, "weight") and callable(m.weight))
    assert int8_bytes * 4 == float_bytes
    assert size_bytes(quantized) < 0.35 * size_bytes(model)


FORUM_PRINTOUT = """
  (quant): Quantize(scale=tensor([0.0256]), zero_point=tensor([17]), dtype=torch.quint8)
  (dequant): DeQuantize()
  (features): Sequential(
    (0): QuantizedConvReLU2d(1, 16, kernel_size=(3, 3), stride=(2, 2), scale=0.13089396059513092, zero_point=0, padding=(1, 1))
    (1): Identity()
  (classifier): Sequential(
    (4): QuantizedLinear(in_features=100, out_features=10, scale=5.715658187866211, zero_point=114, qscheme=torch.per_tensor_affine)
"""


def test_parse_printout_reads_the_forum_lines():
    from qlib.inspection import parse_printout

    table = parse_printout(FORUM_PRINTOUT)
    assert list(table.index) == ["quant", "dequant", "features", "features.0", "features.1", "classifier", "classifier.4"]
    assert table.loc["quant", "scale"] == 0.0256 and table.loc["quant", "zero_point"] == 17
    assert table.loc["features.0", "type"] == "QuantizedConvReLU2d" and table.loc["features.0", "zero_point"] == 0
    assert table.loc["classifier.4", "scale"] == 5.715658187866211 and table.loc["classifier.4", "zero_point"] == 114
    assert pd.isna(table.loc["features.1", "scale"])
    # the qscheme a quantized Linear prints is its weight's; convs and the stub print none
    assert table.loc["classifier.4", "qscheme"] == "per_tensor_affine"
    assert table.qscheme.isna().sum() == len(table) - 1


def test_parse_printout_round_trips_our_own_printout(resnet_pair):
    from qlib.inspection import parse_printout

    _, quantized = resnet_pair
    table = parse_printout(str(quantized))
    for name, row in table.iterrows():
        module = quantized.get_submodule(name)
        assert row.type == module._get_name(), name
        if isinstance(getattr(module, "scale", None), float):
            assert abs(row.scale - module.scale) <= 1e-6 * module.scale and row.zero_point == module.zero_point
        if type(module).__name__ == "Linear" and row.type == "QuantizedLinear":
            assert row.qscheme == str(module.weight().qscheme()).replace("torch.", "")
    # every module is printed, except the Linear's internal _packed_params
    assert len(table) == sum(1 for name, _ in quantized.named_modules() if name and "_packed_params" not in name)


def test_parse_printout_keeps_the_weights_qscheme_of_each_linear(seednet_pair):
    from qlib.inspection import parse_printout

    model, per_channel = seednet_pair
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_weight_observer)
    per_tensor = ptq.quantize_static(model, calibration_subset(64), qconfig=qconfig, progress=False)
    for quantized, scheme in ((per_channel, "per_channel_affine"), (per_tensor, "per_tensor_affine")):
        table = parse_printout(str(quantized))
        assert table.qscheme.dropna().to_dict() == {"classifier.1": scheme, "classifier.4": scheme}
        assert str(quantized.classifier[1].weight().qscheme()) == f"torch.{scheme}"


def test_requantizations_are_the_modules_that_round_to_their_own_qparams(seednet_pair):
    from qlib.inspection import requantizations

    model, fused = seednet_pair
    assert requantizations(fused) == {
        "features.0": "QuantizedConvReLU2d", "features.3": "QuantizedConvReLU2d", "features.6": "QuantizedConvReLU2d",
        "features.9": "QuantizedConvReLU2d", "classifier.1": "QuantizedLinearReLU", "classifier.4": "QuantizedLinear"}
    prepared = ptq.prepare_static(model, fuse=False)
    ptq.calibrate(prepared, calibration_subset(64), progress=False)
    unfused = requantizations(ptq.convert_static(prepared))
    # every conv and every BatchNorm requantizes; ReLU and Dropout keep their input's qparams
    assert list(unfused.values()).count("QuantizedConv2d") == 4 and list(unfused.values()).count("QuantizedBatchNorm2d") == 4
    assert len(unfused) == 10 and "features.2" not in unfused and "classifier.0" not in unfused


def test_requantizations_count_the_profilers_quantized_ops(resnet_pair):
    """Each requantizing module runs one quantized:: op per call (conv, linear, add_relu ...)."""
    from qlib import bench
    from qlib.inspection import requantizations

    _, quantized = resnet_pair
    ops = bench.op_times(quantized, batch_size=2, repeats=1)
    assert ops[ops.op.str.startswith("quantized::")].calls.sum() == len(requantizations(quantized))
    with pytest.raises(Exception, match="requantizations"):
        requantizations(nn.Linear(2, 2))
