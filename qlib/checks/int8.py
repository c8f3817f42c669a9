"""Notebook 08: the int8 arithmetic written with integers, judged against PyTorch's own kernels.

Five exercises, each a mechanism of the integer path of one layer: the int32 accumulator of one
conv output (Python integers), the float32 requantization of the kernel library that runs a layer
on this machine, the quantized add of the engine, `quantize_multiplier`, and the fixed-point
multiply of Jacob et al. (2018). Each checker feeds the learner's function inputs it builds itself,
including the ones where a plausible mistake changes the integer, and compares with what PyTorch
computes here (torch.equal / int equality); qlib.int8 only picks those inputs and names mistakes.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from .core import _NotYet, _call_learner, _checker, _describe, _read_number, _read_tensor, _require_shape, report

F32 = torch.float32


def _f32(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64).to(F32)


def _quantized_layer(layer, kinds: str):
    """(op, layer) for a converted conv / linear module, or a refusal naming what was passed."""
    import torch.ao.nn.quantized as nnq

    if isinstance(layer, nnq.Conv2d):
        return "conv", layer
    if isinstance(layer, nnq.Linear):
        return "linear", layer
    raise _NotYet(f"the layer is {_describe(layer)}; expected a converted {kinds} (e.g. qmodel.features[3]).",
                  "pass a module of the int8 model, not of the float one.")


def _quantized_input(x_q, what: str) -> torch.Tensor:
    if not (isinstance(x_q, torch.Tensor) and x_q.is_quantized and x_q.qscheme() == torch.per_tensor_affine):
        raise _NotYet(f"{what} is {_describe(x_q)}; expected a quantized tensor (quint8, per-tensor), the layer's "
                      "input as the int8 model computes it.", "e.g. qmodel.features[0](qmodel.quant(images)).")
    return x_q


# --- exercise 1: the int32 accumulator of one conv output, with Python integers -------------------------


def _positions(n: int, oc: int, oh: int, ow: int) -> list[tuple[int, int, int, int]]:
    """Corners (the padding), edges and the middle, for the first and last image and three channels."""
    spots = {(0, 0), (0, ow - 1), (oh - 1, 0), (oh - 1, ow - 1), (oh // 2, ow // 2), (0, ow // 2), (oh // 2, 0)}
    return [(i, c, y, x) for i in sorted({0, n - 1}) for c in sorted({0, oc // 2, oc - 1}) for y, x in sorted(spots)]


@_checker("fn: your function fn(q_x, z_x, q_w, stride, padding, n, oc, oy, ox), returning one integer")
def check_conv_accumulator(fn, conv, x_q) -> bool:
    """Does fn(q_x, z_x, q_w, stride, padding, n, oc, oy, ox) return the int32 accumulator
    sum over (c, ky, kx) of (q_x - z_x) * q_w of output (n, oc, oy, ox) of the int8 conv `conv`
    fed `x_q`? Judged exactly against PyTorch's float64 conv2d of the integers (exact: every
    product and sum is an integer far below 2**53), at corners (padding), edges and the middle.
    """
    _op, conv = _quantized_layer(conv, "Conv2d")
    x_q = _quantized_input(x_q, "x_q")
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise _NotYet("this checker takes a plain conv (groups=1, dilation=1).", "pass qmodel.features[3].")
    weight = conv.weight()
    q_x, z_x, q_w = x_q.int_repr(), int(x_q.q_zero_point()), weight.int_repr()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        w_zero = weight.q_per_channel_zero_points()
    else:
        w_zero = torch.tensor([weight.q_zero_point()])
    if bool((w_zero != 0).any()):
        raise _NotYet("the conv's weights have non-zero zero points; this exercise takes symmetric weights.",
                      "convert with a qconfig whose weights are symmetric (every default one is).")
    stride, padding = tuple(conv.stride), tuple(conv.padding)
    exact = F.conv2d(q_x.double() - z_x, q_w.double(), None, stride, padding).round().to(torch.int64)
    raw = F.conv2d(q_x.double(), q_w.double(), None, stride, padding).round().to(torch.int64)
    zero_padded = F.conv2d(F.pad(q_x.double(), (padding[1], padding[1], padding[0], padding[0])) - z_x,
                           q_w.double(), None, stride).round().to(torch.int64)
    positions = _positions(*exact.shape)
    for position in positions:
        got = _call_learner(fn, q_x, z_x, q_w, stride, padding, *position)
        value = _read_number(got, f"at output {position} (n, oc, oy, ox), your function returned", integer=True,
                             hint="the accumulator is a sum of products of integers: an integer.")
        want = int(exact[position])
        if value == want:
            continue
        if value == int(raw[position]) and want != int(raw[position]):
            hint = f"subtract the input's zero point from every input integer first: (q_x - z_x) with z_x = {z_x}."
        elif value == int(zero_padded[position]):
            hint = ("the padding holds the zero point z_x (real 0), so a tap outside the image adds "
                    "(z_x - z_x) * q_w = 0: skip those taps instead of reading 0 there.")
        elif abs(value - want) < 1 << 16 and (value - want) % 256 == 0:
            hint = ("a uint8 or int8 tensor wrapped around: q_x is uint8, so q_x[...] - z_x stays uint8 in torch. "
                    "Turn each value into a Python int first: int(q_x[n, c, iy, ix]) - z_x.")
        else:
            hint = ("for each input channel c and kernel tap (ky, kx), the input pixel is iy = oy * stride[0] - "
                    "padding[0] + ky (ix likewise); add (int(q_x[n, c, iy, ix]) - z_x) * int(q_w[oc, c, ky, kx]) "
                    "when it lies inside the image.")
        return report(False, "", f"at output {position} (n, oc, oy, ox) your accumulator is {value}; PyTorch's "
                      f"exact sum is {want}.", hint)
    return report(True, f"your accumulators equal the exact integer sums at {len(positions)} outputs, corners "
                  f"(padding) included: each adds {q_w[0].numel()} products (q_x - {z_x}) * q_w; they span "
                  f"[{int(exact.min())}, {int(exact.max())}] over the batch, well inside int32.")


# --- exercise 2: the float32 requantization of the library that runs a layer here -----------------------

REQUANTIZATION_FORMULAS = {
    "fbgemm": "FBGEMM (per-channel weights): ats = f32(in_scale) * f32(w_scale); raw = (f32(acc) + f32(bias) / ats) "
              "* (ats / f32(out_scale)), every step in float32; q = round half to even (torch.round) + out_zero_point, "
              "clamped to [out_zero_point if relu else 0, 255]. (Per-tensor weights: bias * f32(1 / ats) fused "
              "with the add, one rounding.)",
    "qnnpack": "QNNPACK: the bias first becomes an int32, round(f32(bias) * (1 / (f32(w_scale) * f32(in_scale)))), "
               "added to acc; then raw = f32(acc) * ((f32(w_scale) * f32(in_scale)) * (1 / f32(out_scale))) in "
               "float32; q = round half to even + out_zero_point, clamped to [out_zero_point if relu else 0, 255].",
    "onednn": "oneDNN: t = f32(acc) * (f32(in_scale) * f32(w_scale)) (some kernels multiply by the two scales one "
              "after the other), + f32(bias), ReLU in float, * (1 / f32(out_scale)), + f32(out_zero_point) *before* "
              "rounding; then round half to even, clamped to [out_zero_point if relu else 0, 255].",
}


def _formula(library: str) -> str:
    return REQUANTIZATION_FORMULAS.get(library.split()[0], library)


def _weight_constants(layer):
    """(int8 weight, per-channel scales as float64, zero points, per_channel) of a converted layer."""
    weight = layer.weight()
    q_w = weight.int_repr()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return q_w, weight.q_per_channel_scales().double(), weight.q_per_channel_zero_points().long(), True
    out = q_w.shape[0]
    return (q_w, torch.full((out,), weight.q_scale(), dtype=torch.float64),
            torch.full((out,), weight.q_zero_point(), dtype=torch.long), False)


def _accumulators(layer, x_q, engine: str):
    """The int32 accumulators PyTorch's kernel sums for a linear layer here (int16 pairs where this
    CPU's kernel pairs products), and the library qlib.int8's dispatch names for it."""
    from ..int8 import dispatch, integer
    from ..int8.cpu import CpuProfile

    q_w, _w_scale, w_zp, _per_channel = _weight_constants(layer)
    geometry = {"in_channels": q_w.shape[1], "out_channels": q_w.shape[0], "groups": 1}
    q_x = x_q.int_repr()
    arithmetic = dispatch.weighted("linear", engine, CpuProfile.detect(), "exact", geometry,
                                   bool((w_zp == 0).all()))(q_x.reshape(-1, q_x.shape[-1]).shape[0])
    pairs = arithmetic.pairs(q_w.shape[1]) if arithmetic.pairs else None
    return integer.linear_accumulate(q_x, int(x_q.q_zero_point()), q_w, w_zp, pairs), arithmetic.library


def _chosen_accumulators(layer, accs: torch.Tensor, in_s: float, zp: int, relu: bool, engine: str) -> torch.Tensor:
    """What PyTorch's kernel makes of chosen accumulators, with `layer`'s weight scales, bias and output
    scale: a linear layer whose int8 weights are [127, ..., 127, 1] in every row, fed inputs (zero point
    64, values 0..127: no int16 pair can saturate) whose sum (x - 64) * w is exactly each accumulator.
    Returns [len(accs), out_features] integers: row i requantizes accs[i] for every output channel."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    from ..engines import engine_active

    _q_w, w_scale, _w_zp, per_channel = _weight_constants(layer)
    out_features = len(w_scale)
    many = int(accs.abs().max()) // (63 * 127) + 2
    high = torch.div(accs + 64, 127, rounding_mode="floor")
    parts, rest = [], high.clone()
    for _ in range(many):
        parts.append(rest.clamp(-64, 63))
        rest = rest - parts[-1]
    x_int = torch.stack(parts + [accs - 127 * high], 1) + 64
    pattern = torch.tensor([127] * many + [1], dtype=torch.int8).repeat(out_features, 1)
    if per_channel:
        weight = torch._make_per_channel_quantized_tensor(pattern, w_scale, torch.zeros(out_features, dtype=torch.long), 0)
    else:
        weight = torch._make_per_tensor_quantized_tensor(pattern, float(w_scale[0]), 0)
    bias = layer.bias()
    with engine_active(engine), torch.inference_mode():
        chosen = (nniq.LinearReLU if relu else nnq.Linear)(many + 1, out_features)
        chosen.set_weight_bias(weight, None if bias is None else bias.detach().float())
        chosen.scale, chosen.zero_point = float(layer.scale), int(zp)
        x_q = torch._make_per_tensor_quantized_tensor(x_int.to(torch.uint8), in_s, 64)
        return chosen(x_q).int_repr().to(torch.int64)


