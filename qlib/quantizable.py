"""Can eager mode quantize this model? Found before any work is done, with the line and the fix.

Eager mode only quantizes what it can see: modules. A `QuantStub` marks where float tensors
enter int8 and a `DeQuantStub` where they leave; convert() swaps every layer it knows (Conv2d,
Linear, FloatFunctional...) for its int8 version, which then accepts only quantized tensors. So
three kinds of mistake pass prepare() and calibration in silence and fail only when the
converted model first runs:

- a tensor operation on quantized tensors with no int8 kernel: a bare `+` raises "Could not
  run 'aten::add.out' with arguments from the 'QuantizedCPU' backend" (`FloatFunctional` has
  the module form); a bare `torch.cat` runs but clips every input to the first one's scale;
- a layer on the wrong side of the stubs (after the DeQuantStub, before the QuantStub, or a
  QuantStub that forward never calls): its int8 version gets a float tensor;
- a layer kept in float (`qconfig = None`) that gets a quantized tensor.

`check_quantizable` finds all three by tracing the float model with torch.fx and following
which tensors would be quantized. What has no int8 kernel is a table (`NO_INT8_KERNEL`),
measured on this torch; a test re-measures every entry. Notebook 04.
"""

from __future__ import annotations

import copy
import operator
import re
import warnings
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub
from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

from .errors import NotQuantizableError, QlibError  # noqa: F401 (quantizable.NotQuantizableError)


# The methods of FloatFunctional (and of QFunctional, what convert() makes of it): one list for
# every module that must recognise them (this check, qlib.inspection, qlib.int8's recorder).
FUNCTIONAL_METHODS = ("add", "add_relu", "add_scalar", "mul", "mul_scalar", "cat", "matmul")


class NotCheckedWarning(UserWarning):
    """torch.fx could not trace the model, so only part of the quantizability check ran."""


def _functional(*methods: str) -> str:
    calls = " or ".join(f"`self.op.{m}(...)`" for m in methods)
    return f"FloatFunctional: `self.op = FloatFunctional()` in __init__, then {calls} in forward"


_IN_FLOAT = "a DeQuantStub before it and a QuantStub after it, so that it runs in float"
_NO_KERNEL = ("It has no int8 kernel, so the converted model would fail with \"Could not run ... with "
              "arguments from the 'QuantizedCPU' backend\".")
_CLIPS = ("It runs, but its result takes the first input's scale and zero point, so every other input "
          "is clipped to that range: an accuracy loss that torch only warns about at run time.")
_ADD = _functional("add", "add_relu", "add_scalar") + " (`add_relu` when a ReLU follows)"
_MUL = _functional("mul", "mul_scalar")
_MATMUL = _functional("matmul")
_CAT = _functional("cat") + ", which observes the joined range and requantizes every input to it"


def _entries(targets, fix, why=_NO_KERNEL):
    return {target: (symbol, fix, why) for target, symbol in targets.items()}


# What quantized tensors cannot go through, as fx records it: a function object (call_function)
# or a method name (call_method) -> (how it is written, the fix, what goes wrong).
NO_INT8_KERNEL: dict[object, tuple[str, str, str]] = {
    **_entries({operator.add: "+", operator.iadd: "+=", torch.add: "torch.add", "add": ".add()",
                "add_": ".add_()", operator.sub: "-", operator.isub: "-=", torch.sub: "torch.sub",
                "sub": ".sub()", "sub_": ".sub_()"}, _ADD),
    **_entries({operator.mul: "*", operator.imul: "*=", torch.mul: "torch.mul", "mul": ".mul()",
                "mul_": ".mul_()"}, _MUL),
    **_entries({operator.matmul: "@", torch.matmul: "torch.matmul", "matmul": ".matmul()",
                torch.bmm: "torch.bmm", torch.mm: "torch.mm"}, _MATMUL),
    **_entries({F.linear: "F.linear", F.conv2d: "F.conv2d"},
               "a module (nn.Linear, nn.Conv2d): eager mode quantizes modules, not functions"),
    **_entries({operator.truediv: "/", operator.itruediv: "/=", operator.floordiv: "//", torch.div: "torch.div",
                "div": ".div()", operator.pow: "**", torch.pow: "torch.pow", "pow": ".pow()",
                operator.neg: "unary -", torch.sum: "torch.sum", "sum": ".sum()", torch.exp: "torch.exp",
                "exp": ".exp()", torch.log: "torch.log", "log": ".log()", torch.sqrt: "torch.sqrt",
                "sqrt": ".sqrt()", torch.abs: "torch.abs", "abs": ".abs()", torch.softmax: "torch.softmax",
                F.softmax: "F.softmax", "softmax": ".softmax()", F.log_softmax: "F.log_softmax",
                "log_softmax": ".log_softmax()", F.silu: "F.silu", F.hardswish: "F.hardswish",
                F.layer_norm: "F.layer_norm", torch.amax: "torch.amax", "amax": ".amax()",
                torch.argmax: "torch.argmax", "argmax": ".argmax()", torch.maximum: "torch.maximum",
                torch.where: "torch.where", torch.einsum: "torch.einsum", "var": ".var()",
                "cumsum": ".cumsum()", "prod": ".prod()", "reciprocal": ".reciprocal()",
                "float": ".float()"}, _IN_FLOAT),
    **_entries({torch.cat: "torch.cat", torch.concat: "torch.concat", torch.stack: "torch.stack"}, _CAT, _CLIPS),
}
# Float-only layers that are not in convert()'s mapping, so they stay float and fail on int8 input.
NO_INT8_MODULES = (nn.Softmax, nn.LogSoftmax, nn.SiLU, nn.Mish, nn.Softplus)
# The layers convert() swaps for int8 versions (the stubs are handled on their own).
CONVERTED_MODULES = tuple(t for t in get_default_static_quant_module_mappings() if isinstance(t, type)
                          and t not in (QuantStub, DeQuantStub))
