"""qlib.sensitivity (notebook 10): per-layer SQNR against PyTorch's numeric suite, the ranking, float
islands, and the notebook's two checkers, on a tiny random ResNet (seconds)."""

import copy

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.quantized as nnq
import torch.ao.ns._numeric_suite as ns
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, MinMaxObserver, QConfig, QuantStub, get_default_qconfig
from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

from qlib import bench, checks, errors, ptq, qmath, quantizable, sensitivity
from qlib.models import resnet18
from qlib.recorder import recording

IMAGES = torch.randn(12, 1, 12, 12, generator=torch.Generator().manual_seed(0))
# 3-bit per-tensor weights: a recipe that loses, so that layers differ and islands have something to fix.
HARSH = QConfig(activation=get_default_qconfig("x86").activation,
                weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                                quant_min=-4, quant_max=3))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds the cost of waking it (seconds on a busy machine)."""
    with bench.threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, in_channels=1, width=4, small_input=True, quantizable=True).eval()
    with torch.no_grad():
        for m in model.modules():  # BN statistics that are not the identity, so that folding matters
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def twin(tiny):
    return sensitivity.fused_float(tiny)


@pytest.fixture(scope="module")
def qmodel(tiny):
    return ptq.quantize_static(tiny, [IMAGES], progress=False)


@pytest.fixture(scope="module")
def qharsh(tiny):
    return ptq.quantize_static(tiny, [IMAGES], qconfig=HARSH, progress=False)


def _sqnr_of(logged):
    return {name.removesuffix(".stats"): qmath.sqnr_db(v["float"][0].detach(), v["quantized"][0].dequantize())
            for name, v in logged.items()}


def test_every_int8_layer_is_paired_with_the_float_module_convert_made_it_from(tiny, twin, qmodel):
    mapping = {**get_default_static_quant_module_mappings(), FloatFunctional: nnq.QFunctional}
    pairs = sensitivity.paired_layers(twin, qmodel)
    for name in pairs:
        assert mapping[type(twin.get_submodule(name))] is type(qmodel.get_submodule(name)), name
    compared = (nnq.Quantize, nnq.QFunctional, nnq.Conv2d, nnq.Linear)  # int8 convs / linears incl. fused ones
    assert set(pairs) == {n for n, m in qmodel.named_modules() if isinstance(m, compared)}
    assert not any(isinstance(m, nni.ConvReLU2d) for m in tiny.modules())  # the float model was copied, not fused


def test_an_unfused_float_model_or_a_wrong_order_is_refused(tiny, twin, qmodel):
    with pytest.raises(errors.BadInputError, match="fused_float"):
        sensitivity.paired_layers(tiny, qmodel)              # Conv2d facing QuantizedConvReLU2d
    with pytest.raises(errors.PipelineOrderError):
        sensitivity.paired_layers(twin, twin)                # the second model is not converted
    with pytest.raises(errors.BadInputError, match="float model first"):
        sensitivity.paired_layers(ptq.prepare_static(tiny), qmodel)
    with pytest.raises(errors.PipelineOrderError):
        sensitivity.fused_float(qmodel)


def test_propagated_sqnr_equals_the_numeric_suites_compare_model_outputs(twin, qharsh):
    with torch.no_grad():
        logged = ns.compare_model_outputs(copy.deepcopy(twin), copy.deepcopy(qharsh), IMAGES)
    theirs = _sqnr_of(logged)
    ours = sensitivity.layer_sqnr(twin, qharsh, IMAGES).propagated_db
    assert set(theirs) == set(ours.index)
    assert max(abs(theirs[n] - ours[n]) for n in theirs) < 1e-9


def test_local_sqnr_equals_compare_model_stub_with_a_logger_that_keeps_the_whole_batch(twin, qharsh):
    class WholeBatch(ns.ShadowLogger):
        def forward(self, x, y):
            self.stats["quantized"].append(x.detach())
            self.stats["float"].append(y.detach())

    swap = {nni.ConvReLU2d, nn.Conv2d, nn.Linear, FloatFunctional}
    theirs = _sqnr_of(ns.compare_model_stub(copy.deepcopy(twin), copy.deepcopy(qharsh), swap, IMAGES,
                                            logger_cls=WholeBatch))
    ours = sensitivity.layer_sqnr(twin, qharsh, IMAGES).local_db
    assert set(theirs) == set(ours.index) - {"quant"}
    assert max(abs(theirs[n] - ours[n]) for n in theirs) < 1e-9
    # the default ShadowLogger keeps x[0] of a batch: one image, no batch dimension
    first = ns.compare_model_stub(copy.deepcopy(twin), copy.deepcopy(qharsh), swap, IMAGES)["conv1.stats"]
    assert first["float"][0].shape == (4, 12, 12)


def test_local_sqnr_is_the_float_layer_run_on_the_int8_layers_own_input(twin, qharsh):
    name = "layer2.0.conv2"
    with recording(qharsh, [name]) as rec, torch.inference_mode():
        qharsh(IMAGES)
    call = rec.calls[0]
    with torch.inference_mode():
        by_hand = qmath.sqnr_db(twin.get_submodule(name)(call.args[0].dequantize()), call.output.dequantize())
    assert sensitivity.layer_sqnr(twin, qharsh, IMAGES, layers=[name]).local_db[name] == pytest.approx(by_hand, abs=1e-9)


def test_the_batch_size_does_not_change_the_sqnr(twin, qharsh):
    whole = sensitivity.layer_sqnr(twin, qharsh, IMAGES, batch_size=len(IMAGES))
    split = sensitivity.layer_sqnr(twin, qharsh, IMAGES, batch_size=5)
    assert list(whole.index) == list(split.index)
    assert (whole[["propagated_db", "local_db"]] - split[["propagated_db", "local_db"]]).abs().max().max() < 1e-9


def test_rows_follow_the_order_the_int8_model_runs_its_layers(twin, qmodel):
    table = sensitivity.layer_sqnr(twin, qmodel, IMAGES[:2])
    with recording(qmodel, list(table.index)) as rec, torch.inference_mode():
        qmodel(IMAGES[:2])
    assert list(table.index) == [c.path for c in rec.calls]
    assert table.index[0] == "quant" and table.index[-1] == "fc"


def test_ranking_puts_the_lowest_sqnr_first_and_keeps_only_layers_an_island_can_hold(twin, qharsh):
    table = sensitivity.layer_sqnr(twin, qharsh, IMAGES)
    everything = sensitivity.ranking(table)
    assert sorted(everything) == sorted(table.index)
    assert list(table.local_db[everything]) == sorted(table.local_db)
    movable = sensitivity.ranking(table, "propagated_db", twin)
    assert list(table.propagated_db[movable]) == sorted(table.propagated_db[movable])
    assert movable and all(sensitivity.can_float(twin, n) for n in movable)
    assert not any(n == "quant" or n.endswith("skip_add") for n in movable)


def _converted(model, qconfig=None):
    prepared = ptq.prepare_static(model, qconfig=qconfig, fuse=False)
    ptq.calibrate(prepared, [IMAGES], progress=False)
    return ptq.convert_static(prepared)


def test_keep_in_float_builds_islands_that_run_the_float_layer_on_float_input(tiny, twin):
    layers = ["conv1", "layer2.0.conv2"]
    model = sensitivity.keep_in_float(tiny, layers)
    quantizable.check_quantizable(model)
    converted = _converted(model)
    for name in layers:
        island = converted.get_submodule(name)
        assert type(island.layer) is type(twin.get_submodule(name))
        assert isinstance(island.dequant, nnq.DeQuantize) and isinstance(island.quant, nnq.Quantize)
    int8_layers = [m for m in converted.modules() if isinstance(m, (nnq.Conv2d, nnq.Linear))]
    all_layers = [m for m in twin.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(int8_layers) == len(all_layers) - len(layers)
    path = "layer2.0.conv2.layer"
    with recording(converted, [path]) as rec, torch.inference_mode():
        converted(IMAGES)
    call = rec.calls[0]
    assert not call.args[0].is_quantized and not call.output.is_quantized
    with torch.inference_mode():
        assert torch.equal(twin.get_submodule("layer2.0.conv2")(call.args[0]), call.output)
    assert not any(isinstance(m, sensitivity.FloatIsland) for m in tiny.modules())


def test_keeping_every_layer_in_float_removes_the_harsh_weights_error(tiny, twin, qharsh):
    everything = sensitivity.ranking(sensitivity.layer_sqnr(twin, qharsh, IMAGES), model=twin)
    islands = _converted(sensitivity.keep_in_float(tiny, everything), HARSH)
    with torch.inference_mode():
        reference, all_int8, mixed = twin(IMAGES), qharsh(IMAGES), islands(IMAGES)
    # only activations are rounded then (8-bit): several bits better than 3-bit weights everywhere
    assert qmath.sqnr_db(reference, mixed) > qmath.sqnr_db(reference, all_int8) + 6


@pytest.mark.parametrize("layers, match", [("conv1", "letter by letter"), (["nope"], "no layer"), (3, "list"),
                                           (["layer1.0.skip_add"], "through its methods"),
                                           ([3], "list of layer names")])
def test_keep_in_float_refuses_what_it_cannot_keep(tiny, layers, match):
    with pytest.raises(errors.BadInputError, match=match):
        sensitivity.keep_in_float(tiny, layers)


@pytest.mark.parametrize("images, match", [(IMAGES.to(torch.float64), "float32"), (IMAGES[0, 0, 0], "batch"),
                                           (IMAGES[:0], "float32"), ("images", "float32"),
                                           (torch.full_like(IMAGES, float("nan")), "NaN")])
def test_layer_sqnr_refuses_bad_images(twin, qmodel, images, match):
    with pytest.raises(errors.BadInputError, match=match):
        sensitivity.layer_sqnr(twin, qmodel, images)


def test_layer_sqnr_refuses_unknown_layers_and_batch_sizes(twin, qmodel):
    with pytest.raises(errors.BadInputError, match="paired"):
        sensitivity.layer_sqnr(twin, qmodel, IMAGES, layers=["layer9"])
    with pytest.raises(errors.BadInputError, match="letter by letter"):
        sensitivity.layer_sqnr(twin, qmodel, IMAGES, layers="fc")
    with pytest.raises(errors.BadInputError, match="batch_size"):
        sensitivity.layer_sqnr(twin, qmodel, IMAGES, batch_size=0)
    with pytest.raises(errors.BadInputError, match="local_db"):
        sensitivity.ranking({"local_db": [1.0]})
    with pytest.raises(errors.BadInputError, match="no layer"):
        sensitivity.ranking(sensitivity.layer_sqnr(twin, qmodel, IMAGES[:2]), model=nn.Linear(2, 2))


# --- the notebook's checkers -----------------------------------------------------------------------

def _hooked_sqnr(twin, qmodel, name):
    outputs = {}
    handles = [twin.get_submodule(name).register_forward_hook(lambda m, i, o: outputs.update(f=o)),
               qmodel.get_submodule(name).register_forward_hook(lambda m, i, o: outputs.update(q=o))]
    with torch.inference_mode():
        twin(IMAGES)
        qmodel(IMAGES)
    for handle in handles:
        handle.remove()
    f, q = outputs["f"], outputs["q"].dequantize()
    return 10 * torch.log10(f.pow(2).sum() / (f - q).pow(2).sum())


def test_check_layer_sqnr_accepts_the_hooked_answer_and_names_the_usual_slips(twin, qharsh, capsys):
    right = _hooked_sqnr(twin, qharsh, "layer1.0.conv1")
    assert checks.check_layer_sqnr(right, twin, qharsh, IMAGES, "layer1.0.conv1")
    assert checks.check_layer_sqnr(float(right), twin, qharsh, IMAGES, "layer1.0.conv1")
    capsys.readouterr()
    assert not checks.check_layer_sqnr(2 * right, twin, qharsh, IMAGES, "layer1.0.conv1")
    assert "not 20 log10" in capsys.readouterr().out
    assert not checks.check_layer_sqnr(-right, twin, qharsh, IMAGES, "layer1.0.conv1")
    assert "signal over noise" in capsys.readouterr().out
    assert not checks.check_layer_sqnr(right + 0.5, twin, qharsh, IMAGES, "layer1.0.conv1")
    for garbage in (None, "12 dB", torch.tensor([1.0, 2.0]), float("nan")):
        assert not checks.check_layer_sqnr(garbage, twin, qharsh, IMAGES, "layer1.0.conv1")


def _island_by_hand(tiny, name, qconfig_none=True, quant_after=True):
    model = sensitivity.fused_float(tiny)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    layer = getattr(parent, child)
    if qconfig_none:
        layer.qconfig = None
    steps = [DeQuantStub(), layer] + ([QuantStub()] if quant_after else [])
    setattr(parent, child, nn.Sequential(*steps))
    return model


def test_check_float_island_accepts_a_hand_made_island_and_refuses_the_usual_slips(tiny, qmodel, capsys):
    name = "layer1.0.conv1"
    assert checks.check_float_island(_island_by_hand(tiny, name), name, tiny, IMAGES, HARSH)
    capsys.readouterr()
    assert not checks.check_float_island(_island_by_hand(tiny, name, quant_after=False), name, tiny, IMAGES, HARSH)
    assert "gets a float tensor" in capsys.readouterr().out        # the next int8 layer, named by qlib's check
    assert not checks.check_float_island(_island_by_hand(tiny, name, qconfig_none=False), name, tiny, IMAGES, HARSH)
    assert "qconfig" in capsys.readouterr().out
    two = _island_by_hand(tiny, name)
    two.fc.qconfig = None
    two.fc = nn.Sequential(DeQuantStub(), two.fc, QuantStub())
    assert not checks.check_float_island(two, name, tiny, IMAGES, HARSH)
    assert "int8 conv / linear layers" in capsys.readouterr().out
    assert not checks.check_float_island(sensitivity.fused_float(tiny), name, tiny, IMAGES, HARSH)
    assert not checks.check_float_island("model", name, tiny, IMAGES, HARSH)
    assert not checks.check_float_island(qmodel, name, tiny, IMAGES)