def _near_ties(in_s: float, w_s: torch.Tensor, bias: torch.Tensor, out_s: float, zp: int, relu: bool,
               channels: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(accumulators, output channels): for a few channels, the accumulators whose requantized value
    lies nearest k + 1/2 for every output k, where float32 and float64, or two orders of the float32
    steps, round to different integers."""
    picked = torch.linspace(0, len(w_s) - 1, min(channels, len(w_s))).round().long()
    ats = in_s * w_s[picked].view(-1, 1)
    k = torch.arange((zp if relu else 0) - zp - 1, 256 - zp, dtype=torch.float64).view(1, -1) + 0.5
    centre = k * out_s / ats - bias.double()[picked].view(-1, 1) / ats
    accs = torch.cat([centre.floor(), centre.ceil()], 1).to(torch.int64)
    channel = picked.view(-1, 1).expand_as(accs)
    keep = accs.abs() < 2 ** 22
    return accs[keep], channel[keep]


def _requantize_variants(acc, oc, in_s, w_s, bias, out_s, zp, relu):
    """The plausible formulas for accumulators `acc` of output channels `oc` (1-D): name -> (integers, hint)."""
    low = zp if relu else 0
    w32, b32 = w_s[oc].to(F32), bias[oc]
    ats = _f32(in_s) * w32

    def done(raw, zp_first=False):
        q = torch.round(raw + zp) if zp_first else torch.round(raw) + zp
        return q.clamp(low, 255).to(torch.int64)

    fbgemm_raw = (acc.to(F32) + b32 / ats) * (ats / _f32(out_s))
    ats_q = w32 * _f32(in_s)
    qnnpack_raw = (acc + torch.round(b32 * (1 / ats_q)).to(torch.int64)).to(F32) * (ats_q * (1 / _f32(out_s)))
    w64, b64 = w_s[oc], bias[oc].double()
    after = "add the output zero point after rounding (oneDNN adds it before; FBGEMM and QNNPACK after)."
    truncated = "round half to even (torch.round or Python's round), do not truncate with int()."
    return {
        "float64": (done((acc.double() + b64 / (in_s * w64)) * (in_s * w64 / out_s)),
                    "every step is float32 in the kernel: make each number a float32 (torch.tensor(v, dtype="
                    "torch.float32)) before you compute with it; Python floats are float64 and round elsewhere."),
        "real units": (done((acc.double() * in_s * w64 + b64) / out_s),
                       "that is the textbook formula in float64; the kernel computes in float32, in its own order."),
        "fbgemm": (done(fbgemm_raw), "that is FBGEMM's formula; this layer runs another library here."),
        "qnnpack": (done(qnnpack_raw), "that is QNNPACK's formula (the bias rounded to int32 first); this layer "
                                       "runs another library here."),
        "zero point first, fbgemm": (done(fbgemm_raw, True), after),
        "zero point first, qnnpack": (done(qnnpack_raw, True), after),
        "truncated, fbgemm": (done(torch.trunc(fbgemm_raw)), truncated),
        "truncated, qnnpack": (done(torch.trunc(qnnpack_raw)), truncated),
        "no bias": (done(acc.to(F32) * (ats / _f32(out_s))), "the layer's bias is part of the sum: add it before "
                    "multiplying (in units of in_scale * w_scale)."),
        "no clamp": ((torch.round(fbgemm_raw) + zp).to(torch.int64),
                     "clamp to [0, 255]; a fused ReLU raises the floor to the output zero point."),
    }


@_checker("fn: your function fn(acc, in_scale, w_scale, bias, out_scale, out_zero_point, relu), returning one "
          "integer")
def check_requantize(fn, layer, x_q, engine: str) -> bool:
    """Does fn(acc, in_scale, w_scale, bias, out_scale, out_zero_point, relu) turn the int32
    accumulator of one output channel of the int8 linear `layer` (converted under `engine`) into
    the integer PyTorch's kernel produces here? Judged exactly against PyTorch three ways: the first
    rows of layer(x_q).int_repr(); then accumulators chosen near the rounding boundaries, which
    PyTorch requantizes with the layer's own constants (see _chosen_accumulators), with the layer's
    output zero point and ReLU and with another zero point (100) and no ReLU. Of those, the learner
    gets the positions where a plausible other formula gives another integer, and some more.
    """
    import torch.ao.nn.quantized as nnq

    from ..engines import engine_active

    if not isinstance(layer, nnq.Linear):
        raise _NotYet(f"the layer is {_describe(layer)}; expected a converted linear layer (e.g. qmodel.classifier[1]).",
                      "pass a module of the int8 model: under engine x86, linear layers always run FBGEMM.")
    x_q = _quantized_input(x_q, "x_q")
    engine = _engine(engine)
    if x_q.dim() != 2 or x_q.shape[1] != layer.weight().shape[1]:
        raise _NotYet(f"x_q has shape {tuple(x_q.shape)}; the layer takes [N, {layer.weight().shape[1]}].",
                      "flatten the features first: torch.flatten(..., 1).")
    with engine_active(engine), torch.inference_mode():
        real_out = layer(x_q[:2]).int_repr().to(torch.int64)
    acc, library = _accumulators(layer, x_q[:2], engine)
    _q_w, w_s, _w_zp, per_channel = _weight_constants(layer)
    bias = torch.zeros(len(w_s)) if layer.bias() is None else layer.bias().detach().float()
    in_s, out_s, zp = float(x_q.q_scale()), float(layer.scale), int(layer.zero_point)
    relu = "ReLU" in type(layer).__name__
    channels = torch.arange(len(w_s)).repeat(len(acc))
    groups = [("the first rows of layer(x_q)", acc.flatten(), channels, real_out.flatten(), zp, relu)]
    for label, group_zp, group_relu in (("chosen accumulators", zp, relu),
                                        ("chosen accumulators, out_zero_point 100, no ReLU", 100, False)):
        accs, oc = _near_ties(in_s, w_s, bias, out_s, group_zp, group_relu)
        out = _chosen_accumulators(layer, accs, in_s, group_zp, group_relu, engine)
        groups.append((label, accs, oc, out[torch.arange(len(accs)), oc], group_zp, group_relu))
    generator = torch.Generator().manual_seed(0)
    calls, gots, wants, variant_values, variant_hints = [], [], [], {}, {}
    for label, accs, oc, expected, group_zp, group_relu in groups:
        variants = _requantize_variants(accs, oc, in_s, w_s, bias, out_s, group_zp, group_relu)
        picked = list(range(len(accs))) if len(accs) <= 200 else torch.randperm(len(accs), generator=generator)[:40].tolist()
        for values, _hint in variants.values():
            differs = (values != expected).nonzero().flatten()
            picked += differs[torch.randperm(len(differs), generator=generator)[:12]].tolist()
        picked = sorted(set(picked))
        for i in picked:
            a, c = int(accs[i]), int(oc[i])
            answer = _call_learner(fn, a, in_s, float(w_s[c]), float(bias[c]), out_s, group_zp, group_relu)
            gots.append(_read_number(answer, f"for acc = {a} (output channel {c}), your function returned",
                                     integer=True, hint="round the float32 value, add the zero point: an integer."))
            calls.append((label, a, c, group_zp, group_relu))
        wants.append(expected[picked])
        for name, (values, hint) in variants.items():
            variant_values.setdefault(name, []).append(values[picked])
            variant_hints[name] = hint
    got, want = torch.tensor(gots), torch.cat(wants)
    if torch.equal(got, want):
        return report(True, f"your requantization gives PyTorch's integers for all {len(calls)} accumulators tried "
                      f"(every kind where another formula rounds differently included): {library} under engine "
                      f"{engine!r}{', per-channel weights' if per_channel else ''}.")
    wrong = (got != want).nonzero().flatten()
    label, a, c, group_zp, group_relu = calls[int(wrong[0])]
    hint = f"this layer runs {library} here. {_formula(library)}"
    for name, values in variant_values.items():
        if name != library.split()[0] and torch.equal(torch.cat(values), got):
            hint = f"{variant_hints[name]} Here: {_formula(library)}"
            break
    return report(False, "", f"{len(wrong)} of {len(calls)} outputs differ from PyTorch's; e.g. {label}: acc = {a}, "
                  f"output channel {c} (out_zero_point {group_zp}, relu {group_relu}): you give "
                  f"{int(got[wrong[0]])}, PyTorch {int(want[wrong[0]])}.", hint)


# --- exercise 3: the quantized add of the engine --------------------------------------------------------

_ADD_LENGTH = 63   # below ATen's vector block (64 uint8 values): every value takes the scalar formula


def _aten_add(a, sa, za, b, sb, zb, s, z, relu, *, float64=False, divide=False):
    """ATen's scalar quantized add, or a plausible other version of it (float64: the textbook
    formula in Python floats; divide: float32, dividing by s instead of multiplying by f32(1 / s))."""
    if float64:
        c = sa * (a.double() - za) + sb * (b.double() - zb)
    else:
        c = _f32(sa) * (a.int() - za).to(F32) + _f32(sb) * (b.int() - zb).to(F32)
    if relu:
        c = c.clamp_min(0)
    if float64:
        q = torch.round(c / s)
    else:
        q = torch.round(c / _f32(s)) if divide else torch.round(c * (1 / _f32(s)))
    return (q + z).clamp(z if relu else 0, 255).to(torch.int64)


def _qnnpack_add(a, sa, za, b, sb, zb, s, z, relu):
    from ..int8 import elementwise

    multipliers = elementwise.qnnpack_add_multipliers(sa, sb, s)
    return elementwise.add_qnnpack(a, za, b, zb, z, relu, *multipliers).to(torch.int64)


def _add_settings():
    """(label, sa, za, sb, zb, s, z, relu): the scales and zero points of the cases."""
    return [
        ("ordinary values", 0.05, 10, 0.03, 128, 0.07, 60, False),
        ("with ReLU (add_relu)", 0.021, 3, 0.034, 70, 0.05, 0, True),
        ("sums beyond the output's range", 0.2, 0, 0.3, 255, 0.01, 128, False),
        ("scales in powers of two (exact halves)", 2.0 ** -5, 7, 2.0 ** -6, 131, 2.0 ** -4, 99, False),
        ("a skip connection's scales", 0.0313, 0, 0.0479, 61, 0.0538, 0, True),
    ]


def _add_cases(engine: str):
    """Each setting's inputs: a 63-value tensor of the pairs where a plausible formula differs from the
    engine's (all 65,536 pairs searched), topped up with random pairs. PyTorch gives the expected values."""
    grid_a, grid_b = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    grid_a, grid_b = grid_a.flatten(), grid_b.flatten()
    generator = torch.Generator().manual_seed(0)
    cases = []
    for label, sa, za, sb, zb, s, z, relu in _add_settings():
        args = (grid_a, sa, za, grid_b, sb, zb, s, z, relu)
        reference = _qnnpack_add(*args) if engine == "qnnpack" else _aten_add(*args)
        others = [_aten_add(*args)] if engine == "qnnpack" else []
        others += [_aten_add(*args, float64=True), _aten_add(*args, divide=True)]
        chosen = []
        for other in others:
            differs = (other != reference).nonzero().flatten()
            chosen += differs[torch.randperm(len(differs), generator=generator)[:12]].tolist()
        chosen = list(dict.fromkeys(chosen))[:_ADD_LENGTH]
        chosen += torch.randint(0, len(grid_a), (_ADD_LENGTH - len(chosen),), generator=generator).tolist()
        index = torch.tensor(chosen)
        cases.append((label, grid_a[index].to(torch.uint8), sa, za, grid_b[index].to(torch.uint8), sb, zb, s, z, relu))
    return cases


