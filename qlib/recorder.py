"""What a model's layers compute, in order, with their inputs and outputs: the course's one recorder.

On a converted model it records every quantized op PyTorch runs: it hooks the modules that have
their own int8 kernel (Quantize, conv, linear, ...), wraps the methods of each QFunctional (add,
cat, ...), and watches every other torch function called on an int8 activation (F.relu inside a
ReLU module, F.adaptive_avg_pool2d in a forward). Given `paths`, it records those submodules
instead, float ones included (what the observers of notebook 02 see). Users: qlib.activations,
qlib.inspection (every layer's qparams), qlib.int8 (PyTorch's side of every comparison; its
interpreter names its own ops with the same `op_key`, so the two sides line up key by key).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .quantizable import FUNCTIONAL_METHODS

# Quantized modules whose forward is one op of their own (nnq.Dropout only passes its input on).
KERNEL_MODULES = tuple(m for space in (nnq, nniq) for m in vars(space).values()
                       if isinstance(m, type) and issubclass(m, nn.Module)
                       and m not in (nnq.Dropout, nnq.FloatFunctional, nnq.FXFloatFunctional))
# Functions a forward() may call on an int8 activation that move data and compute nothing.
GLUE = {"flatten", "reshape", "view", "view_as", "squeeze", "unsqueeze", "contiguous", "size", "dim",
        "numel", "__get__", "__len__", "is_contiguous", "stride", "q_scale", "q_zero_point", "int_repr",
        "qscheme", "dequantize", "__repr__", "__format__", "detach", "clone", "transpose", "permute",
        "chunk", "split", "narrow", "__getitem__", "t", "is_quantized", "dtype", "shape", "ndim", "device"}


def has_int8(args, kwargs=None) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_quantized for t in tree_flatten((args, kwargs or {}))[0])


def op_key(stack: list, name: str) -> str:
    """The name of a functional op: its module's path if called by a leaf module (nn.ReLU calling
    F.relu is "layer1.relu"), else "<module path>:<function>"."""
    path, leaf = stack[-1] if stack else ("", False)
    return path if leaf else (f"{path}:{name}" if path else name)


def unique_key(record: dict, key: str) -> str:
    """key, or key#2, key#3... for an op that runs more than once (a module called twice)."""
    candidate, k = key, 1
    while candidate in record:
        k += 1
        candidate = f"{key}#{k}"
    return candidate


@dataclass
class Call:
    """One quantized op as PyTorch ran it."""

    key: str          # unique name, comparable with the interpreter's record
    path: str         # module path
    type: str         # module type, or "function"
    method: str       # "forward", a QFunctional method, or the function's name
    args: tuple
    kwargs: dict
    output: object


@dataclass
class Recording:
    calls: list = field(default_factory=list)
    keys: dict = field(default_factory=dict)

    def add(self, key, path, type_, method, args, kwargs, output) -> None:
        key = unique_key(self.keys, key)
        # (a quantized tensor's plain clone() forgets channels_last; the memory order matters downstream)
        keep = lambda v: v.detach().clone(memory_format=torch.preserve_format) if isinstance(v, torch.Tensor) else (
            [keep(t) for t in v] if isinstance(v, (list, tuple)) else v)
        call = Call(key, path, type_, method, keep(list(args)), dict(kwargs), keep(output))
        self.keys[key] = call
        self.calls.append(call)

    def outputs(self) -> dict:
        """{key: int8 output as int64} for every op whose output is a quantized tensor."""
        return {c.key: c.output.int_repr().to(torch.int64) for c in self.calls
                if isinstance(c.output, torch.Tensor) and c.output.is_quantized}


class _Watch(TorchFunctionMode):
    """Records torch functions called on int8 activations outside kernel modules."""

    def __init__(self, recording: Recording, stack: list, busy: list):
        super().__init__()
        self.recording, self.stack, self.busy = recording, stack, busy

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        if not self.busy and name not in GLUE and has_int8(args, kwargs):
            self.busy.append(1)
            try:
                self.recording.add(op_key(self.stack, name), self.stack[-1][0] if self.stack else "",
                                   "function", name, args, kwargs, out)
            finally:
                self.busy.pop()
        return out


@contextlib.contextmanager
def recording(model: nn.Module, paths=None):
    """Run code on `model` inside this block to record every quantized op it runs, or, given
    `paths`, what those submodules compute (a QFunctional through its methods; float modules too)."""
    rec, stack, busy, handles, patched = Recording(), [], [], [], []
    wanted = None if paths is None else set(paths)
    for path, module in model.named_modules():
        records = isinstance(module, KERNEL_MODULES) if wanted is None else path in wanted
        if records and isinstance(module, nnq.QFunctional):
            for name in FUNCTIONAL_METHODS:
                method = getattr(module, name)

                def wrapped(*args, _method=method, _path=path, _name=name, _m=module, **kwargs):
                    busy.append(1)
                    try:
                        out = _method(*args, **kwargs)
                    finally:
                        busy.pop()
                    rec.add(_path, _path, type(_m).__name__, _name, args, kwargs, out)
                    return out
                setattr(module, name, wrapped)
                patched.append((module, name))
        elif records:
            def hook(m, args, out, _path=path):
                busy.pop()
                rec.add(_path, _path, type(m).__name__, "forward", args, {}, out)
            handles.append(module.register_forward_pre_hook(lambda m, a: busy.append(1)))
            handles.append(module.register_forward_hook(hook))
        else:
            leaf = not list(module.children())
            handles.append(module.register_forward_pre_hook(
                lambda m, a, _p=path, _l=leaf: stack.append((_p, _l))))
            handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))
    try:
        with contextlib.nullcontext() if wanted is not None else _Watch(rec, stack, busy):
            yield rec
    finally:
        for handle in handles:
            handle.remove()
        for module, name in patched:
            delattr(module, name)
