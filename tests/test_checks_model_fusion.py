"""The exercise checkers of notebooks 03, 04 and 05: each accepts the reference solution, refuses the
typical mistake with a message that names it, and refuses a function that is not written yet."""

import copy

import pytest
import torch
import torch.ao.nn.intrinsic as nni
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from qlib import checks, fusion, models


def _verdict(capsys, ok, *words):
    out = capsys.readouterr().out
    for word in words:
        assert word in out, out
    return ok


def accepted(capsys, ok):
    assert _verdict(capsys, ok, "Correct!") is True


def refused(capsys, ok, *words):
    assert _verdict(capsys, ok, "Not yet:", *words) is False


def _stub(*args):
    raise NotImplementedError()


# ---------------------------------------------------------------- 03: size, accuracy, parameter count

def _state_dict_bytes(model):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_state_dict_bytes(capsys):
    accepted(capsys, checks.check_state_dict_bytes(_state_dict_bytes))
    refused(capsys, checks.check_state_dict_bytes(lambda m: sum(p.numel() * 4 for p in m.parameters())),
            "parameters only", "running_mean")
    refused(capsys, checks.check_state_dict_bytes(lambda m: sum(t.numel() * 4 for t in m.state_dict().values())),
            "int64")
    refused(capsys, checks.check_state_dict_bytes(lambda m: 8 * _state_dict_bytes(m)), "bits")
    refused(capsys, checks.check_state_dict_bytes(lambda m: float(_state_dict_bytes(m)) + 0.5), "whole number")
    refused(capsys, checks.check_state_dict_bytes(_stub), "not written yet")


def _accuracy(model, images, labels, batch_size):
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            predictions = model(images[start:start + batch_size]).argmax(dim=1)
            correct += int((predictions == labels[start:start + batch_size]).sum())
    return 100 * correct / len(images)


def test_accuracy_loop(capsys):
    accepted(capsys, checks.check_accuracy_loop(_accuracy))

    def no_eval(model, images, labels, batch_size):
        with torch.no_grad():
            return 100 * float((model(images).argmax(1) == labels).float().mean())

    refused(capsys, checks.check_accuracy_loop(no_eval), "training mode", "model.eval()")
    refused(capsys, checks.check_accuracy_loop(lambda *a: _accuracy(*a) / 100), "fraction")

    def full_batches_only(model, images, labels, batch_size):
        n = len(images) // batch_size * batch_size
        return _accuracy(model, images[:n], labels[:n], batch_size)

    refused(capsys, checks.check_accuracy_loop(full_batches_only), "partial batch")
    refused(capsys, checks.check_accuracy_loop(_stub), "not written yet")


def _parameter_count(width, in_channels, num_classes, downsample=True, bn=True, fc_bias=True):
    widths = [width, 2 * width, 4 * width, 8 * width]
    count = 9 * in_channels * width + (2 * width if bn else 0)
    c_in = width
    for index, c in enumerate(widths):
        count += 9 * c_in * c + 3 * 9 * c * c + (4 * 2 * c if bn else 0)
        if index and downsample:
            count += c_in * c + (2 * c if bn else 0)
        c_in = c
    return count + 8 * width * num_classes + (num_classes if fc_bias else 0)


@pytest.mark.parametrize("mistake, words", [(dict(downsample=False), "downsample"),
                                            (dict(bn=False), "BatchNorm's parameters"),
                                            (dict(fc_bias=False), "bias")])
def test_resnet18_parameter_count(capsys, mistake, words):
    accepted(capsys, checks.check_resnet18_parameter_count(_parameter_count))
    refused(capsys, checks.check_resnet18_parameter_count(lambda *a: _parameter_count(*a, **mistake)), words)
    refused(capsys, checks.check_resnet18_parameter_count(_stub), "not written yet")


# ---------------------------------------------------------------- 04: stubs, shared modules, the block

