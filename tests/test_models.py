import pytest
import torch
import torchvision
from torch.ao.quantization import convert, get_default_qconfig, prepare

from qlib.models import SeedNet, parameter_count, resnet18


def _keys_and_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("quantizable", [False, True])
def test_default_resnet18_state_dict_equals_torchvision(quantizable):
    ours = resnet18(quantizable=quantizable)
    theirs = torchvision.models.resnet18()
    assert _keys_and_shapes(ours) == _keys_and_shapes(theirs)
    ours.load_state_dict(theirs.state_dict())  # ImageNet weights would load the same way
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_classes=10, in_channels=1, width=16, small_input=True)])
def test_plain_and_quantizable_share_weights_and_outputs(kwargs):
    torch.manual_seed(0)
    plain = resnet18(**kwargs).eval()
    quantizable = resnet18(**kwargs, quantizable=True).eval()
    quantizable.load_state_dict(plain.state_dict())
    plain.load_state_dict(quantizable.state_dict())
    size = 28 if kwargs else 64
    x = torch.randn(3, kwargs.get("in_channels", 3), size, size)
    with torch.no_grad():
        assert torch.equal(plain(x), quantizable(x))


def test_small_input_keeps_resolution_until_layer2():
    model = resnet18(num_classes=10, in_channels=1, width=16, small_input=True).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_plain_resnet_refuses_to_fuse():
    with pytest.raises(TypeError, match="quantizable=True"):
        resnet18().fuse_model()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"width must be a whole number >= 1, not 0; pass e\.g\. width=1"):
        resnet18(width=0)
    with pytest.raises(ValueError, match=r"num_classes must be a whole number >= 1, not a float \(10\.0\)"):
        resnet18(num_classes=10.0)


FORUM_PRINTOUT_TYPES = {
    "quant": "Quantize", "dequant": "DeQuantize",
    **{f"features.{i}": t for i in range(0, 12, 3)
       for t, i in [("QuantizedConvReLU2d", i)]},
    **{f"features.{i}": "Identity" for i in range(12) if i % 3},
    "classifier.0": "QuantizedDropout", "classifier.1": "QuantizedLinearReLU", "classifier.2": "Identity",
    "classifier.3": "QuantizedDropout", "classifier.4": "QuantizedLinear",
}


def test_converted_seednet_has_the_forum_printouts_module_types():
    """The question's printout: QuantizedConvReLU2d, Identity, Identity x4, then the classifier."""
    model = SeedNet().eval().fuse_model()
    model.qconfig = get_default_qconfig("x86")
    prepare(model, inplace=True)
    model(torch.randn(16, 1, 28, 28))
    convert(model, inplace=True)
    # The printout shows _get_name() of each module two levels down (not the packed params).
    types = {name: m._get_name() for name, m in model.named_modules()
             if name and name not in ("features", "classifier") and name.count(".") <= 1}
    assert types == FORUM_PRINTOUT_TYPES
    assert [name for name, _ in model.named_children()] == ["quant", "dequant", "features", "classifier"]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_parameter_count_counts_parameters_only():
    assert parameter_count(torch.nn.Linear(3, 2)) == 8
    assert parameter_count(torch.nn.BatchNorm2d(4)) == 8  # running stats are buffers
