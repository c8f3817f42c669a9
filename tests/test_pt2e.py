"""qlib.pt2e: PT2E with torchao on tiny models, checked against eager mode and torchao itself.

No torch.compile here: its first compilation in a fresh environment takes about 20 s (notebook 11
runs it); compile_int8's argument checks are tested, not the compilation.
"""

import copy
import math

import pytest
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from qlib import checks, inspection, pretrained, pt2e, ptq, qmath
from qlib.data import calibration_subset
from qlib.errors import BadInputError, PipelineOrderError, QlibError


class TinyResidual(nn.Module):
    """conv-bn-relu, a residual block (conv-bn + skip, relu), pool, linear; one ReLU per use unless
    `shared_relu`, which calls the first ReLU module again after the add (torchvision's BasicBlock
    habit). The same module registered under a second name would not count: export names calls by
    attribute path."""

    def __init__(self, shared_relu: bool = False):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.shared_relu = shared_relu
        if not shared_relu:
            self.relu2 = nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)
        generator = torch.Generator().manual_seed(0)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(torch.randn(4, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(4, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(4, generator=generator) * 0.1)

    def forward(self, x):
        x = self.quant(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = (self.relu1 if self.shared_relu else self.relu2)(self.bn2(self.conv2(out)) + out)
        return self.dequant(self.fc(torch.flatten(self.pool(out), 1)))


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyResidual().eval()


@pytest.fixture(scope="module")
def batches():
    return [_images(16, seed) for seed in range(3)]


@pytest.fixture(scope="module")
def converted(tiny, batches):
    return pt2e.quantize_pt2e(tiny, batches, progress=False)


# --- torchao and the flow's stages -------------------------------------------------------------------

def test_torchao_is_the_pinned_version():
    assert pt2e.check_torchao() == pt2e.TORCHAO_VERSION == pt2e.torchao_version()


def test_stages_advance_through_the_flow(tiny, batches):
    assert pt2e.pt2e_stage(tiny) == "not exported"
    exported = pt2e.export(tiny, batches[0])
    assert pt2e.pt2e_stage(exported) == "exported"
    prepared = pt2e.prepare(exported)
    assert pt2e.pt2e_stage(prepared) == "prepared"
    with pytest.raises(PipelineOrderError, match="calibrate"):
        pt2e.convert(prepared)
    assert pt2e.calibrate(prepared, batches, progress=False) == 48
    assert pt2e.pt2e_stage(prepared) == "calibrated"
    assert pt2e.pt2e_stage(pt2e.convert(prepared)) == "converted"


def test_steps_refuse_the_wrong_stage(tiny, batches, converted):
    with pytest.raises(PipelineOrderError, match="torch.export"):
        pt2e.prepare(tiny)
    with pytest.raises(PipelineOrderError, match="converted"):
        pt2e.prepare(converted)
    with pytest.raises(PipelineOrderError, match="exported"):
        pt2e.calibrate(pt2e.export(tiny, batches[0]), batches, progress=False)
    with pytest.raises(PipelineOrderError):
        pt2e.qdq_nodes(pt2e.export(tiny, batches[0]))
    with pytest.raises(PipelineOrderError):
        pt2e.compile_int8(tiny, [batches[0]])


def test_export_has_a_dynamic_batch_and_leaves_the_model_alone(tiny, batches):
    tiny.train()
    try:
        exported = pt2e.export(tiny, batches[0][:1])  # a one-image example is repeated to two
        assert tiny.training
    finally:
        tiny.eval()
    with torch.no_grad():
        for n in (1, 3, 7):
            assert torch.allclose(exported(_images(n)), tiny(_images(n)), atol=1e-5)


def test_export_refuses_bad_input(tiny):
    with pytest.raises(BadInputError, match="nn.Module"):
        pt2e.export("model", _images(2))
    with pytest.raises(BadInputError, match="float32"):
        pt2e.export(tiny, _images(2).double())
    with pytest.raises(BadInputError, match="float32"):
        pt2e.export(tiny, [1, 2])
    with pytest.raises(BadInputError, match="True or False"):
        pt2e.export(tiny, _images(2), dynamic_batch="yes")


# --- one module per use ------------------------------------------------------------------------------

def test_reused_modules_finds_a_shared_relu():
    shared = pt2e.export(TinyResidual(shared_relu=True).eval(), _images(2))
    assert pt2e.reused_modules(shared) == {"relu1": 2}
    assert pt2e.reused_modules(pt2e.export(TinyResidual().eval(), _images(2))) == {}


def test_prepare_names_the_shared_module_where_torchao_does_not():
    shared = pt2e.export(TinyResidual(shared_relu=True).eval(), _images(2))
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    with pytest.raises(ValueError, match="more than one output node"):  # torchao's own message
        prepare_pt2e(copy.deepcopy(shared), pt2e.x86_quantizer())
    with pytest.raises(BadInputError, match=r"relu1 \(2 calls\)") as error:
        pt2e.prepare(shared)
    assert isinstance(error.value, QlibError) and "quantizable=True" in str(error.value)


def test_prepare_refuses_what_is_not_a_quantizer(tiny):
    with pytest.raises(BadInputError, match="Quantizer"):
        pt2e.prepare(pt2e.export(tiny, _images(2)), quantizer="x86")


# --- what prepare and convert do ---------------------------------------------------------------------

def test_prepare_folds_batchnorm_as_fuse_modules_does(tiny):
    prepared = pt2e.prepare(pt2e.export(tiny, _images(2)))
    assert not any("batch_norm" in str(node.target) for node in prepared.graph.nodes)
    fused = torch.ao.quantization.fuse_modules(copy.deepcopy(tiny), [["conv1", "bn1", "relu1"], ["conv2", "bn2"]])
    assert torch.equal(prepared.get_parameter("conv1.weight"), fused.conv1[0].weight)
    assert torch.equal(prepared.get_parameter("conv2.weight_bias"), fused.conv2.bias)


def test_input_scale_is_the_histogram_observers(converted, batches):
    from torchao.quantization.pt2e import HistogramObserver

    observer = HistogramObserver(quant_min=0, quant_max=255, eps=2**-12)
    for batch in batches:
        observer(batch)
    scale, zero_point = observer.calculate_qparams()
    first = pt2e.activation_qparams(converted).iloc[0]
    assert first.tensor == "x" and first.op == "input"
    assert (first.scale, first.zero_point) == (float(scale), int(zero_point))


def test_reduce_range_halves_the_integer_range(tiny, batches):
    full = pt2e.activation_qparams(pt2e.quantize_pt2e(tiny, batches, progress=False))
    reduced = pt2e.activation_qparams(pt2e.quantize_pt2e(tiny, batches, pt2e.x86_quantizer(reduce_range=True),
                                                         progress=False))
    assert set(full.quant_max) == {255} and set(reduced.quant_max) == {127}
    assert ((full.scale / reduced.scale - 127 / 255).abs() < 1e-5).all()


def test_converted_graph_is_close_to_float_and_accepts_eval(tiny, converted):
    converted.eval()  # an exported graph would raise NotImplementedError
    x = _images(32, seed=9)
    with torch.no_grad():
        assert qmath.sqnr_db(tiny(x), converted(x)) > 20


def test_qdq_nodes_pair_each_dequantize_with_its_quantize(converted):
    table = pt2e.qdq_nodes(converted)
    quantize = table[table.op == "quantize"].set_index("node")
    dequantize = table[table.op == "dequantize"]
    assert len(quantize) >= 3 and len(dequantize) >= len(quantize)
    for row in dequantize.itertuples():
        assert (row.scale, row.zero_point) == tuple(quantize.loc[row.of, ["scale", "zero_point"]])
    assert set(table.dtype) == {"uint8"}


def test_int8_weights_are_the_per_channel_observers(tiny, converted):
    weights = pt2e.int8_weights(converted)
    assert set(weights) == {"conv1", "conv2", "fc"}
    int8, scales = weights["fc"]
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                                        quant_min=-128, quant_max=127, eps=2**-12)
    observer(tiny.fc.weight.detach())
    want_scales, want_zero_points = observer.calculate_qparams()
    assert int8.dtype == torch.int8 and torch.equal(scales.float(), want_scales.float())
    expected = torch.ops.quantized_decomposed.quantize_per_channel(
        tiny.fc.weight.detach(), want_scales, want_zero_points, 0, -128, 127, torch.int8)
    assert torch.equal(int8, expected)


# --- against eager mode ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seednet_pair():
    model = pretrained.load("seednet-fmnist")
    data = calibration_subset(64)
    eager = ptq.quantize_static(model, data, engine="x86", progress=False)  # PT2E targets x86: compare with eager x86
    matched = pt2e.quantize_pt2e(model, data, pt2e.x86_quantizer(reduce_range=True), progress=False)
    return model, eager, matched


def test_same_observer_settings_give_eager_modes_qparams_bit_for_bit(seednet_pair):
    model, eager, matched = seednet_pair
    table = pt2e.compare_with_eager(matched, inspection.qparams_table(eager))
    shared = table.dropna(subset=["pt2e_scale", "eager_scale"])
    shared = shared[~shared.eager.str.endswith("(input)")]
    assert set(shared.eager) >= {"quant", "features.0", "features.3", "features.6", "features.9", "classifier.1"}
    assert (shared.pt2e_scale == shared.eager_scale).all()
    assert (shared.pt2e_zero_point == shared.eager_zero_point).all()
    assert "classifier.4" in set(table[table.pt2e_scale.isna()].eager)  # PT2E leaves the logits in float
    assert not table.eager.str.endswith("(input)").any()  # flatten and dropout pass the layer's values on


def test_int8_weights_equal_eager_modes(seednet_pair):
    _model, eager, matched = seednet_pair
    weights = pt2e.compare_weights(matched, eager)
    assert len(weights) == 6 and (weights.differing_values == 0).all() and weights.equal_scales.all()


def test_eager_counterpart_of_the_input_and_of_an_unknown_tensor(seednet_pair):
    _model, _eager, matched = seednet_pair
    nodes = {node.name: node for node in matched.graph.nodes}
    assert pt2e.eager_counterpart(nodes["x"], {}) == ("quant", "out")
    assert pt2e.eager_counterpart(nodes["x"], {"quant": "Quantize"}) == ("quant", "out")
    assert pt2e.eager_counterpart(nodes["relu"], {}) == ("", "")


def test_compare_refuses_what_is_not_a_qparams_table(converted):
    with pytest.raises(BadInputError, match="qparams_table"):
        pt2e.compare_with_eager(converted, {"quant": 1.0})
    with pytest.raises(BadInputError, match="eager int8 model"):
        pt2e.compare_weights(converted, "model")


# --- the numeric debugger ----------------------------------------------------------------------------

def test_sqnr_table_compares_folded_convolutions_with_batchnorm(tiny, batches):
    from torchao.quantization.pt2e import prepare_for_propagation_comparison

    exported = pt2e.export(tiny, batches[0])
    reference = prepare_for_propagation_comparison(exported)
    prepared = pt2e.prepare(exported)
    pt2e.calibrate(prepared, batches, progress=False)
    quantized = prepare_for_propagation_comparison(pt2e.convert(prepared))
    with pytest.raises(PipelineOrderError, match="run the same input"):
        pt2e.sqnr_table(reference, quantized)
    x = _images(16, seed=5)
    with torch.no_grad():
        float_out, int8_out = reference(x), quantized(x)
    table = pt2e.sqnr_table(reference, quantized)
    conv = table[table.op == "conv2d"]
    assert list(conv.compared_with) == ["batch_norm", "batch_norm_1"]
    assert (conv.sqnr_db > conv.torchao_sqnr_db).all()
    assert math.isclose(table[table.op == "linear"].sqnr_db.iloc[0], qmath.sqnr_db(float_out, int8_out), rel_tol=1e-9)
    with pytest.raises(BadInputError, match="prepare_for_propagation_comparison"):
        pt2e.sqnr_table(tiny, quantized)


# --- compile helpers: argument checks (compilation itself runs in notebook 11) --------------------------

def test_warm_up_and_compile_refuse_bad_examples(converted):
    with pytest.raises(BadInputError, match="at least one example"):
        pt2e.warm_up(lambda x: x, [])
    with pytest.raises(BadInputError, match=r"examples\[1\]"):
        pt2e.warm_up(lambda x: x, [_images(2), "images"])
    with pytest.raises(BadInputError, match="torch.compile returned"):
        pt2e.warm_up("model", [_images(2)])
    assert len(pt2e.warm_up(lambda x: x, _images(2))) == 1


def test_profiled_ops_of_the_converted_graph_are_float_convolutions(converted):
    ops = pt2e.profiled_ops(converted, _images(4))
    quantize_nodes = (pt2e.qdq_nodes(converted).op == "quantize").sum()
    assert ops["quantized_decomposed::quantize_per_tensor"] == quantize_nodes
    assert ops["aten::convolution"] == 2 and not any(op.startswith("onednn::q") for op in ops)


def test_make_evaluable_refuses_a_module(tiny):
    with pytest.raises(BadInputError, match="GraphModule"):
        pt2e.make_evaluable(tiny)


def test_calibrate_checks_batches_like_ptq(tiny):
    prepared = pt2e.prepare(pt2e.export(tiny, _images(2)))
    with pytest.raises(BadInputError, match="NaN"):
        pt2e.calibrate(prepared, [torch.full((2, 1, 8, 8), float("nan"))], progress=False)
    with pytest.raises(BadInputError, match="one tensor"):
        pt2e.calibrate(prepared, _images(4), progress=False)
    with pytest.raises(BadInputError, match="no images"):
        pt2e.calibrate(prepared, [], progress=False)
    with pytest.raises(BadInputError, match="whole number"):
        pt2e.calibrate(prepared, [_images(2)], num_batches=0, progress=False)


# --- the notebook's checkers ---------------------------------------------------------------------------

def test_check_graph_qparams_right_and_wrong(converted, capsys):
    node = next(n for n in converted.graph.nodes if str(n.target).startswith("quantized_decomposed.quantize_per_tensor")
                and n.args[0].name == "relu")
    assert checks.check_graph_qparams(node.args[1], node.args[2], converted, "relu")
    assert "Correct!" in capsys.readouterr().out
    assert checks.check_graph_qparams(torch.tensor(node.args[1]), float(node.args[2]), converted, "relu")
    assert not checks.check_graph_qparams(node.args[1] * 2, node.args[2], converted, "relu")
    assert "args[1]" in capsys.readouterr().out
    assert not checks.check_graph_qparams(node.args[1], node.args[2] + 1, converted, "relu")
    assert "zero point" in capsys.readouterr().out
    assert not checks.check_graph_qparams(node.args[1], 0.5, converted, "relu")
    assert "integer" in capsys.readouterr().out
    assert not checks.check_graph_qparams(node.args[1], node.args[2], converted, "no_such_node")
    assert "no node named" in capsys.readouterr().out
    assert not checks.check_graph_qparams(node.args[1], node.args[2], converted, "conv2d")  # not quantized itself
    assert "does not quantize" in capsys.readouterr().out
    assert not checks.check_graph_qparams(node.args[1], node.args[2], "graph", "relu")
    assert "GraphModule" in capsys.readouterr().out


def test_check_graph_weight_right_and_wrong(tiny, converted, capsys):
    stored = pt2e.int8_weights(converted)
    right = stored["conv2"][0]
    assert checks.check_graph_weight(right, converted, "conv2")
    assert "Correct!" in capsys.readouterr().out
    assert checks.check_graph_weight(right.to(torch.int64).tolist(), converted, "conv2")  # by value, any form
    assert not checks.check_graph_weight(right.float() * 0.01, converted, "conv2")  # dequantized-like floats
    assert "int8 constant" in capsys.readouterr().out
    assert not checks.check_graph_weight(right.float(), converted, "conv2")
    assert "float tensor" in capsys.readouterr().out
    assert not checks.check_graph_weight(stored["conv1"][0], converted, "conv2")  # another layer's shape
    assert "shape" in capsys.readouterr().out
    wrong = right.clone()
    wrong[0, 0, 0, 0] += 1 if wrong[0, 0, 0, 0] < 127 else -1
    assert not checks.check_graph_weight(wrong, converted, "conv2")
    assert "1 of" in capsys.readouterr().out
    assert not checks.check_graph_weight(right, converted, "bn2")
    assert "no conv or linear" in capsys.readouterr().out
    assert not checks.check_graph_weight(right, tiny, "conv2")
    assert "GraphModule" in capsys.readouterr().out


def test_check_graph_weight_names_the_layer_a_weight_belongs_to(capsys):
    torch.manual_seed(0)
    twins = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    graph = pt2e.quantize_pt2e(twins, [x], progress=False)
    stored = pt2e.int8_weights(graph)
    assert set(stored) == {"0", "2"}
    assert checks.check_graph_weight(stored["2"][0], graph, "2")
    assert not checks.check_graph_weight(stored["0"][0], graph, "2")
    assert "that is the weight of 0" in capsys.readouterr().out


def test_checkers_never_raise(converted, capsys):
    for args in ((None, None, converted, "relu"), ("a", 1, converted, "relu"), (1.0, 0, None, "relu"),
                 (1.0, 0, converted, 3)):
        assert checks.check_graph_qparams(*args) is False
    for args in ((None, converted, "conv1"), ("w", converted, "conv1"), (torch.zeros(2), converted, "conv1"),
                 (torch.zeros(4, 1, 3, 3, dtype=torch.complex64), converted, "conv1"), (1, converted, None)):
        assert checks.check_graph_weight(*args) is False
    assert capsys.readouterr().out.count("Not yet") == 9
