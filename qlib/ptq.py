"""Eager-mode post-training static quantization in one call, step by step inside.

copy -> eval -> fuse -> a qconfig (the engine's default unless given) -> prepare (observers)
-> calibrate -> convert. The float model passed in is left untouched.

Eager mode only quantizes what it can see: modules. A `QuantStub` marks where float tensors
enter int8, and every tensor operation between quantized layers must be a module too
(`FloatFunctional`), or it has no observer and no int8 kernel: a bare `+` on two quantized
tensors raises "Could not run 'aten::add.out' with arguments from the 'QuantizedCPU' backend"
only when the converted model first runs. `check_quantizable` finds such operations before any
work is done, by tracing the float model with torch.fx.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import re
import warnings
from typing import Iterable, Iterator

import torch
import torch.fx
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QConfig, QuantStub, convert, get_default_qconfig, prepare
from tqdm.auto import tqdm


class NotQuantizableError(TypeError):
    """The model lacks what eager-mode static quantization needs (stubs, FloatFunctional)."""


def available_engines() -> list[str]:
    """The quantized engines this torch build can run (without the placeholder 'none')."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def check_engine(engine: str) -> str:
    if engine not in available_engines():
        raise ValueError(f"Quantized engine {engine!r} is not available in this torch build; "
                         f"choose one of {available_engines()}.")
    return engine


def use_engine(engine: str) -> str:
    """Make `engine` torch's active quantized engine (prepacked weights are engine-specific)."""
    torch.backends.quantized.engine = check_engine(engine)
    return engine


@contextlib.contextmanager
def engine_active(engine: str | None) -> Iterator[str]:
    """Run a block under quantized `engine`, then restore the previous one (None: leave as is)."""
    previous = torch.backends.quantized.engine
    if engine is not None:
        use_engine(engine)
    try:
        yield torch.backends.quantized.engine
    finally:
        torch.backends.quantized.engine = previous


def engine_of(model: nn.Module) -> str | None:
    """The engine a model was converted under (set by quantize_static), None for float models."""
    return getattr(model, "qengine", None)


# --- the quantizability check -------------------------------------------------------------------

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
        for method in ("add", "add_scalar", "mul", "mul_scalar", "cat", "add_relu", "matmul"):
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


# --- the pipeline -----------------------------------------------------------------------------------

def _batches(calibration_data, num_batches: int | None) -> Iterable[torch.Tensor]:
    for index, batch in enumerate(calibration_data):
        if num_batches is not None and index >= num_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(prepared: nn.Module, calibration_data, num_batches: int | None = None,
              progress: bool = True) -> int:
    """Run calibration batches through a prepared model (observers record ranges); returns images seen."""
    seen = 0
    if isinstance(calibration_data, torch.utils.data.Dataset):
        from .data import loader

        calibration_data = loader(calibration_data)
    total = len(calibration_data) if hasattr(calibration_data, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    with torch.inference_mode():
        for x in tqdm(_batches(calibration_data, num_batches), total=total, desc="calibrating",
                      unit="batch", disable=not progress):
            prepared(x)
            seen += len(x)
    if seen == 0:
        raise ValueError("The calibration data yielded no batch: the observers saw nothing, so "
                         "every scale would be meaningless. Pass at least one batch of images.")
    return seen


def prepare_static(model: nn.Module, engine: str = "x86", qconfig: QConfig | None = None,
                   fuse: bool = True, check: bool = True) -> nn.Module:
    """A prepared copy of `model`: eval mode, fused, qconfig set, observers inserted.

    `qconfig` defaults to the engine's own (get_default_qconfig(engine)); pass another one to
    study observer choices (e.g. MinMax vs Histogram, per-tensor vs per-channel weights).
    """
    if check:
        check_quantizable(model)
    check_engine(engine)
    float_copy = copy.deepcopy(model).eval()
    if fuse and hasattr(float_copy, "fuse_model"):
        float_copy.fuse_model()
    float_copy.qconfig = qconfig if qconfig is not None else get_default_qconfig(engine)
    return prepare(float_copy)


def convert_static(prepared: nn.Module, engine: str = "x86") -> nn.Module:
    """convert() a calibrated model under `engine` (a copy: `prepared` can go on calibrating)."""
    use_engine(engine)
    quantized = convert(prepared, inplace=False)
    quantized.qengine = engine
    return quantized.eval()


def quantize_static(model: nn.Module, calibration_data, engine: str = "x86",
                    num_batches: int | None = None, progress: bool = True,
                    qconfig: QConfig | None = None) -> nn.Module:
    """The converted int8 model of a quantizable float `model`, calibrated on `calibration_data`.

    `calibration_data` is a Dataset, a DataLoader, or any iterable of batches (tensors or
    (images, labels) pairs). The engine becomes torch's active quantized engine, since the
    converted model's packed weights only run under it; the result records it as `.qengine`.
    """
    prepared = prepare_static(model, engine, qconfig)
    calibrate(prepared, calibration_data, num_batches, progress)
    return convert_static(prepared, engine)


def quantized_skeleton(model: nn.Module, engine: str = "x86", qconfig: QConfig | None = None) -> nn.Module:
    """A converted model with the right structure and placeholder qparams, to load_state_dict into.

    A saved int8 state dict holds quantized weights and every scale / zero point, but no
    architecture: rebuild it by the same fuse -> prepare -> convert steps, without calibration
    (the observers' "run observer before calculate_qparams" warnings are expected and silenced
    here, since load_state_dict overwrites every value they would give).
    """
    prepared = prepare_static(model, engine, qconfig, check=False)  # the structure of a model already converted once
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        return convert_static(prepared, engine)


def describe_qconfig(qconfig: QConfig) -> dict[str, str]:
    """The activation and weight observers of `qconfig` in one readable line each.

    Built by instantiating each observer and reading back what it will use: class, dtype,
    qscheme, reduce_range and the integer range.
    """
    described = {}
    for role in ("activation", "weight"):
        observer = getattr(qconfig, role)()
        qscheme = str(getattr(observer, "qscheme", "")).replace("torch.", "")
        described[role] = (f"{type(observer).__name__}({str(observer.dtype).replace('torch.', '')}, {qscheme}, "
                           f"reduce_range={getattr(observer, 'reduce_range', False)}, "
                           f"range {observer.quant_min}..{observer.quant_max})")
    return described