class _Wrapper(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.quant, self.module, self.dequant = QuantStub(), module, DeQuantStub()

    def forward(self, x):
        return self.dequant(self.module(self.quant(x)))


def test_quant_wrapper(capsys):
    accepted(capsys, checks.check_quant_wrapper(_Wrapper))

    class NoDequant(_Wrapper):
        def forward(self, x):
            return self.module(self.quant(x))

    class NoQuant(_Wrapper):
        def forward(self, x):
            return self.dequant(self.module(x))

    refused(capsys, checks.check_quant_wrapper(NoDequant), "quantized tensor", "DeQuantStub")
    refused(capsys, checks.check_quant_wrapper(NoQuant), "QuantStub must quantize the input")

    class NotWritten(nn.Module):
        def __init__(self, module):
            super().__init__()
            raise NotImplementedError()

    refused(capsys, checks.check_quant_wrapper(NotWritten), "not written yet")


def _shared(model, x):
    counts, handles = {}, []
    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: counts.__setitem__(name, counts.get(name, 0) + 1)))
    model(x)
    for handle in handles:
        handle.remove()
    return sorted(name for name, count in counts.items() if count > 1)


def test_shared_modules(capsys):
    accepted(capsys, checks.check_shared_modules(_shared))

    def by_type(model, x):  # counts the ReLU *type*, not each module object
        return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]

    refused(capsys, checks.check_shared_modules(by_type), "should not name")

    def hooks_left(model, x):
        counts = {}
        for name, module in model.named_modules():
            module.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
        model(x)
        return [name for name, count in counts.items() if count > 1]

    refused(capsys, checks.check_shared_modules(hooks_left), "handle.remove()")
    refused(capsys, checks.check_shared_modules(lambda model, x: "layer1.0.relu"), "list")
    refused(capsys, checks.check_shared_modules(_stub), "not written yet")


def _block(forward):
    class Block(models.BasicBlock):
        def __init__(self, c_in, c_out, stride=1, downsample=None):
            super().__init__(c_in, c_out, stride, downsample)
            del self.relu
            self.relu1 = nn.ReLU()
            self.skip_add = torch.ao.nn.quantized.FloatFunctional()

    Block.forward = forward
    return Block


def _identity(block, x):
    return x if block.downsample is None else block.downsample(x)


