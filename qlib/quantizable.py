"""Can eager mode quantize this model? Found before any work is done, with the line and the fix.

Eager mode only quantizes what it can see: modules. A `QuantStub` marks where float tensors
enter int8, and every tensor operation between quantized layers must be a module too
(`FloatFunctional`), or it has no observer and no int8 kernel: a bare `+` on two quantized
tensors raises "Could not run 'aten::add.out' with arguments from the 'QuantizedCPU' backend"
only when the converted model first runs. `check_quantizable` finds such operations by tracing
the float model with torch.fx. Notebook 04.
"""

from __future__ import annotations

import copy
import operator
import re

import torch
import torch.fx
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from .errors import QlibError


# The methods of FloatFunctional (and of QFunctional, what convert() makes of it): one list for
# every module that must recognise them (this check, qlib.inspection, qlib.int8's recorder).
FUNCTIONAL_METHODS = ("add", "add_relu", "add_scalar", "mul", "mul_scalar", "cat", "matmul")


class NotQuantizableError(QlibError, TypeError):
    """The model lacks what eager-mode static quantization needs (stubs, FloatFunctional)."""


# Tensor arithmetic with no quantized kernel: written with an operator or torch.add/mul/cat on
# quantized tensors, it fails at run time after convert(); FloatFunctional has the module form.
_BARE_FUNCTIONS = {operator.add: "+", operator.iadd: "+=", operator.mul: "*", operator.imul: "*=",
                   operator.sub: "-", operator.isub: "-=", torch.add: "torch.add",
                   torch.mul: "torch.mul", torch.sub: "torch.sub"}
_BARE_METHODS = {"add": ".add()", "add_": ".add_()", "mul": ".mul()", "mul_": ".mul_()",
                 "sub": ".sub()", "sub_": ".sub_()"}
_FIX = {"+": "add", "+=": "add", "torch.add": "add", ".add()": "add", ".add_()": "add",
        "*": "mul", "*=": "mul", "torch.mul": "mul", ".mul()": "mul", ".mul_()": "mul"}
# Results that are Python numbers or metadata, not tensors: arithmetic on them is fine.
_NON_TENSOR_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist", "stride", "q_scale",
                       "q_zero_point"}
_NON_TENSOR_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_quantized"}


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


def bare_tensor_ops(model: nn.Module) -> list[dict]:
    """Operations on quantized tensors that eager mode cannot quantize (a bare `+`, torch.mul...).

    The float model is traced with torch.fx (a copy, with each FloatFunctional replaced by
    placeholders so that its own internal torch.add is not mistaken for a bare one). A node
    carries a quantized tensor when it depends on a QuantStub's output through anything but a
    DeQuantStub; arithmetic on such a node is reported with the module and source line it comes
    from. Raises torch.fx's error when the model cannot be traced (data-dependent control flow).
    """
    traced_copy = copy.deepcopy(model)
    for name, module in list(traced_copy.named_modules()):
        if isinstance(module, FloatFunctional) and name:
            parent, _, child = name.rpartition(".")
            setattr(traced_copy.get_submodule(parent) if parent else traced_copy, child,
                    _FloatFunctionalStandIn())
    graph = _StubTracer().trace(traced_copy)
    quantized: dict[torch.fx.Node, bool] = {}
    found = []
    for node in graph.nodes:
        inputs = [n for n in node.all_input_nodes]
        carries = any(quantized.get(n, False) for n in inputs)
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
        if not carries:
            continue
        symbol = (_BARE_FUNCTIONS.get(node.target) if node.op == "call_function" else
                  _BARE_METHODS.get(node.target) if node.op == "call_method" else None)
        if symbol is not None:
            found.append(dict(module=_module_path(node), op=symbol, source=_source_line(node),
                              fix=_FIX.get(symbol)))
    return found


def check_quantizable(model: nn.Module) -> None:
    """Fail early, naming the problem and the fix, on models eager mode would mis-quantize."""
    if not any(isinstance(m, QuantStub) for m in model.modules()):
        raise NotQuantizableError(
            f"{type(model).__name__} has no QuantStub, so its input would never be quantized. "
            "Add `self.quant = QuantStub()` at the start of forward() and `self.dequant = DeQuantStub()` "
            "at the end, or wrap it: torch.ao.quantization.QuantWrapper(model) "
            "(for the course's ResNet: resnet18(..., quantizable=True)).")
    try:
        found = bare_tensor_ops(model)
    except Exception:  # untraceable forward (data-dependent control flow): check what we know
        found = _plain_blocks(model)
    if found:
        first = found[0]
        others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        if first["fix"]:
            fix = (f"FloatFunctional: `self.skip_add = FloatFunctional()` in __init__, then "
                   f"`self.skip_add.{first['fix']}(a, b)` (`.add_relu(a, b)` when a ReLU follows)")
            symptom = f"\"Could not run 'aten::{first['fix']}.out' with arguments from the 'QuantizedCPU' backend\""
        else:
            fix = "a DeQuantStub before it and a QuantStub after it (the op then runs in float)"
            symptom = "a 'QuantizedCPU' backend error"
        raise NotQuantizableError(
            f"{first['module']} applies a bare `{first['op']}` to quantized tensors at "
            f"{first['source']}{others}. It has no observer and no int8 kernel, so the converted "
            f"model would fail with {symptom}. Replace it with {fix}; for the course's ResNet, "
            "build resnet18(..., quantizable=True) and load the same state dict.")


def _plain_blocks(model: nn.Module) -> list[dict]:
    from .models import BasicBlock, QuantizableBasicBlock

    return [dict(module=name, op="+=", source="qlib/models.py BasicBlock.forward `out += identity`",
                 fix="add") for name, m in model.named_modules()
            if isinstance(m, BasicBlock) and not isinstance(m, QuantizableBasicBlock)]