def _torch_add(a, sa, za, b, sb, zb, s, z, relu, engine):
    from ..engines import engine_active

    qa = torch._make_per_tensor_quantized_tensor(a, sa, za)
    qb = torch._make_per_tensor_quantized_tensor(b, sb, zb)
    with engine_active(engine):
        out = (torch.ops.quantized.add_relu if relu else torch.ops.quantized.add)(qa, qb, s, z)
    return out.int_repr().to(torch.int64)


ADD_FORMULAS = {
    "aten": "ATen's scalar loop: dequantize each input with two float32 roundings, f32(sa) * f32(qa - za) (likewise "
            "b), add in float32, ReLU (add_relu) in float, then q = round(sum * (1 / f32(s))) + z, clamped to "
            "[0, 255].",
    "qnnpack": "QNNPACK's add is integer: with ra = f32(sa) / f32(s) and rb = f32(sb) / f32(s) (float, at set-up), "
               "shift = 21 - (math.frexp(max(ra, rb))[1] - 1), am = round(ra * 2**shift), bm likewise; then "
               "acc = (qa - za) * am + (qb - zb) * bm in integers, q = acc / 2**shift rounded half away from zero, "
               "+ z, clamped to [z if relu else 0, 255].",
}


@_checker("fn: your function fn(qa, sa, za, qb, sb, zb, s, z, relu), returning an integer tensor shaped like qa")
def check_quantized_add(fn, engine: str) -> bool:
    """Does fn(qa, sa, za, qb, sb, zb, s, z, relu) return the integers of PyTorch's quantized add
    (add_relu when relu) under `engine`, for uint8 tensors qa, qb? Judged with torch.equal against
    torch.ops.quantized.add / add_relu, on 63-value tensors (so that ATen's vector loop, which
    dequantizes with a fused multiply-add, never runs), at the pairs where other formulas differ.
    """
    engine = _engine(engine)
    formula = ADD_FORMULAS["qnnpack" if engine == "qnnpack" else "aten"]
    for label, a, sa, za, b, sb, zb, s, z, relu in _add_cases(engine):
        expected = _torch_add(a, sa, za, b, sb, zb, s, z, relu, engine)
        answer = _call_learner(fn, a.clone(), sa, za, b.clone(), sb, zb, s, z, relu)
        subject = f"on {label}, you returned"
        got = _read_tensor(answer, subject, f"an integer tensor of shape {tuple(a.shape)}", integers=True,
                           hint="round, add the zero point, clamp: integers.")
        _require_shape(got, answer, a.shape, subject, "the add is elementwise: one output per input pair.")
        if got.is_floating_point():
            raise _NotYet(f"{subject} a float tensor ({got.dtype}).", "return integers, e.g. .to(torch.int32) "
                          "after clamping, as .int_repr() would.")
        got = got.to(torch.int64)
        if torch.equal(got, expected):
            continue
        i = int((got != expected).nonzero()[0])
        args = (a, sa, za, b, sb, zb, s, z, relu)
        if engine == "qnnpack" and torch.equal(got, _aten_add(*args)):
            hint = f"that is ATen's float add; under qnnpack PyTorch runs QNNPACK's: {formula}"
        elif torch.equal(got, _aten_add(*args, float64=True)):
            hint = f"float64 rounds elsewhere: compute in float32. {formula}"
        elif torch.equal(got, _aten_add(*args, divide=True)):
            hint = f"the kernel multiplies by the float32 reciprocal 1 / f32(s) instead of dividing. {formula}"
        elif bool(((got < 0) | (got > 255)).any()) or (relu and bool((got < z).any())):
            hint = "clamp to [0, 255] (with ReLU, values below the zero point become the zero point)."
        elif bool(((a.int() - za) < 0).any()) and bool((got != expected).any()):
            hint = (f"q - z on a uint8 tensor wraps around in torch: convert first, qa.int() - za. {formula}")
        else:
            hint = formula
        return report(False, "", f"on {label} (sa={sa:.6g}, za={za}, sb={sb:.6g}, zb={zb}, s={s:.6g}, z={z}): "
                      f"{int((got != expected).sum())} of {len(a)} sums differ; e.g. qa={int(a[i])}, qb={int(b[i])}: "
                      f"you give {int(got[i])}, PyTorch {int(expected[i])}.", hint)
    kernel = "QNNPACK's integer add" if engine == "qnnpack" else "ATen's float32 add (its scalar loop)"
    return report(True, f"your add equals PyTorch's torch.ops.quantized.add / add_relu under engine {engine!r}, "
                  f"{kernel}, on {len(_add_settings())} settings, including every pair where another formula "
                  "rounds differently.")


