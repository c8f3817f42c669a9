"""The interpreter next to PyTorch: layer by layer, and one output worked out by hand.

`compare_layers` records every quantized op PyTorch runs (recorder.py) and puts the
interpreter's int8 output for the same op beside it. By default each side runs the whole model,
so a difference in one layer is carried into every later one; `teacher_forced=True` feeds every
interpreter op PyTorch's own input instead, so a mismatch names the op whose arithmetic differs.
Notebook 08, sections 2, 3 and 8.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..engines import engine_active
from ..errors import BadInputError, kind_of
from .cpu import CpuProfile
from .interpreter import Interpreter
from .layers import ConvI, WeightedI
from ..recorder import recording


def record_pytorch(qmodel: nn.Module, x: torch.Tensor, engine: str):
    """PyTorch's own run of qmodel on x: (output, recorder.Recording)."""
    with engine_active(engine), torch.inference_mode(), recording(qmodel) as rec:
        out = qmodel(x)
    return out, rec


def _row(key, kind, label, mine, reference):
    if mine is None or mine.shape != reference.shape:
        raise RuntimeError(f"{key}: the interpreter produced no comparable output "
                           f"({None if mine is None else tuple(mine.shape)} vs {tuple(reference.shape)}).")
    diff = (mine.to(torch.int64) - reference).abs()
    return {"layer": key, "type": kind, "kernel": label, "elements": reference.numel(),
            "mismatches": int((diff > 0).sum()), "max_diff": int(diff.max()) if diff.numel() else 0}


def compare_calls(interpreter: Interpreter, calls) -> list[dict]:
    """Teacher forcing: each recorded op re-executed on PyTorch's inputs, its output compared."""
    rows = []
    for call in calls:
        if not (isinstance(call.output, torch.Tensor) and call.output.is_quantized):
            continue
        mine = interpreter.run_op(call)
        rows.append(_row(call.key, call.type, _kernel(interpreter, call.path), mine.int_repr(),
                         call.output.int_repr().to(torch.int64)))
    return rows


def _kernel(interpreter: Interpreter, path: str) -> str:
    try:
        layer = interpreter.model.get_submodule(path) if path else None
    except AttributeError:
        return ""
    return layer.arithmetic.label if isinstance(layer, WeightedI) else ""


def compare_layers(qmodel: nn.Module, x: torch.Tensor, requant: str = "exact", engine: str | None = None,
                   int16_saturation: bool | None = None, cpu: CpuProfile | str | None = None,
                   teacher_forced: bool = False):
    """Per op: the interpreter's int8 output against PyTorch's (a pandas DataFrame with the
    columns layer, type, kernel, elements, mismatches, max_diff)."""
    import pandas as pd

    interpreter = Interpreter(qmodel, requant, engine, int16_saturation, cpu)
    interpreter.check_input(x)
    try:
        _, rec = record_pytorch(qmodel, x, interpreter.engine)
    except (RuntimeError, ValueError):
        interpreter(x)      # PyTorch refused x: the interpreter's layers say what is wrong with it
        raise
    if teacher_forced:
        return pd.DataFrame(compare_calls(interpreter, rec.calls))
    ours = {}
    interpreter(x, record=ours)
    types = {c.key: c.type for c in rec.calls}
    rows = [_row(key, types[key], _kernel(interpreter, key.split("#")[0].split(":")[0]), ours.get(key), reference)
            for key, reference in rec.outputs().items()]
    return pd.DataFrame(rows)


def trace(layer: WeightedI, q_in: torch.Tensor, in_scale: float, in_zp: int, index: tuple) -> dict:
    """One output of a conv / linear layer worked out with Python integers, step by step: the
    numbers a learner can check by hand (acc = sum (x - x_zp) * w, eq. 5 of notebook 08; the real
    value (acc + bias) M + z), then requantized by the kernel the layer follows (its float32 steps).

    q_in: the layer's input integers for one image ([C, H, W] or [features]); index: (oc, y, x)
    for a conv, (o,) for a linear layer.
    """
    import torch.nn.functional as F

    index = _check_trace(layer, q_in, in_scale, in_zp, index)
    oc = index[0]
    w = layer.wq[oc].to(torch.int64)
    if isinstance(layer, ConvI):
        (s_h, s_w), (p_h, p_w), (d_h, d_w) = layer.stride, layer.padding, layer.dilation
        cg, kh, kw = w.shape
        g = oc // (layer.wq.shape[0] // layer.groups)
        x = F.pad(q_in[g * cg:(g + 1) * cg].to(torch.int64), (p_w, p_w, p_h, p_h), value=in_zp)
        y0, x0 = index[1] * s_h, index[2] * s_w
        window = x[:, y0:y0 + d_h * (kh - 1) + 1:d_h, x0:x0 + d_w * (kw - 1) + 1:d_w]
    else:
        window = q_in.to(torch.int64)
    xs, ws = window.flatten().tolist(), (w - int(layer.w_zp[oc])).flatten().tolist()
    acc = sum((a - in_zp) * b for a, b in zip(xs, ws))              # exact integer dot product
    m = in_scale * float(layer.w_scale[oc]) / layer.scale            # the real multiplier, eq. (3)
    bias = 0.0 if layer.bias is None else float(layer.bias[oc]) / (in_scale * float(layer.w_scale[oc]))
    one = slice(oc, oc + 1)
    q = layer.arithmetic.requantize(torch.tensor([[acc]], dtype=torch.int32), in_scale, layer.w_scale[one],
                                    None if layer.bias is None else layer.bias[one], layer.scale,
                                    layer.zero_point, layer.relu, layer.per_channel)
    return {"inputs": len(xs), "acc": acc, "bias / (s_x s_w)": bias, "M = s_x s_w / s_out": m,
            "(acc + bias) M + z": (acc + bias) * m + layer.zero_point, "requantized": int(q)}


