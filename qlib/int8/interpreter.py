"""The Interpreter: a converted model's own forward() followed with integer layers.

`Interpreter(qmodel)` copies the model's module tree (the original is untouched), replacing
every module that has an int8 kernel with the interpreter layer for it (layers.py); parameter-free
float modules (nn.ReLU, nn.MaxPool2d, an empty nn.Sequential) are kept and run their own forward.
While the copy runs, a guard watches every torch function called on an int8 activation: views
run as they are, functions with arithmetic go to their integer form (functional.py), anything
else raises UnsupportedModuleError naming the function and the module that called it. With
requant="fixedpoint" the guard also checks that no layer makes a float tensor.
Notebook 08, section 2.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import dispatch, layers
from .cpu import KINDS, CpuProfile
from .functional import HANDLERS
from .table import LAYERS, WEIGHTED, layer_for  # noqa: F401 (the table, re-exported)
from ..errors import BadInputError, kind_of
from ..stages import check_converted
from ..recorder import GLUE, Call, has_int8, op_key

def engine_of(qmodel: nn.Module, engine: str | None = None, allow_other_engine: bool = False) -> str:
    """The engine whose arithmetic to follow: the one given, else the one qlib.ptq recorded on the
    model (`.qengine`), else torch's active one. An engine given that differs from the recorded one
    is refused unless `allow_other_engine` (a what-if: another engine's arithmetic on these int8
    weights and qparams, which no PyTorch run computes; qlib.int8.replay uses it where this torch
    lacks a recording's engine to pack the weights under)."""
    from .. import engines

    own = engines.engine_of(qmodel)
    if engine is None:
        engine = own if own is not None else torch.backends.quantized.engine
    dispatch.check_engine(engine)
    if not isinstance(allow_other_engine, bool):
        raise BadInputError(f"allow_other_engine={allow_other_engine!r} must be True or False; any other value "
                            "would be read as one of them in silence.")
    if own is not None and engine != own and not allow_other_engine:
        raise BadInputError(
            f"engine={engine!r}, but this model was converted under {own!r} (its .qengine): its weights are "
            f"packed for {own}, its qparams come from {own}'s qconfig, and PyTorch runs it with {own}'s "
            f"kernels and rounding, so {engine}'s arithmetic would silently compute something the model never "
            f"does. Pass engine=None (or engine={own!r}); to compare with another engine, convert the float "
            f"model under it (qlib.ptq.quantize_static(model, data, engine={engine!r})), or, for a what-if on "
            "these int8 weights, pass allow_other_engine=True.")
    return engine


def profile_of(cpu: CpuProfile | str | None, int16_saturation: bool | None = None) -> CpuProfile:
    """A CPU profile from a profile, a kind's name (int8.cpu.KINDS) or None (this machine);
    `int16_saturation` (None, True or False) overrides its int16 pairs (CpuProfile checks it)."""
    if isinstance(cpu, str):
        if cpu not in KINDS:
            raise BadInputError(f"cpu={cpu!r} is not a CPU kind the course knows, so the interpreter cannot tell "
                                f"which kernels it runs. Pass one of {sorted(KINDS)}, an int8.CpuProfile, or "
                                "None for this machine.")
        cpu = KINDS[cpu]
    elif cpu is None:
        cpu = CpuProfile.detect()
    elif not isinstance(cpu, CpuProfile):
        raise BadInputError(f"cpu={cpu!r} ({kind_of(cpu)}) does not describe a CPU: the interpreter needs to "
                            f"know which kernels it runs. Pass one of {sorted(KINDS)}, an int8.CpuProfile, or "
                            "None for this machine.")
    return cpu if int16_saturation is None else cpu.replace(int16_saturation=int16_saturation)


def expected_input(model: nn.Module) -> str:
    """The input a model takes, in words, read off its first conv or linear layer (for messages)."""
    for path, module in model.named_modules():
        if isinstance(module, layers.ConvI):
            return (f"float32 images [N, {module.in_channels}, H, W] ({path} is a conv with "
                    f"{module.in_channels} input channel{'s' if module.in_channels > 1 else ''})")
        if isinstance(module, layers.LinearI):
            return f"float32 inputs that forward() turns into {module.in_features} features ({path} is a linear layer)"
    return "the float32 tensors the model takes"


class _Guard(TorchFunctionMode):
    """Routes torch functions on int8 activations: glue runs, arithmetic goes to its integer form."""

    def __init__(self, interpreter: "Interpreter"):
        super().__init__()
        self.interpreter = interpreter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        layer = layers.current_layer()
        if layer is None and name not in GLUE and has_int8(args, kwargs):
            stack = self.interpreter.stack
            handler = HANDLERS.get(name)
            if handler is None:
                path, kind = stack[-1][0] if stack else "", stack[-1][2] if stack else "?"
                raise layers.UnsupportedModuleError(
                    f"{path or '<model>'} ({kind}).forward calls {name}() on an int8 activation, which the "
                    f"integer interpreter has no kernel for. Supported functions: {', '.join(sorted(HANDLERS))}; "
                    "or move the op after DeQuantStub.")
            with self:
                return handler(self.interpreter.ctx, op_key([s[:2] for s in stack], name), *args, **kwargs)
        result = func(*args, **kwargs)
        if (layer is not None and not layers.is_offline() and isinstance(result, torch.Tensor)
                and not result.is_quantized and name not in GLUE):
            if (self.interpreter.ctx.requant == "fixedpoint" and result.is_floating_point()
                    and not isinstance(layer, (layers.QuantizeI, layers.DeQuantizeI))):
                raise AssertionError(f"{layer.path}: {name}() made a float tensor in fixed-point mode.")
            self.interpreter.steps.setdefault(layer.kind, set()).add((name.strip("_"), str(result.dtype).split(".")[-1]))
        return result


def _copy_tree(module: nn.Module, path: str, leaf, stack: list) -> nn.Module:
    """A shallow copy of `module` whose leaves are replaced by leaf(module, path) (the original
    model is untouched); `stack` tracks (path, is_leaf, type) of the module whose forward runs."""
    replacement = leaf(module, path)
    if replacement is not None:
        return replacement
    clone = copy.copy(module)
    for key, value in list(vars(clone).items()):
        if "hook" in key and isinstance(value, dict):
            setattr(clone, key, OrderedDict())
    clone._modules = OrderedDict((name, _copy_tree(child, f"{path}.{name}" if path else name, leaf, stack))
                                 for name, child in module._modules.items())
    entry = (path, not module._modules, type(module).__name__)
    clone.register_forward_pre_hook(lambda m, args: stack.append(entry))
    clone.register_forward_hook(lambda m, args, out: stack.pop() and None)
    return clone


class Interpreter:
    """A converted model re-executed with integers; call it like the model (float in, float out).

    `engine`: whose arithmetic: the one the model was converted under (the default; another one is
    refused, or with allow_other_engine=True computed as a what-if); `cpu`: which CPU
    kind's (a CpuProfile or a name in int8.cpu.KINDS; default: this machine); `requant`: "exact"
    (PyTorch's float32 requantization) or "fixedpoint" (Jacob et al.'s integer-only one).
    Build it once and call it many times. After a call, `saturation` maps each layer whose int16
    pairs were clipped (CPUs without VNNI) to how many (pair, output channel) sums were.
    """

    def __init__(self, qmodel: nn.Module, requant: str = "exact", engine: str | None = None,
                 int16_saturation: bool | None = None, cpu: CpuProfile | str | None = None,
                 allow_other_engine: bool = False):
        check_converted(qmodel, "The int8 interpreter")
        dispatch.check_requant(requant)
        if qmodel.training:
            raise BadInputError(f"The {type(qmodel).__name__} is in training mode, where Dropout would change "
                                "activations at random; call qmodel.eval() first.")
        self.ctx = layers.Context(engine_of(qmodel, engine, allow_other_engine), profile_of(cpu, int16_saturation),
                                  requant)
        self.stack: list = []
        self.steps: dict = {}   # layer type -> {(torch function, dtype of what it made)}: see arithmetic()
        self.model = _copy_tree(qmodel, "", lambda m, p: layer_for(m, p, self.ctx), self.stack)
        self.expects = expected_input(self.model)

    @property
    def engine(self) -> str:
        return self.ctx.engine

    @property
    def cpu(self) -> CpuProfile:
        return self.ctx.cpu

    @property
    def saturation(self) -> dict:
        return dict(self.ctx.saturation)

    def check_input(self, x) -> None:
        """What the model's QuantStub needs: a float32 tensor without NaN (shapes: each layer checks its own)."""
        if not isinstance(x, torch.Tensor):
            raise BadInputError(f"The interpreter takes {self.expects}, not {kind_of(x)}. Convert it first, e.g. "
                                "torch.as_tensor(x, dtype=torch.float32).")
        if x.dtype != torch.float32:
            raise BadInputError(
                f"The interpreter was given {kind_of(x)}; the model's QuantStub quantizes float32 values with its "
                f"scale and zero point, so it takes {self.expects}. Pass x.float() (raw uint8 pixels scaled "
                "and normalized as the model's training images were, as qlib.data returns them; "
                "x.dequantize() for a quantized tensor).")
        nan = int(torch.isnan(x).sum())
        if nan:
            raise BadInputError(f"The input ({kind_of(x)}) holds {nan} NaN value(s): NaN has no quantized value "
                                "(PyTorch writes an arbitrary integer for it), so the outputs would mean nothing. "
                                "Remove or replace them (torch.nan_to_num) first.")

    def __call__(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        self.check_input(x)
        self.ctx.input_shape = tuple(x.shape)
        self.ctx.record = record
        self.ctx.saturation.clear()
        self.stack.clear()
        try:
            with torch.inference_mode(), _Guard(self):
                return self.model(x)
        finally:
            self.ctx.record = None

    def arithmetic(self) -> dict[str, dict[str, list[str]]]:
        """What the layers computed in the calls so far, by layer type: the torch functions that made
        integer tensors and those that made float ones ({"integer": [...], "float": [...]}), leaving
        out constants computed once per layer (multipliers, tables)."""
        table = {}
        for kind, steps in self.steps.items():
            floats = sorted({f"{n} ({d})" for n, d in steps if d.startswith(("float", "bfloat"))})
            ints = sorted({f"{n} ({d})" for n, d in steps if d.startswith(("int", "uint"))})
            table[kind] = {"integer": ints, "float": floats}
        return table

    def run_op(self, call: Call):
        """One op of PyTorch's recording (recorder.Call) re-executed on PyTorch's own inputs, for a
        teacher-forced comparison: the module at call.path, its QFunctional method, or the torch
        function that module called."""
        module = self.model.get_submodule(call.path) if call.path else self.model
        self.stack.clear()
        self.ctx.record, self.ctx.input_shape = None, None
        with torch.inference_mode(), _Guard(self):
            if call.type == "function":
                if call.method not in HANDLERS:
                    raise layers.UnsupportedModuleError(f"{call.key}: the interpreter has no integer form of "
                                                        f"{call.method}().")
                leaf = call.key.split("#")[0] == call.path
                self.stack.append((call.path, leaf, type(module).__name__))
                return HANDLERS[call.method](self.ctx, op_key([self.stack[-1][:2]], call.method),
                                             *call.args, **call.kwargs)
            if call.method == "forward":
                return module(*call.args, **call.kwargs)
            return getattr(module, call.method)(*call.args, **call.kwargs)


def run(qmodel: nn.Module, x: torch.Tensor, requant: str = "exact", engine: str | None = None,
        int16_saturation: bool | None = None, cpu: CpuProfile | str | None = None,
        allow_other_engine: bool = False) -> torch.Tensor:
    """qmodel(x) recomputed with integer arithmetic: equal bit for bit with requant="exact".

    Run it on the same batch you compare with: the quantized add's scalar tail depends on the
    tensor's size, as it does in PyTorch.
    """
    return Interpreter(qmodel, requant, engine, int16_saturation, cpu, allow_other_engine)(x)