# --- exercise 4: quantize_multiplier ---------------------------------------------------------------------


def _multiplier_cases() -> list[float]:
    rng = random.Random(0)
    edges = [0.5, 1.0, 0.75, 1.5, 3.0, 2.0 ** -20, 1.0 / 3.0, 0.1, 1 - 2.0 ** -40, 0.5 - 2.0 ** -45, 2.0 ** 5 - 2.0 ** -30,
             0.0009765625, 0.0023456789, 1e-6]
    return edges + [2.0 ** rng.uniform(-24, 3) for _ in range(200)]


@_checker("fn: your function fn(real), returning a pair (m0, shift) of integers")
def check_quantize_multiplier(fn) -> bool:
    """Does fn(real) return (M0, shift) with real = M0 * 2**-31 * 2**-shift rounded, M0 an int32 in
    [2**30, 2**31), as gemmlowp / TFLite / qlib.int8.quantize_multiplier compute it? Exactly, on
    powers of two, values whose rounding carries into the next power of two, and 200 others.
    """
    from ..int8 import fixedpoint

    for real in _multiplier_cases():
        answer = _call_learner(fn, real)
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise _NotYet(f"for real = {real!r} your function returned {_describe(answer)}; expected a pair "
                          "(m0, shift).", "end with `return m0, shift`.")
        m0 = _read_number(answer[0], f"for real = {real!r}, m0", integer=True)
        shift = _read_number(answer[1], f"for real = {real!r}, shift", integer=True)
        want_m0, want_shift = fixedpoint.quantize_multiplier(real)
        if (m0, shift) == (want_m0, want_shift):
            continue
        mantissa, exponent = math.frexp(real)
        if m0 == want_m0 and shift == -want_shift:
            hint = "shift counts the right shifts: real = m0 * 2**-31 * 2**-shift, so shift = -exponent of frexp."
        elif m0 == 1 << 31 or (m0, shift) == (round(mantissa * 2 ** 31), -exponent):
            hint = ("m0 must stay below 2**31 (it is an int32): when rounding gives 2**31, halve it to 2**30 and "
                    "shift one less.")
        elif m0 == int(mantissa * 2 ** 31):
            hint = "round mantissa * 2**31 to the nearest integer (round()), do not truncate (int())."
        elif not (1 << 30) <= m0 < (1 << 31):
            hint = ("write real = mantissa * 2**exponent with mantissa in [0.5, 1) (math.frexp); m0 = mantissa * "
                    "2**31, rounded, lies in [2**30, 2**31).")
        else:
            hint = "m0 = round(mantissa * 2**31) and shift = -exponent, with mantissa, exponent = math.frexp(real)."
        return report(False, "", f"for real = {real!r} you give (m0, shift) = ({m0}, {shift}); expected "
                      f"({want_m0}, {want_shift}), i.e. {want_m0} * 2**-31 * 2**-{want_shift}.", hint)
    return report(True, f"your (m0, shift) equal qlib.int8.quantize_multiplier's (gemmlowp's) for "
                  f"{len(_multiplier_cases())} multipliers, powers of two and carries included; m0 is always an "
                  "int32 in [2**30, 2**31).")