# Results that are Python numbers or metadata, not tensors: arithmetic on them is fine.
_NON_TENSOR_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist", "stride", "q_scale",
                       "q_zero_point"}
_NON_TENSOR_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_quantized"}


@dataclass(frozen=True)
class Problem:
    """One place eager mode would mis-quantize: where, what, why, and the fix."""

    module: str
    what: str
    source: str
    why: str
    fix: str


class _Placeholder(nn.Module):
    """Stands in for one FloatFunctional method while tracing, so fx records a call_module."""

    def forward(self, *args, **kwargs):  # never run: a leaf module during tracing
        raise RuntimeError("tracing placeholder")


class _FloatFunctionalStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        for method in FUNCTIONAL_METHODS:
            self.add_module(method, _Placeholder())


class _StubTracer(torch.fx.Tracer):
    """Keeps the quantization stubs and FloatFunctional stand-ins as leaves, records sources."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, (QuantStub, DeQuantStub, _Placeholder)) or super().is_leaf_module(m, qualified_name)


def _source_line(node: torch.fx.Node) -> str:
    """'file.py:LINE `code`' of the user's code that created `node` (last frame outside torch)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.stack_trace or "")
    user = [f for f in frames if "/torch/" not in f[0] and "site-packages" not in f[0]]
    if not user:
        return "source unknown"
    path, line, code = user[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line} `{code.strip()}`"


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else "(top level)"


def _traced(model: nn.Module) -> tuple[torch.fx.Graph, nn.Module]:
    """The fx graph of a copy of `model` whose FloatFunctionals are placeholders (their own
    internal torch.add is then not mistaken for a bare one)."""
    traced_copy = copy.deepcopy(model)
    for name, module in list(traced_copy.named_modules()):
        if isinstance(module, FloatFunctional) and name:
            parent, _, child = name.rpartition(".")
            setattr(traced_copy.get_submodule(parent) if parent else traced_copy, child,
                    _FloatFunctionalStandIn())
    return _StubTracer().trace(traced_copy), traced_copy


def _quantized_nodes(graph: torch.fx.Graph, traced_copy: nn.Module) -> dict[torch.fx.Node, bool]:
    """Which nodes would hold a quantized tensor: those that depend on a QuantStub's output through
    anything but a DeQuantStub, and are tensors (not sizes or dtypes)."""
    quantized: dict[torch.fx.Node, bool] = {}
    for node in graph.nodes:
        carries = any(quantized.get(n, False) for n in node.all_input_nodes)
        if node.op == "call_module":
            module = traced_copy.get_submodule(node.target)
            if isinstance(module, QuantStub):
                carries = True
            elif isinstance(module, DeQuantStub):
                carries = False
        elif node.op == "call_method" and node.target in _NON_TENSOR_METHODS:
            carries = False
        elif node.op == "call_function" and node.target is getattr and node.args[1] in _NON_TENSOR_ATTRIBUTES:
            carries = False
        elif node.op == "call_function" and node.target is len:
            carries = False
        quantized[node] = carries
    return quantized


def _keeps_float(model: nn.Module, path: str) -> bool:
    """Does the module at `path` stay float? Only if the nearest qconfig set on it or on a parent is
    None, as torch's propagate_qconfig_ decides (prepare_static sets one at the top)."""
    qconfig, module = "unset", model
    for part in [""] + path.split("."):
        module = module.get_submodule(part) if part else module
        qconfig = getattr(module, "qconfig", qconfig)
    return qconfig is None


def _quantized_inputs(node: torch.fx.Node, quantized) -> int:
    return sum(quantized[n] for n in node.all_input_nodes)


