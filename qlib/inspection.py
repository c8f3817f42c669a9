"""Read a converted int8 model: every layer's activation and weight quantization parameters.

A converted module stores the scale and zero point of its OUTPUT (`model.features[0].scale`, as
the forum answer says); its input's are those of whatever produced the input, which the module
itself does not know. `qparams_table` therefore runs one sample through the model with hooks and
records the qparams of the tensors each module actually receives and returns. `parse_printout`
reads a printed model (the forum's) into the same terms, the weights' qscheme of its Linear lines
included; `requantizations` lists the modules that round their result back to int8 (what fusion
saves). Notebook 07 (the forum's printout and its second question).
"""

from __future__ import annotations

import io
import re
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.ao.nn.quantized import Quantize

from .engines import engine_active, engine_of
from .errors import BadInputError, QlibError, kind_of
from .recorder import recording
from .stages import check_converted


def is_quantized_module(module: nn.Module) -> bool:
    """True for the modules convert() puts in (torch.ao.nn.quantized and its intrinsic fusions)."""
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))


def _qparams(tensor: Any) -> tuple[float, int] | None:
    if isinstance(tensor, torch.Tensor) and tensor.is_quantized and tensor.qscheme() in (
            torch.per_tensor_affine, torch.per_tensor_symmetric):
        return float(tensor.q_scale()), int(tensor.q_zero_point())
    return None


def _weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    weight = weight() if callable(weight) else weight
    return weight if isinstance(weight, torch.Tensor) and weight.is_quantized else None


def _stored_output_qparams(module: nn.Module) -> tuple[float, int] | None:
    scale, zero_point = getattr(module, "scale", None), getattr(module, "zero_point", None)
    if scale is None or zero_point is None:
        return None
    return float(torch.as_tensor(scale).reshape(-1)[0]), int(torch.as_tensor(zero_point).reshape(-1)[0])


def trace_qparams(qmodel: nn.Module, sample: torch.Tensor) -> dict[str, dict]:
    """Run `sample` through `qmodel`, recording each quantized module's inputs' and output's qparams
    (qlib.recorder: forward hooks, and a QFunctional's methods, through which it is called).
    Returns {module path: {"order", "inputs": [(scale, zp) or None...], "output": (scale, zp)}}.
    """
    check_converted(qmodel, "trace_qparams")
    return _trace(qmodel, sample, "trace_qparams", "")


def _trace(qmodel: nn.Module, sample: Any, what: str, origin: str) -> dict[str, dict]:
    """trace_qparams on a checked model; a sample the model refuses becomes one BadInputError."""
    if not isinstance(sample, torch.Tensor):
        raise BadInputError(f"{what} runs one sample through the model to see which qparams each module "
                            f"receives; sample must be a float32 tensor the model accepts, not {kind_of(sample)}. "
                            "Pass one input of the model's data, e.g. images[:1].")
    paths = [name for name, module in qmodel.named_modules() if is_quantized_module(module)]
    try:
        with recording(qmodel, paths) as rec, engine_active(engine_of(qmodel)), torch.inference_mode():
            qmodel(sample)
    except QlibError:
        raise
    except (RuntimeError, ValueError) as error:
        raise BadInputError(f"{what} ran the model on {origin or 'sample, '}{kind_of(sample)}, and the model "
                            f"refused it ({type(error).__name__}: {str(error).splitlines()[0][:300]}). Pass "
                            "sample=, one input the model accepts (e.g. images[:1] of the data it was "
                            "calibrated on).") from error
    seen: dict[str, dict] = {}
    for call in rec.calls:
        if call.path not in seen:
            inputs = call.args[0] if call.method == "cat" else call.args
            seen[call.path] = dict(order=len(seen), inputs=[_qparams(t) for t in inputs], output=_qparams(call.output))
    return seen


def default_sample(qmodel: nn.Module) -> tuple[torch.Tensor, str]:
    """One zero input shaped for `qmodel`, read off its first conv or linear layer: [1, C, 28, 28]
    (the course's image size) for a conv with C input channels, [1, F] for a linear layer with F
    input features; and a description of where it came from for messages."""
    for name, module in qmodel.named_modules():
        if is_quantized_module(module) and isinstance(getattr(module, "in_channels", None), int):
            return (torch.zeros(1, module.in_channels, 28, 28),
                    f"a default sample derived from its first conv ({name}: {module.in_channels} input channels, "
                    "28x28 as the course's images), ")
        if is_quantized_module(module) and isinstance(getattr(module, "in_features", None), int):
            return (torch.zeros(1, module.in_features),
                    f"a default sample derived from its first linear layer ({name}: {module.in_features} "
                    "input features), ")
    raise BadInputError(f"qparams_table cannot derive a sample for this {type(qmodel).__name__}: it has no "
                        "quantized conv or linear layer to read the input's shape from. Pass sample=, one input "
                        "the model accepts (e.g. images[:1]).")