# --- exercise 5: the fixed-point multiply (SRDHM, then a rounding right shift) ---------------------------


def _srdhm_variants(x: int, m0: int) -> dict[str, int]:
    ab = x * m0
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    return {"floor": total // (1 << 31), "float": round(x * m0 / 2.0 ** 31),
            "no nudge": (abs(ab) >> 31) * (1 if ab >= 0 else -1)}


def _rdbpot_cases():
    rng = random.Random(1)
    small = [(x, e) for e in range(6) for x in range(-40, 41)]
    large = [(rng.randint(-2 ** 31, 2 ** 31 - 1), rng.randint(0, 31)) for _ in range(200)]
    return small + large


def _multiply_cases():
    from ..int8 import fixedpoint

    rng = random.Random(2)
    cases = [(x, 1 << 30, shift) for x in range(-9, 10) for shift in (0, 1, 2)]        # SRDHM halves: x / 2
    cases += [(x, (1 << 31) - 1, 0) for x in (-3, -2, -1, 1, 2, 3)]
    for _ in range(300):
        m0, shift = fixedpoint.quantize_multiplier(2.0 ** rng.uniform(-20, -0.01))
        bits = rng.choice((12, 20, 31))
        cases.append((rng.randint(-2 ** bits, 2 ** bits - 1), m0, shift))
    cases += [(2 ** 31 - 1, (1 << 31) - 1, 0), (-2 ** 31, (1 << 31) - 1, 0), (-2 ** 31, 1 << 30, 5)]
    return cases