def _check_trace(layer, q_in, in_scale, in_zp, index) -> tuple[int, ...]:
    """trace's arguments, or a BadInputError: an index outside the layer's output would read only
    padding and return a meaningless number (0 products) instead of failing."""
    if not isinstance(layer, WeightedI):
        raise BadInputError(f"trace works out one output of an interpreter's conv or linear layer, not "
                            f"{kind_of(layer)}. Pass one of Interpreter(qmodel).model's layers, e.g. "
                            "dict(interpreter.model.named_modules())['features.0'].")
    conv = isinstance(layer, ConvI)
    c = layer.in_channels
    takes = f"[{c}, H, W] (one image's input integers)" if conv else f"[{c}] (one input's integers, flattened)"
    if not isinstance(q_in, torch.Tensor) or q_in.is_quantized or q_in.is_floating_point() or q_in.is_complex():
        raise BadInputError(f"q_in must be the integers of the layer's input, {takes}, not {kind_of(q_in)}. Pass "
                            "the recorded uint8 values (Interpreter(...)(x, record=r): r[path][0]), or "
                            "t.int_repr()[0] of a quantized tensor t.")
    if q_in.dim() != (3 if conv else 1) or q_in.shape[0] != c:
        raise BadInputError(f"q_in has shape {tuple(q_in.shape)}, but {layer.path} ({layer.kind}) takes {takes}. "
                            "Pass one image's integers (q[0] of a batch" + ("" if conv else ", .flatten()ed") + ").")
    if not (isinstance(in_scale, numbers.Real) and not isinstance(in_scale, bool) and math.isfinite(in_scale)
            and in_scale > 0):
        raise BadInputError(f"in_scale={in_scale!r} is not a scale: it must be a positive finite number (the "
                            "scale of the layer's input). Pass the previous layer's .scale (or the QuantStub's).")
    if isinstance(in_zp, bool) or not isinstance(in_zp, numbers.Integral) or not 0 <= in_zp <= 255:
        raise BadInputError(f"in_zp={in_zp!r} is not a zero point of a uint8 activation (an int in [0, 255]). "
                            "Pass the previous layer's .zero_point (or the QuantStub's).")
    out = (layer.wq.shape[0], *layer.out_hw(*q_in.shape[1:])) if conv else (layer.wq.shape[0],)
    names = ("oc", "y", "x") if conv else ("o",)
    valid = ", ".join(f"0 <= {n} < {size}" for n, size in zip(names, out))
    if (not isinstance(index, (tuple, list)) or len(index) != len(out)
            or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in index)):
        raise BadInputError(f"index={index!r} does not name one output of {layer.path} ({layer.kind}): it takes "
                            f"a tuple of {len(out)} int{'s' if len(out) > 1 else ''} ({', '.join(names)}). Pass "
                            f"e.g. index={tuple([0] * len(out))} (valid: {valid}).")
    if not all(0 <= i < size for i, size in zip(index, out)):
        raise BadInputError(f"index={tuple(index)!r} is outside {layer.path}'s output of shape {list(out)} for this "
                            f"input: it would only read padding and return a meaningless number. Pass an index "
                            f"with {valid}.")
    return tuple(int(i) for i in index)


def checked_here(cpu: CpuProfile | None = None) -> bool:
    """Has the course checked the interpreter against PyTorch on this CPU kind (a recording of it
    in data/kernel-recordings, replayed by the test suite)?"""
    from .recordings import recorded_kinds

    return (cpu or CpuProfile.detect()).kind in recorded_kinds()


def claim_exact(mismatches: int, what: str, cpu: CpuProfile | None = None) -> str:
    """The notebooks' bit-exactness claim, true on every CPU: on a CPU kind the course has checked,
    any mismatch is an error; on another kind, the count is reported with how to record that CPU."""
    cpu = cpu or CpuProfile.detect()
    if mismatches == 0:
        return f"{what}: bit-exact on this CPU (kind {cpu.kind!r})."
    if checked_here(cpu):
        raise AssertionError(f"{what}: {mismatches} mismatches on CPU kind {cpu.kind!r}, which the course "
                             "has recordings of: the interpreter is wrong here.")
    return (f"{what}: {mismatches} mismatches on CPU kind {cpu.kind!r}, which the course has no recording "
            "of: its kernels round in ways the interpreter does not know yet. Record this CPU with "
            "`python -m qlib.int8.record DIR` and share the folder.")


ARITHMETIC = {"matmul", "mul", "add", "sub", "div", "rdiv", "round", "sum", "lshift", "rshift", "and", "neg",
              "clamp", "clamp_min", "maximum", "amax", "where"}


def arithmetic_summary(interpreter: Interpreter) -> dict[str, str]:
    """Per layer type, in a few words: which arithmetic ran in integers and which in float32."""
    summary = {}
    for kind, steps in interpreter.arithmetic().items():
        parts = []
        for label, names in (("integer", steps["integer"]), ("float", steps["float"])):
            ops = sorted({n.split(" (")[0] for n in names if n.split(" (")[0] in ARITHMETIC})
            if ops:
                parts.append(f"{label}: {', '.join(ops)}")
        summary[kind] = "; ".join(parts) or "-"
    return summary
