"""Notebooks 03 and 04: the float model (its size, accuracy and parameter count) and the edits that
make a ResNet quantizable (QuantStub / DeQuantStub, one module per use, FloatFunctional.add_relu)."""

from __future__ import annotations

import copy
import functools
import re
import warnings

import torch
from torch import nn

from .core import _NotYet, _call_learner, _checker, _describe, _read_number, report


def _bn_randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with non-trivial BN statistics (so that folding and eval mode matter)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) * 0.4 - 0.2)
    return model.eval()


# --------------------------------------------------------------------------------- notebook 03


def _size_cases():
    from ..models import SeedNet, resnet18

    torch.manual_seed(0)
    half = nn.Sequential(nn.Linear(8, 4)).to(torch.float16)  # 2 bytes per value: element_size(), not 4
    return [("SeedNet", SeedNet()), ("the quantizable ResNet-18 at width 8", resnet18(10, 1, 8, True, True)),
            ("a float16 Linear(8, 4)", half)]


@_checker("fn: your function fn(model), returning the bytes of its state dict's tensors as one integer")
def check_state_dict_bytes(fn) -> bool:
    """Does fn(model) return the bytes held by the tensors of model.state_dict() (numel x element size)?"""
    for label, model in _size_cases():
        expected = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        got = _read_number(_call_learner(fn, copy.deepcopy(model)), f"for {label}, your result", integer=True,
                           hint="a number of bytes is a whole number.")
        if got == expected:
            continue
        parameters = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = expected - parameters
        if got == parameters:
            hint = (f"you counted the parameters only: the state dict also holds the buffers ({buffers:,} bytes "
                    "here: BatchNorm's running_mean, running_var and num_batches_tracked).")
        elif got == 4 * sum(t.numel() for t in model.state_dict().values()):
            hint = ("not every tensor holds 4-byte floats: num_batches_tracked is int64 (8 bytes) and a float16 "
                    "tensor takes 2; multiply each tensor's numel() by its own element_size().")
        elif got == 8 * expected:
            hint = "that is bits; a byte holds 8 of them."
        elif got == sum(t.numel() for t in model.state_dict().values()):
            hint = "that is the number of values; multiply each by its size in bytes (element_size())."
        else:
            hint = "sum t.numel() * t.element_size() over model.state_dict().values()."
        return report(False, "", f"for {label} you returned {got:,} bytes; its state dict holds {expected:,}.", hint)
    return report(True, "your byte count equals the state dict's for every model, buffers and dtypes included.")


@functools.lru_cache(maxsize=1)
def _accuracy_data():
    """600 test images and labels, the SeedNet checkpoint's state dict, and its accuracy in eval mode
    (batches of 256 leave a partial one): read once per session."""
    from .. import data, metrics, pretrained

    images, labels = data.fashion_mnist("test").tensors()
    images, labels = images[:600], labels[:600]
    model = pretrained.load("seednet-fmnist").eval()
    return model.state_dict(), images, labels, metrics.accuracy(metrics.predict(model, images, 256), labels)


def _seednet_in_training_mode(state) -> nn.Module:
    from ..models import SeedNet

    model = SeedNet()
    model.load_state_dict(state)
    return model.train()


@_checker("fn: your function fn(model, images, labels, batch_size), returning the accuracy in percent")
def check_accuracy_loop(fn) -> bool:
    """Does fn(model, images, labels, batch_size) return the top-1 accuracy in percent of the model in
    eval mode (as qlib.metrics measures it), even when it is handed a model left in training mode?"""
    if not callable(fn):
        _call_learner(fn)  # refuses it, saying what to pass
    state, images, labels, expected = _accuracy_data()
    batch_size, learner_model = 256, _seednet_in_training_mode(state)
    torch.manual_seed(0)  # dropout in training mode: the same draw at every check
    got = _read_number(_call_learner(fn, learner_model, images.clone(), labels.clone(), batch_size),
                       "your accuracy")
    if abs(got - expected) < 1e-6:
        return report(True, f"{got:.2f} % on {len(labels)} images, as qlib.metrics measures it in eval mode.")
    problem = f"your function returned {got:.6g} for {len(labels)} images; the model in eval mode scores {expected:.2f} %."
    if abs(100 * got - expected) < 1e-4:
        hint = "that is a fraction; return percent (100 x correct / number of images), as the notebook prints."
    elif learner_model.training:
        hint = ("the model was handed to you in training mode (dropout active, BatchNorm using each batch's "
                "statistics); call model.eval() before predicting.")
    elif any(abs(got - a) < 1e-4 for a in _full_batches_accuracies(_seednet_in_training_mode(state), images, labels,
                                                                    batch_size)):
        hint = (f"that is the accuracy of the full batches only: {len(labels)} images in batches of {batch_size} "
                "end with a partial batch; range(0, len(images), batch_size) covers it.")
    else:
        hint = ("predict with logits.argmax(dim=1) (one class per image), count predictions == labels over all "
                "batches, and divide by the number of images.")
    return report(False, "", problem, hint)