def _qnnpack_rdbpot_cases():
    """QNNPACK add settings whose accumulators hit exact halves of both signs (power-of-two scale ratios)."""
    generator = torch.Generator().manual_seed(3)
    settings = [(2.0 ** -5, 7, 2.0 ** -6, 131, 2.0 ** -4, 99), (0.05, 10, 0.03, 128, 0.07, 60)]
    out = []
    for sa, za, sb, zb, s, z in settings:
        a = torch.randint(0, 256, (512,), generator=generator, dtype=torch.uint8)
        b = torch.randint(0, 256, (512,), generator=generator, dtype=torch.uint8)
        out.append((a, sa, za, b, sb, zb, s, z))
    return out


def _engine(engine) -> str:
    """`engine` if this torch has it, else a refusal naming the ones it has."""
    from ..engines import check_engine

    try:
        return check_engine(engine)
    except Exception as error:
        raise _NotYet(str(error), "pass engines.course_engine(), the engine the notebook converts under.") from None


def _read_int(value, what: str) -> int:
    return _read_number(value, what, integer=True, hint="integers in, integers out: no float anywhere.")


@_checker("multiply: your function multiply(x, m0, shift); rounding_divide_by_pot: your function "
          "rounding_divide_by_pot(x, exponent); both returning one integer")
