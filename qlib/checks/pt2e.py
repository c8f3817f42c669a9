"""Notebook 11: reading a PT2E converted graph."""

from __future__ import annotations

import math

import torch

from .core import _NotYet, _checker, _describe, _read_number, _read_tensor, _read_zero_point, _require_shape, report


def _graph_quantize_node(converted, tensor: str):
    """The quantize_per_tensor node of a converted PT2E graph that quantizes node `tensor`'s output."""
    if not isinstance(converted, torch.fx.GraphModule):
        raise _NotYet(f"the model is {_describe(converted)}; expected the converted PT2E graph (what convert_pt2e "
                      "returns, a torch.fx.GraphModule).")
    names = {node.name for node in converted.graph.nodes}
    if tensor not in names:
        raise _NotYet(f"the graph has no node named {tensor!r}.", "node names are those of converted.graph.nodes "
                      "(print(converted.graph) lists them), e.g. 'relu'.")
    for node in converted.graph.nodes:
        if (node.op == "call_function" and str(node.target).startswith("quantized_decomposed.quantize_per_tensor")
                and isinstance(node.args[0], torch.fx.Node) and node.args[0].name == tensor):
            return node
    raise _NotYet(f"the graph does not quantize the output of {tensor!r}: no quantize_per_tensor reads it.",
                  "pick a node that a quantize_per_tensor node takes as its first argument.")


@_checker("scale: one number; zero_point: one integer")
def check_graph_qparams(scale, zero_point, converted, tensor: str) -> bool:
    """Are (scale, zero_point) what the converted PT2E graph quantizes node `tensor`'s output with?

    convert_pt2e writes them as literal arguments of a quantize_per_tensor node: (input, scale,
    zero_point, quant_min, quant_max, dtype). Judged by value: a scale within 1e-6 (relative) in
    any form, a zero point with an integer value; a non-integer zero point is refused.
    """
    node = _graph_quantize_node(converted, tensor)
    want_scale, want_zero_point = float(node.args[1]), int(node.args[2])
    scale, zero_point = _read_number(scale, "scale"), _read_zero_point(zero_point)
    where = (f"the graph node {node.name} = quantize_per_tensor({tensor}, scale, zero_point, quant_min, quant_max, "
             "dtype)")
    if not math.isclose(scale, want_scale, rel_tol=1e-6):
        return report(False, "", f"{scale:.8g} is not the scale the graph quantizes {tensor!r} with.",
                      f"find the node whose target is quantize_per_tensor and whose args[0] is {tensor!r}; "
                      "its args[1] is the scale.")
    if zero_point != want_zero_point:
        return report(False, "", f"{zero_point} is not the zero point the graph quantizes {tensor!r} with.",
                      f"it is args[2] of {node.name}; after a ReLU it is 0.")
    return report(True, f"{where}: scale {want_scale:.6g}, zero point {want_zero_point}, range "
                  f"{node.args[3]}..{node.args[4]}.")


@_checker("weight: an integer tensor, the int8 weight the graph stores for that layer")
def check_graph_weight(weight, converted, module: str) -> bool:
    """Is `weight` the int8 weight the converted PT2E graph stores for conv / linear `module`?

    convert_pt2e keeps each weight as an int8 constant that a dequantize_per_channel node reads
    right before the conv / linear. Judged with torch.equal on the integer values (any integer
    dtype wide enough for -128..127); floats are refused with the reason.
    """
    from .. import pt2e

    if not isinstance(converted, torch.fx.GraphModule):
        raise _NotYet(f"the model is {_describe(converted)}; expected the converted PT2E graph (what convert_pt2e "
                      "returns, a torch.fx.GraphModule).")
    stored = pt2e.int8_weights(converted)
    if module not in stored:
        raise _NotYet(f"the graph has no conv or linear layer from module {module!r}.",
                      f"modules with an int8 weight: {', '.join(list(stored)[:6])}...")
    want = stored[module][0]
    subject = "weight is"
    got = _read_tensor(weight, subject, f"an int8 tensor of shape {tuple(want.shape)}", integers=True,
                       hint="the graph stores integers: read the int8 constant the dequantize_per_channel node "
                            "reads, not the float weight.")
    _require_shape(got, weight, want.shape, subject, "take the whole constant the dequantize_per_channel node "
                   "reads, not a slice of it.")
    if got.is_floating_point():
        return report(False, "", f"{subject} a float tensor ({got.dtype}): the float weight, or its dequantized "
                      "values, not the int8 integers the graph stores.",
                      "the conv node's args[1] is a dequantize_per_channel node; its args[0] is a get_attr node "
                      "whose target names the int8 constant: getattr(converted, node.target).")
    if torch.equal(got.to(torch.int64), want.to(torch.int64)):
        return report(True, f"the graph stores {module}'s weight as {tuple(want.shape)} int8 values, "
                      f"from {int(want.min())} to {int(want.max())}, with {stored[module][1].numel()} "
                      "per-channel scales.")
    other = [name for name, (w, _s) in stored.items()
             if name != module and w.shape == got.shape and torch.equal(w.to(torch.int64), got.to(torch.int64))]
    hint = (f"that is the weight of {other[0]}: pick the conv2d node whose nn_module_stack ends with {module!r}."
            if other else "read the int8 constant itself (getattr(converted, get_attr_node.target)), not a "
            "requantized copy.")
    differ = int((got.to(torch.int64) != want.to(torch.int64)).sum())
    return report(False, "", f"{differ} of {want.numel()} values differ from the int8 weight the graph stores "
                  f"for {module}.", hint)