def test_quantizable_block(capsys):
    def right(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.skip_add.add_relu(self.bn2(self.conv2(out)), _identity(self, x))

    accepted(capsys, checks.check_quantizable_block(_block(right)))

    def bare_plus(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu1(self.bn2(self.conv2(out)) + _identity(self, x))

    refused(capsys, checks.check_quantizable_block(_block(bare_plus)), "after fusion", "Identity")

    def plus_then_torch_relu(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + _identity(self, x))

    refused(capsys, checks.check_quantizable_block(_block(plus_then_torch_relu)), "FloatFunctional")

    def add_then_relu(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return torch.relu(self.skip_add.add(self.bn2(self.conv2(out)), _identity(self, x)))

    refused(capsys, checks.check_quantizable_block(_block(add_then_relu)), "int8 output", "observer saw negative")

    def no_final_relu(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.skip_add.add(self.bn2(self.conv2(out)), _identity(self, x))

    refused(capsys, checks.check_quantizable_block(_block(no_final_relu)), "final ReLU")
    refused(capsys, checks.check_quantizable_block(_block(_stub)), "not written yet")


# ---------------------------------------------------------------- 05: int8 ReLU, folding, surgery

def test_int8_relu(capsys):
    accepted(capsys, checks.check_int8_relu(lambda q: q.int_repr().clamp(min=q.q_zero_point())))
    refused(capsys, checks.check_int8_relu(lambda q: q.int_repr().clamp(min=0)), "zero_point = 60")
    refused(capsys, checks.check_int8_relu(lambda q: torch.relu(q)), "quantized tensor", ".int_repr()")
    refused(capsys, checks.check_int8_relu(lambda q: torch.relu(q.dequantize())), "float tensor")
    refused(capsys, checks.check_int8_relu(_stub), "not written yet")


def _fold(conv, bn):
    f = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight.detach() * f.reshape(-1, 1, 1, 1), (b - bn.running_mean) * f + bn.bias.detach()


def test_fold_conv_bn(capsys):
    accepted(capsys, checks.check_fold_conv_bn(_fold))

    def ignores_conv_bias(conv, bn):
        f = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        return conv.weight.detach() * f.reshape(-1, 1, 1, 1), -bn.running_mean * f + bn.bias.detach()

    refused(capsys, checks.check_fold_conv_bn(ignores_conv_bias), "1x1 conv with a bias", "this conv has a bias b")

    def no_sqrt(conv, bn):
        weight, bias = _fold(conv, bn)
        return conv.weight.detach() * (bn.weight.detach() / bn.running_var).reshape(-1, 1, 1, 1), bias

    refused(capsys, checks.check_fold_conv_bn(no_sqrt), "weight differs", "sqrt")

    def in_place(conv, bn):
        weight, bias = _fold(conv, bn)
        with torch.no_grad():
            conv.weight.copy_(weight)
        return weight, bias

    refused(capsys, checks.check_fold_conv_bn(in_place), "changed conv.weight in place")
    refused(capsys, checks.check_fold_conv_bn(lambda conv, bn: _fold(conv, bn)[0]), "pair (weight, bias)")
    refused(capsys, checks.check_fold_conv_bn(_stub), "not written yet")


def _surgery(model, groups, relu_type=nni.ConvReLU2d, copy_model=True):
    fused = copy.deepcopy(model) if copy_model else model
    for group in groups:
        modules = [fused.get_submodule(name) for name in group]
        if isinstance(modules[0], nn.Linear):
            new = nni.LinearReLU(modules[0], modules[1])
        else:
            folded = fusion.fold_bn(modules[0], modules[1])
            new = relu_type(folded, modules[2]) if len(modules) == 3 else folded
        for name, module in zip(group, [new] + [nn.Identity()] * (len(group) - 1)):
            parent, _, attribute = name.rpartition(".")
            setattr(fused.get_submodule(parent), attribute, module)
    return fused


def test_fuse_by_hand(capsys):
    accepted(capsys, checks.check_fuse_by_hand(_surgery))
    accepted(capsys, checks.check_fuse_by_hand(fusion.fold_model_by_hand))
    refused(capsys, checks.check_fuse_by_hand(lambda m, g: _surgery(m, g, relu_type=nn.Sequential)),
            "at 'features.0'", "torch.ao.nn.intrinsic.ConvReLU2d")
    refused(capsys, checks.check_fuse_by_hand(lambda m, g: _surgery(m, g, copy_model=False)), "changed the model")

    def deleted(model, groups):  # removes the slots instead of leaving Identity placeholders
        fused = _surgery(model, groups)
        for group in groups:
            for name in group[1:]:
                parent, _, attribute = name.rpartition(".")
                delattr(fused.get_submodule(parent), attribute)
        return fused

    refused(capsys, checks.check_fuse_by_hand(deleted), "nothing", "nn.Identity()")

    def unfolded(model, groups):
        fused = _surgery(model, groups)
        for group in groups:
            if isinstance(model.get_submodule(group[0]), nn.Conv2d):
                target = fused.get_submodule(group[0])
                conv = target[0] if isinstance(target, nni.ConvReLU2d) else target
                with torch.no_grad():
                    conv.weight.copy_(model.get_submodule(group[0]).weight)
        return fused

    refused(capsys, checks.check_fuse_by_hand(unfolded), "differs from fuse_modules'", "fold_bn")
    refused(capsys, checks.check_fuse_by_hand(_stub), "not written yet")