def check_fixed_point_multiply(multiply, rounding_divide_by_pot) -> bool:
    """Do the learner's gemmlowp primitives compute what qlib.int8.fixedpoint (gemmlowp's reference)
    does, exactly: rounding_divide_by_pot(x, e) = x / 2**e rounded half away from zero, and
    multiply(x, m0, shift) = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x, m0), shift)?
    rounding_divide_by_pot is also judged against PyTorch: put into QNNPACK's add, it must give
    torch.ops.quantized.add's integers under engine qnnpack (which rounds with it).
    """
    from ..engines import available_engines
    from ..int8 import elementwise, fixedpoint

    cases = _rdbpot_cases()
    got = [_read_int(_call_learner(rounding_divide_by_pot, x, e), f"rounding_divide_by_pot({x}, {e})")
           for x, e in cases]
    want = [int(fixedpoint.rounding_divide_by_pot(torch.tensor(x), e)) for x, e in cases]
    if got != want:
        i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        x, e = cases[i]
        if got == [x >> e for x, e in cases]:
            hint = "x >> e alone rounds down (towards -infinity); add 1 when the remainder is above half."
        elif any(g != w and abs(x / 2 ** e - math.trunc(x / 2 ** e)) == 0.5
                 for g, w, (x, e) in zip(got, want, cases)):
            hint = ("an exact half rounds away from zero: 2.5 -> 3, -2.5 -> -3 (the threshold is (mask >> 1) + 1 "
                    "for negative x, with mask = 2**e - 1 and remainder = x & mask).")
        else:
            hint = "x / 2**e, rounded to the nearest integer, halves away from zero; integers only."
        return report(False, "", f"rounding_divide_by_pot({x}, {e}) gives {got[i]}; expected {want[i]} "
                      f"({x} / 2**{e} = {x / 2 ** e:g}).", hint)
    checked_with_torch = "qnnpack" in available_engines()
    if checked_with_torch:
        for a, sa, za, b, sb, zb, s, z in _qnnpack_rdbpot_cases():
            am, bm, shift = elementwise.qnnpack_add_multipliers(sa, sb, s)
            acc = (a.to(torch.int64) - za) * am + (b.to(torch.int64) - zb) * bm
            rounded = torch.tensor([_read_int(_call_learner(rounding_divide_by_pot, int(v), shift),
                                              f"rounding_divide_by_pot({int(v)}, {shift})") for v in acc])
            mine = (rounded + z).clamp(0, 255)
            theirs = _torch_add(a, sa, za, b, sb, zb, s, z, False, "qnnpack")
            if not torch.equal(mine, theirs):
                i = int((mine != theirs).nonzero()[0])
                return report(False, "", f"inside QNNPACK's add (shift {shift}), your rounding gives {int(mine[i])} "
                              f"for acc = {int(acc[i])}; PyTorch's torch.ops.quantized.add gives {int(theirs[i])}.",
                              "x / 2**e rounded half away from zero, in integers.")
    cases = _multiply_cases()
    got = [_read_int(_call_learner(multiply, x, m0, shift), f"multiply({x}, {m0}, {shift})") for x, m0, shift in cases]
    want = [int(fixedpoint.multiply_by_quantized_multiplier(torch.tensor(x), m0, shift)) for x, m0, shift in cases]
    if got != want:
        i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        x, m0, shift = cases[i]
        variants = {name: [int(fixedpoint.rounding_divide_by_pot(torch.tensor(_srdhm_variants(x, m0)[name]), shift))
                           for x, m0, shift in cases] for name in ("floor", "float", "no nudge")}
        if got == variants["float"]:
            hint = ("x * m0 / 2**31 in float rounds halves to even and loses the low bits of a 62-bit product: stay "
                    "in Python integers.")
        elif got == variants["floor"]:
            hint = ("C++ integer division truncates towards zero, Python's // rounds towards -infinity: for a "
                    "negative total, divide its absolute value and negate.")
        elif got == variants["no nudge"]:
            hint = ("SaturatingRoundingDoublingHighMul rounds: add the nudge 2**30 (1 - 2**30 when x * m0 < 0) "
                    "before dividing by 2**31.")
        else:
            hint = ("high = (x * m0 + nudge) / 2**31 truncated towards zero, nudge = 2**30 if x * m0 >= 0 else "
                    "1 - 2**30; then rounding_divide_by_pot(high, shift).")
        return report(False, "", f"multiply({x}, {m0}, {shift}) gives {got[i]}; expected {want[i]} "
                      f"(x * {m0 / 2 ** 31:.10f} / 2**{shift} = {x * m0 / 2 ** 31 / 2 ** shift:.4f}).", hint)
    torch_part = ("; in QNNPACK's add your rounding gives PyTorch's integers" if checked_with_torch else
                  "; (this torch has no qnnpack engine to compare the rounding with)")
    return report(True, f"your primitives equal gemmlowp's (qlib.int8.fixedpoint) on {len(_rdbpot_cases())} "
                  f"rounding shifts and {len(_multiply_cases())} fixed-point multiplies, exact halves of both signs "
                  f"and 62-bit products included{torch_part}.")