def _full_batches_accuracies(model, images, labels, batch_size) -> tuple[float, float]:
    """The accuracy in percent when the last, partial batch is dropped: over the full batches' images,
    and over all images."""
    full = len(images) // batch_size * batch_size
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, full, batch_size))
    return 100 * correct / full, 100 * correct / len(images)


def _resnet_count(width: int, in_channels: int, num_classes: int) -> int:
    from ..models import parameter_count, resnet18

    return parameter_count(resnet18(num_classes, in_channels, width, small_input=True))


def _resnet_part_counts(width: int, num_classes: int) -> dict[str, int]:
    """The parameters of the parts a count by hand tends to forget."""
    widths = [width, 2 * width, 4 * width, 8 * width]
    bn = 2 * (width + sum(4 * w for w in widths) + sum(widths[1:]))  # stem, 4 per stage, 3 downsamples
    downsample = sum(c_in * c_out + 2 * c_out for c_in, c_out in zip(widths, widths[1:]))
    weights = sum(c_in * c_out for c_in, c_out in zip(widths, widths[1:]))
    return {"bn": bn, "downsample": downsample, "fc_bias": num_classes, "downsample_weights": weights}


@_checker("fn: your function fn(width, in_channels, num_classes), returning one integer")
def check_resnet18_parameter_count(fn) -> bool:
    """Does fn(width, in_channels, num_classes) count the parameters of
    resnet18(num_classes, in_channels, width, small_input=True), for several sizes?"""
    for width, in_channels, num_classes in ((16, 1, 10), (4, 3, 7), (64, 3, 1000), (1, 1, 1)):
        expected = _resnet_count(width, in_channels, num_classes)
        got = _read_number(_call_learner(fn, width, in_channels, num_classes),
                           f"for width={width}, in_channels={in_channels}, num_classes={num_classes}, your count",
                           integer=True, hint="a parameter count is a whole number.")
        if got == expected:
            continue
        missing, parts = expected - got, _resnet_part_counts(width, num_classes)
        hints = {
            parts["downsample"]: "you left out the three downsample branches (a 1x1 conv and a BN each, at the "
                                 "first block of stages 2, 3 and 4).",
            parts["bn"]: "you left out BatchNorm's parameters: a weight and a bias per channel (its running "
                         "statistics are buffers, not parameters).",
            parts["fc_bias"]: "you left out the Linear layer's bias (one per class).",
            -8 * parts["downsample_weights"]: "the downsample convolutions are 1x1: c_in x c_out weights each, "
                                              "not 9 x c_in x c_out.",
        }
        hint = hints.get(missing, "count stage by stage: a 3x3 conv has 9 x c_in x c_out weights (no bias), a BN "
                                  "2 x c, each stage two blocks of two conv+BN, the first block of stages 2-4 a "
                                  "1x1 downsample conv+BN, then fc: 8 x width x classes + classes.")
        return report(False, "", f"for width={width}, in_channels={in_channels}, num_classes={num_classes} you "
                      f"counted {got:,}; the model has {expected:,} ({missing:+,} missing).", hint)
    return report(True, "your count equals parameter_count(resnet18(...)) at every size: quadratic in the "
                  "width, about 2,724 x width^2 plus terms linear in it.")


# --------------------------------------------------------------------------------- notebook 04


def _learner_module(cls, *args) -> nn.Module:
    module = _call_learner(cls, *args)
    if not isinstance(module, nn.Module):
        raise _NotYet(f"calling your class returned {_describe(module)}, not an nn.Module.",
                      "define a class that derives from nn.Module and pass the class itself.")
    return module


def _run_quantized(model, x, where: str) -> torch.Tensor:
    """model(x) of a converted model, or a refusal naming the usual cause of its error."""
    try:
        return _call_learner(model, x)
    except _NotYet as refusal:
        text = re.sub(r"\. This could be because.*?(?=\n)", ".", refusal.problem, flags=re.S)  # torch's boilerplate
        if "QuantizedCPU" in text:
            hint = ("a float operation (such as +, torch.add or torch.relu on two tensors) met quantized tensors: "
                    "in int8 every such operation must be a module, e.g. FloatFunctional's add_relu.")
        elif "quantized::" in text or "'CPU' backend" in text:
            hint = ("a quantized layer received a float tensor: a QuantStub must quantize the input before the "
                    "first layer (created in __init__, so that prepare() gives it an observer).")
        else:
            hint = refusal.hint
        raise _NotYet(f"after prepare / calibrate / convert, {where}: {text}", hint) from None