def _op_problems(graph, quantized) -> list[Problem]:
    found = []
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or node.target not in NO_INT8_KERNEL:
            continue
        symbol, fix, why = NO_INT8_KERNEL[node.target]
        needed = 2 if why is _CLIPS else 1  # joining one int8 tensor with float ones is a float op
        if _quantized_inputs(node, quantized) >= needed:
            found.append(Problem(_module_path(node), f"a bare `{symbol}` on quantized tensors",
                                 _source_line(node), why, fix))
    return found


def _layer_problems(graph, quantized, model, traced_copy) -> list[Problem]:
    found = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = traced_copy.get_submodule(node.target)
        path = node.target.rpartition(".")[0] if isinstance(module, _Placeholder) else node.target
        original = model.get_submodule(path)
        gets_int8 = _quantized_inputs(node, quantized) > 0
        converted = isinstance(original, CONVERTED_MODULES) and not _keeps_float(model, path)
        kind = type(original).__name__
        if converted and not gets_int8:
            found.append(Problem(path, f"the {kind} gets a float tensor", _source_line(node),
                                 f"convert() swaps it for an int8 {kind}, which accepts only quantized "
                                 "tensors: it sits after a DeQuantStub, before the QuantStub, or the "
                                 "QuantStub is never called.",
                                 f"move it between the QuantStub and the DeQuantStub, or keep it in float "
                                 f"with `model.{path}.qconfig = None` before preparing"))
        elif gets_int8 and (isinstance(original, NO_INT8_MODULES) or
                            (isinstance(original, CONVERTED_MODULES) and not converted)):
            found.append(Problem(path, f"the float {kind} gets a quantized tensor", _source_line(node),
                                 f"{kind} stays float (no int8 version, or qconfig = None), and float "
                                 "layers cannot read int8 tensors.", _IN_FLOAT))
    return found


def _stub_problems(graph, model) -> list[Problem]:
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    return [Problem(name, "the QuantStub is never called", "forward()",
                    "nothing is quantized there, so the layers after it would get float tensors.",
                    f"call it on the input at the start of forward(): `x = self.{name}(x)`")
            for name, m in model.named_modules() if isinstance(m, QuantStub) and name not in called]


def problems(model: nn.Module) -> list[Problem]:
    """Every place eager mode would mis-quantize `model`, in forward order (stubs first).

    Raises torch.fx's error when the model cannot be traced (data-dependent control flow).
    """
    graph, traced_copy = _traced(model)
    quantized = _quantized_nodes(graph, traced_copy)
    return (_stub_problems(graph, model) + _op_problems(graph, quantized) +
            _layer_problems(graph, quantized, model, traced_copy))


def check_quantizable(model: nn.Module) -> None:
    """Fail early, naming the problem, its line and the fix, on models eager mode would mis-quantize.

    A model fx cannot trace is checked only for the course's plain BasicBlock, with a
    NotCheckedWarning that says so.
    """
    if not isinstance(model, nn.Module):
        raise NotQuantizableError(f"Expected a torch.nn.Module to quantize, got a {type(model).__name__}. "
                                  "Pass the float model itself (e.g. qlib.pretrained.load(...)).")
    if not any(isinstance(m, QuantStub) for m in model.modules()):
        raise NotQuantizableError(
            f"{type(model).__name__} has no QuantStub, so its input would never be quantized. "
            "Add `self.quant = QuantStub()` at the start of forward() and `self.dequant = DeQuantStub()` "
            "at the end, or wrap it: torch.ao.quantization.QuantWrapper(model) "
            "(for the course's ResNet: resnet18(..., quantizable=True)).")
    try:
        found = problems(model)
    except Exception as error:  # untraceable forward (data-dependent control flow): check what we know
        warnings.warn(NotCheckedWarning(
            f"torch.fx could not trace {type(model).__name__} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}), so bare tensor operations and layers on "
            "the wrong side of the stubs were NOT checked; only the course's plain BasicBlock was. "
            "Make forward() traceable (no branching on tensor values) to get the full check."), stacklevel=2)
        found = _plain_blocks(model)
    if found:
        first = found[0]
        others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        course = (" For the course's ResNet, build resnet18(..., quantizable=True) and load the same state dict."
                  if _plain_blocks(model) else "")
        raise NotQuantizableError(
            f"{first.module}: {first.what} at {first.source}{others}. {first.why} Fix: {first.fix}.{course}")


def _plain_blocks(model: nn.Module) -> list[Problem]:
    from .models import BasicBlock, QuantizableBasicBlock

    symbol, fix, why = NO_INT8_KERNEL[operator.iadd]
    return [Problem(name, f"a bare `{symbol}` on quantized tensors",
                    "qlib/models.py BasicBlock.forward `out += identity`", why, fix)
            for name, m in model.named_modules()
            if isinstance(m, BasicBlock) and not isinstance(m, QuantizableBasicBlock)]