def qparams_table(qmodel: nn.Module, sample: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per quantized module, in execution order: activation and weight qparams.

    Columns: module (path), type (m._get_name(), as the printout shows it), in_scale /
    in_zero_point (the tensor it received; in2_* for a second operand, e.g. the skip of an add),
    out_scale / out_zero_point (stored on the module where it has them, else measured),
    weight_dtype, weight_qscheme, weight_scale_min / weight_scale_max (equal for per-tensor),
    weight_channels (number of per-channel scales, 1 for per-tensor). The qparams do not depend on
    the sample's values, only on which tensors flow where: `sample` defaults to one zero input
    shaped from the model's first conv ([1, in_channels, 28, 28], the course's image size) or
    linear layer ([1, in_features]); pass one where that shape is not the model's (other image sizes).
    """
    check_converted(qmodel, "qparams_table")
    origin = ""
    if sample is None:
        sample, origin = default_sample(qmodel)
    traced = _trace(qmodel, sample, "qparams_table", origin)
    rows = []
    quantized_names = [name for name, m in qmodel.named_modules() if is_quantized_module(m)]
    for name, module in qmodel.named_modules():
        if not is_quantized_module(module) or any(name.startswith(f"{other}.") for other in quantized_names):
            continue  # internals such as a Linear's _packed_params belong to their parent's row
        info = traced.get(name, dict(order=len(traced) + len(rows), inputs=[], output=None))
        inputs = [q for q in info["inputs"]] + [None, None]
        output = _stored_output_qparams(module) or info["output"]
        weight = _weight(module)
        row = dict(module=name, type=module._get_name(), order=info["order"],
                   in_scale=inputs[0][0] if inputs[0] else None,
                   in_zero_point=inputs[0][1] if inputs[0] else None,
                   in2_scale=inputs[1][0] if inputs[1] else None,
                   in2_zero_point=inputs[1][1] if inputs[1] else None,
                   out_scale=output[0] if output else None,
                   out_zero_point=output[1] if output else None,
                   weight_dtype=None, weight_qscheme=None, weight_scale_min=None,
                   weight_scale_max=None, weight_channels=None)
        if weight is not None:
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                                    torch.per_channel_affine_float_qparams):
                scales = weight.q_per_channel_scales()
            else:
                scales = torch.tensor([weight.q_scale()], dtype=torch.float64)
            row.update(weight_dtype=str(weight.dtype).replace("torch.", ""),
                       weight_qscheme=str(weight.qscheme()).replace("torch.", ""),
                       weight_scale_min=float(scales.min()), weight_scale_max=float(scales.max()),
                       weight_channels=len(scales))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("order", kind="stable").drop(columns="order")
    table = table.set_index("module")
    for column in ("in_zero_point", "in2_zero_point", "out_zero_point", "weight_channels"):
        table[column] = table[column].astype("Int64")  # integers, with <NA> where not applicable
    # Columns no module filled (e.g. no second operands in SeedNet) would only add noise.
    return table.dropna(axis=1, how="all")


def size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict serialised with torch.save (what a checkpoint file weighs)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


_LINE = re.compile(r"^(?P<indent>\s*)\((?P<key>[^)]+)\): (?P<type>\w+)\((?P<args>.*)$")
_NUMBER = r"(?:tensor\(\[)?([-+0-9.eE]+)"
_QSCHEME = r"\bqscheme=(?:torch\.)?(\w+)"


def parse_printout(text: str) -> pd.DataFrame:
    """The modules of a printed model (`print(model)`, e.g. pasted from a forum) as a table.

    One row per `(name): Type(...)` line: its dotted path (from the indentation: two spaces per
    level, as torch prints), type, the scale / zero point written on the line, if any, and the
    qscheme a quantized Linear prints (its WEIGHT's scheme: per_tensor_affine or per_channel_affine,
    the one clue a printout gives to the qconfig's weight observer; convs print none).
    """
    rows, stack = [], []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:  # a module whose extra_repr spans lines (QFunctional prints its scale below)
            if rows and rows[-1]["scale"] is None and (scale := re.search(r"\bscale=" + _NUMBER, line)):
                zero_point = re.search(r"\bzero_point=" + _NUMBER, line)
                rows[-1].update(scale=float(scale[1]), zero_point=int(float(zero_point[1])) if zero_point else None)
            continue
        depth = max(len(match["indent"]) // 2 - 1, 0)
        stack = stack[:depth] + [match["key"]]
        scale = re.search(r"\bscale=" + _NUMBER, match["args"])
        zero_point = re.search(r"\bzero_point=" + _NUMBER, match["args"])
        qscheme = re.search(_QSCHEME, match["args"])
        rows.append(dict(module=".".join(stack), type=match["type"],
                         scale=float(scale[1]) if scale else None,
                         zero_point=int(float(zero_point[1])) if zero_point else None,
                         qscheme=qscheme[1] if qscheme else None))
    table = pd.DataFrame(rows, columns=["module", "type", "scale", "zero_point", "qscheme"]).set_index("module")
    table["zero_point"] = table["zero_point"].astype("Int64")
    return table


def requantizations(qmodel: nn.Module) -> dict[str, str]:
    """{path: type} of the modules that REQUANTIZE: they compute a new value (an int32 sum, or a
    float sum for an add), then round it to int8 with their own stored output scale and zero point.

    That is every quantized module with a stored scale / zero point except Quantize (which
    quantizes a float input: a first quantization, not a re-). Quantized ReLU, Dropout, pooling,
    flatten and DeQuantize keep the qparams of what they receive, so they are not counted; an
    unfused BatchNorm2d is (it requantizes, which fusion saves). Notebook 07, "fusion or not".
    """
    check_converted(qmodel, "requantizations")
    return {name: module._get_name() for name, module in qmodel.named_modules()
            if is_quantized_module(module) and not isinstance(module, Quantize)
            and _stored_output_qparams(module) is not None}
