"""Conv+BN folding by hand (qlib.fusion) against torch.ao.quantization.fuse_modules."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.ao.quantization import fuse_modules

from qlib.fusion import FoldingError, fold_bn, fold_model_by_hand, max_abs_difference
from qlib.models import SeedNet, resnet18


def _conv_bn(c_in, c_out, kernel, bias, groups=1, seed=0):
    """A Conv2d + BatchNorm2d with non-trivial running statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias, groups=groups)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.01, 4)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    return conv.eval(), bn.eval()


def _fused_by_torch(conv, bn):
    pair = nn.Sequential(conv, bn).eval()
    return fuse_modules(pair, [["0", "1"]], inplace=False)[0]


@settings(max_examples=30, deadline=None)
@given(c_in=st.integers(1, 8), c_out=st.integers(1, 8), kernel=st.sampled_from([1, 3]),
       bias=st.booleans(), seed=st.integers(0, 10_000))
def test_fold_bn_equals_fuse_modules_and_the_unfused_pair(c_in, c_out, kernel, bias, seed):
    conv, bn = _conv_bn(c_in, c_out, kernel, bias, seed=seed)
    ours, theirs = fold_bn(conv, bn), _fused_by_torch(conv, bn)
    # Same formula, evaluated in another order (torch uses rsqrt): equal up to float32 rounding.
    scale = float(ours.weight.detach().abs().max()) + 1e-12
    assert max_abs_difference(ours.weight, theirs.weight) <= 4e-7 * scale
    assert max_abs_difference(ours.bias, theirs.bias) <= 4e-7 * (float(ours.bias.detach().abs().max()) + 1)
    x = torch.randn(2, c_in, 6, 6, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = bn(conv(x))
        assert torch.allclose(ours(x), reference, rtol=1e-5, atol=1e-5)
        assert torch.allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_fold_bn_handles_grouped_convolutions():
    conv, bn = _conv_bn(4, 8, 3, bias=True, groups=2)
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)


def test_fold_bn_leaves_its_inputs_untouched():
    conv, bn = _conv_bn(3, 4, 3, bias=False)
    before = [t.clone() for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)]
    folded = fold_bn(conv, bn)
    after = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert conv.bias is None and folded.bias is not None  # the folded conv gains a bias


@pytest.mark.parametrize("which", ["conv", "bn"])
def test_training_mode_is_refused_with_the_reason_and_the_fix(which):
    conv, bn = _conv_bn(2, 3, 3, bias=False)
    (conv if which == "conv" else bn).train()
    with pytest.raises(FoldingError, match=r"eval mode.*batch's statistics.*model\.eval\(\)"):
        fold_bn(conv, bn)


def test_mismatched_or_wrong_modules_are_refused():
    conv, _ = _conv_bn(2, 3, 3, bias=False)
    with pytest.raises(FoldingError, match="channels"):
        fold_bn(conv, nn.BatchNorm2d(5).eval())
    with pytest.raises(FoldingError, match="Conv2d"):
        fold_bn(nn.Linear(2, 3).eval(), nn.BatchNorm2d(3).eval())


def _randomise_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("build", [SeedNet, lambda: resnet18(num_classes=10, in_channels=1, width=8,
                                                              small_input=True, quantizable=True)],
                         ids=["seednet", "resnet18"])
def test_folding_a_whole_model_by_hand_matches_fuse_model(build):
    model = _randomise_bn(build())
    conv_bn_groups = [g for g in model.fuse_groups() if "classifier.1" not in g]  # Linear+ReLU: not BN
    by_hand = fold_model_by_hand(model, conv_bn_groups)
    by_torch = fuse_modules(model, conv_bn_groups, inplace=False)
    # The same module type at every name: the fused modules, and Identity placeholders in the same places.
    types = lambda m: {n: type(x) for n, x in m.named_modules()}
    assert types(by_hand) == types(by_torch) and nn.Identity in types(by_hand).values()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, ours, theirs = model(x), by_hand(x), by_torch(x)
    assert max_abs_difference(ours, theirs) < 1e-4 * float(reference.abs().max())
    assert max_abs_difference(ours, reference) < 1e-4 * float(reference.abs().max())


def test_bad_group_is_refused():
    model = SeedNet().eval()
    with pytest.raises(FoldingError, match="conv, bn"):
        fold_model_by_hand(model, [["features.0", "features.1", "features.3"]])


def test_the_folding_exercise_checker(capsys):
    from qlib.checks import check_folded_conv

    conv, bn = _conv_bn(2, 4, 3, bias=False)
    factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * factor.reshape(-1, 1, 1, 1)
    bias = -bn.running_mean * factor + bn.bias.detach()
    assert check_folded_conv(weight, bias, conv, bn) and "Correct!" in capsys.readouterr().out
    wrong = conv.weight.detach() * (bn.weight.detach() / bn.running_var).reshape(-1, 1, 1, 1)
    assert not check_folded_conv(wrong, bias, conv, bn) and "sqrt" in capsys.readouterr().out
    assert not check_folded_conv(weight, bias + bn.running_mean, conv, bn) and "running_mean" in capsys.readouterr().out
    assert not check_folded_conv(weight[:, 0], bias, conv, bn) and "reshape" in capsys.readouterr().out


def test_fold_model_by_hand_gives_fuse_modules_tree_for_every_kind_of_group():
    model = _randomise_bn(SeedNet())
    by_hand = fold_model_by_hand(model, model.fuse_groups())
    by_torch = fuse_modules(model, model.fuse_groups(), inplace=False)
    assert {n: type(m) for n, m in by_hand.named_modules()} == {n: type(m) for n, m in by_torch.named_modules()}
    conv_relu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    assert isinstance(fold_model_by_hand(conv_relu, [["0", "1"]])[0], torch.ao.nn.intrinsic.ConvReLU2d)
    with pytest.raises(FoldingError, match="not one of"):
        fold_model_by_hand(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval(), [["0", "1"]])