def _quantized(float_model: nn.Module, x: torch.Tensor, engine: str) -> nn.Module:
    """prepare / calibrate on x / convert, with the engine's default qconfig (the learner's forward runs here)."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    model = copy.deepcopy(float_model).eval()
    model.qconfig = get_default_qconfig(engine)
    prepared = prepare(model)
    _call_learner(prepared, x)
    with warnings.catch_warnings():  # an observer the learner's forward never reached: judged by the output
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        return convert(prepared)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


@_checker("cls: your wrapper class, called as cls(module)")
def check_quant_wrapper(cls) -> bool:
    """Does cls(module) behave as torch's QuantWrapper: the same function in float, and after prepare /
    calibrate / convert a float output equal bit for bit to QuantWrapper's?"""
    from torch.ao.quantization import QuantWrapper

    from ..engines import course_engine, engine_active

    torch.manual_seed(1)
    x = torch.randn(16, 1, 8, 8)
    inner = _tiny_net()
    mine = _learner_module(cls, copy.deepcopy(inner)).eval()
    with torch.no_grad():
        float_out = _call_learner(mine, x)
        if not isinstance(float_out, torch.Tensor) or not torch.equal(float_out, inner(x)):
            return report(False, "", f"in float your wrapper returns {_describe(float_out)}, not what the wrapped "
                          "module returns.", "before prepare(), QuantStub and DeQuantStub are identities: "
                          "forward should return dequant(module(quant(x))).")
        engine = course_engine()
        with engine_active(engine):
            theirs = _quantized(QuantWrapper(copy.deepcopy(inner)), x, engine)(x)
            got = _run_quantized(_quantized(mine, x, engine), x, "your wrapper's int8 model fails")
    if isinstance(got, torch.Tensor) and got.is_quantized:
        return report(False, "", f"after convert your wrapper returns a quantized tensor ({got.dtype}).",
                      "a DeQuantStub must turn the int8 output back into floats at the end of forward.")
    if not isinstance(got, torch.Tensor) or not torch.equal(got, theirs):
        return report(False, "", f"after convert your wrapper returns {_describe(got)}, which is not what "
                      "QuantWrapper's int8 model returns.", "forward: quantize the input, run the module, "
                      "dequantize the output; each stub created once in __init__.")
    return report(True, f"after prepare / calibrate / convert ({engine}) your wrapper gives QuantWrapper's output "
                  "bit for bit.")


class _TwiceShared(nn.Module):
    """A model that calls one Sequential (and so each module inside it) twice, and its head once."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


def _called_more_than_once(model: nn.Module, x: torch.Tensor) -> set[str]:
    counts, handles = {}, []
    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(
            name, counts.get(name, 0) + 1)))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return {name for name, count in counts.items() if count > 1}


def _shared_cases():
    """(label, model, x), built one at a time: a function that fails on the first costs one model."""
    from ..models import resnet18

    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    yield "the plain ResNet-18 (width 4)", resnet18(10, 1, 4, True, False).eval(), x
    yield "the quantizable ResNet-18 (width 4)", resnet18(10, 1, 4, True, True).eval(), x
    yield "a model that calls one Sequential twice", _TwiceShared().eval(), x[:, :, :8, :8]


def _read_names(value, label: str) -> set[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise _NotYet(f"on {label} your function returned {_describe(value)}; expected a list (or set) of module "
                      "names.", "names as named_modules() gives them, e.g. ['layer1.0.relu'].")
    if not all(isinstance(name, str) for name in value):
        raise _NotYet(f"on {label} your function returned {_describe(value)}, not only strings.",
                      "return the names (from model.named_modules()), not the modules.")
    return set(value)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@_checker("fn: your function fn(model, x), returning a list of module names")
def check_shared_modules(fn) -> bool:
    """Does fn(model, x) name exactly the modules whose forward runs more than once in model(x), and
    leave no hook behind?"""
    if not callable(fn):
        _call_learner(fn)  # refuses it, saying what to pass
    for label, model, x in _shared_cases():
        expected = _called_more_than_once(copy.deepcopy(model), x)
        theirs = copy.deepcopy(model)
        got = _read_names(_call_learner(fn, theirs, x.clone()), label)
        if got != expected:
            extra, missing = sorted(got - expected), sorted(expected - got)
            said = "; ".join(part for part in (f"it should not name {extra[:3]}" if extra else "",
                                               f"it misses {missing[:3]}" if missing else "") if part)
            hint = ("count calls per module object with a forward hook on each module of named_modules(), and keep "
                    "the names whose count is above 1.")
            if extra and not missing:
                hint = "keep only the modules called more than once (a count of 1 is the normal case)."
            return report(False, "", f"on {label} your function returned {sorted(got)}: {said}.", hint)
        if _hooks_left(theirs):
            return report(False, "", f"on {label} your answer is right, but {_hooks_left(theirs)} hooks are still "
                          "attached to the model afterwards.", "register_forward_hook returns a handle: call "
                          "handle.remove() on each once the forward pass is done, or the hooks run forever.")
    return report(True, "your hooks find the shared ReLU of each plain block, nothing in the quantizable ResNet, "
                  "and every module of a Sequential called twice.")


def _block_cases():
    def downsample():
        return nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))

    torch.manual_seed(0)
    return [("a block with a downsample (4 -> 8 channels, stride 2)", (4, 8, 2, downsample()), torch.randn(8, 4, 12, 12)),
            ("a block without downsample (8 channels)", (8, 8, 1, None), torch.randn(8, 8, 6, 6))]


def _fused(block: nn.Module) -> nn.Module:
    from torch.ao.quantization import fuse_modules

    groups = [["conv1", "bn1", "relu1"], ["conv2", "bn2"]]
    if block.downsample is not None:
        groups.append(["downsample.0", "downsample.1"])
    return fuse_modules(copy.deepcopy(block).eval(), groups, inplace=False)


@_checker("cls: your block class, called as cls(c_in, c_out, stride, downsample)")
def check_quantizable_block(cls) -> bool:
    """Is cls a quantizable BasicBlock: in float equal to BasicBlock bit for bit, still right after
    fuse_modules, and after prepare / calibrate / convert equal bit for bit to qlib's QuantizableBasicBlock?"""
    from torch.ao.quantization import QuantWrapper

    from ..engines import course_engine, engine_active
    from ..models import BasicBlock, QuantizableBasicBlock

    engine = course_engine()
    for label, args, x in _block_cases():
        plain = _bn_randomised(BasicBlock(*args))
        reference = QuantizableBasicBlock(*args[:3], copy.deepcopy(args[3]))
        reference.load_state_dict(plain.state_dict())
        mine = _learner_module(cls, *args[:3], copy.deepcopy(args[3]))
        missing = [name for name in ("relu1", "skip_add") if not hasattr(mine, name)]
        if missing:
            raise _NotYet(f"your block has no {missing}.", "keep the __init__ given in the notebook.")
        try:
            mine.load_state_dict(plain.state_dict())
        except RuntimeError as error:
            raise _NotYet(f"BasicBlock's weights do not load into your block ({str(error).splitlines()[0]})",
                          "keep the __init__ given in the notebook: the edits add no parameters.") from None
        mine.eval(), reference.eval()
        with torch.no_grad():
            want = plain(x.clone())
            got = _call_learner(mine, x.clone())
            if not isinstance(got, torch.Tensor) or not torch.equal(got, want):
                hint = ("the float block computes relu(bn2(conv2(relu(bn1(conv1(x))))) + identity), identity being "
                        "downsample(x) when there is a downsample.")
                if isinstance(got, torch.Tensor) and got.shape == want.shape and (got < 0).any():
                    hint = "its output has negative values: the final ReLU (after the add) is missing."
                return report(False, "", f"on {label}, in float your block returns {_describe(got)}, not what "
                              "BasicBlock returns.", hint)
            fused_got = _call_learner(_fused(mine), x.clone())
            if not torch.equal(fused_got, _fused(reference)(x.clone())):
                hint = "make the add and the final ReLU one call: self.skip_add.add_relu(out, identity)."
                if (fused_got < 0).any():
                    hint = ("after fusion its output has negative values: a ReLU module you use after the add was "
                            "also fused into [conv1, bn1, relu1] and became an Identity. Use each module once: the "
                            "last ReLU belongs in self.skip_add.add_relu(out, identity).")
                return report(False, "", f"on {label}, your block no longer computes BasicBlock's function once "
                              "fuse_modules has folded [conv1, bn1, relu1] and [conv2, bn2].", hint)
            with engine_active(engine):
                theirs = _quantized(QuantWrapper(_fused(reference)), x, engine)(x.clone())
                converted = _quantized(QuantWrapper(_fused(mine)), x, engine)
                got = _run_quantized(converted, x.clone(), "your block fails")
        if not torch.equal(got, theirs):
            zero_points = [m.zero_point for m in converted.modules() if type(m).__name__ == "QFunctional"]
            hint = ("the add and the ReLU must be one FloatFunctional call, self.skip_add.add_relu(out, identity): "
                    "its observer then sees the sum after the ReLU.")
            if any(z != 0 for z in zero_points):
                hint = (f"your sum is requantized with zero point {zero_points[0]}: its observer saw negative values, "
                        "so the ReLU came after it. The add" + hint[len("the add"):])
            return report(False, "", f"on {label}, your block's int8 output ({engine}) differs from the reference "
                          f"block's in {int((got != theirs).sum())} of {got.numel()} values.", hint)
    return report(True, f"your block equals BasicBlock in float, survives fusion, and its int8 model ({engine}) "
                  "equals the reference QuantizableBasicBlock's bit for bit.")
