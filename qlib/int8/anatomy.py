"""The forum's first question, per layer type: which steps are integer, which are float32.

"Does the statically quantized model really do integer-arithmetic-only inference?" The answer
depends on the layer, the engine and the CPU. This module reads it from the interpreter's own
dispatch (int8.dispatch: the decisions that make it bit-exact), not from a list written by hand:
for a layer type, an engine and a CPU kind, which kernel runs and how it

- accumulates: int8 x int8 products summed exactly in int32, or first added two by two into a
  saturating int16 (CPUs without VNNI, section 9 of notebook 08);
- adds the bias: in float32, or rounded to an int32 and added to the accumulator;
- requantizes: float32 multiply and rounding, or the fixed-point multiply of Jacob et al. (2018).

`steps(...)` gives one layer type; `forum_table(...)` the grid a notebook shows (notebook 08,
section 6). Where each kernel lives in PyTorch's, FBGEMM's, QNNPACK's and oneDNN's sources:
`SOURCES`.
"""

from __future__ import annotations

import pandas as pd

from ..errors import BadInputError
from . import dispatch
from .cpu import CpuProfile

# An example layer of each type, in the course models' shapes (SeedNet, the width-16 ResNet).
_CONV = {"stride": (1, 1), "dilation": (1, 1)}
LAYER_TYPES = {
    "first conv (1 channel, 3x3)": ("conv", {**_CONV, "in_channels": 1, "out_channels": 16, "kernel": (3, 3),
                                             "padding": (1, 1), "groups": 1}),
    "conv 3x3": ("conv", {**_CONV, "in_channels": 16, "out_channels": 16, "kernel": (3, 3), "padding": (1, 1),
                          "groups": 1}),
    "conv 1x1": ("conv", {**_CONV, "in_channels": 32, "out_channels": 64, "kernel": (1, 1), "padding": (0, 0),
                          "groups": 1}),
    "depthwise conv 3x3": ("conv", {**_CONV, "in_channels": 16, "out_channels": 16, "kernel": (3, 3),
                                    "padding": (1, 1), "groups": 16}),
    "linear": ("linear", {"in_channels": 128, "out_channels": 10}),
    "add (FloatFunctional)": ("add", None),
    "average pooling": ("avg_pool", None),
    "max pooling": ("max_pool", None),
    "ReLU": ("relu", None),
    "cat": ("cat", None),
}
BATCH, OUT_HW = 8, (14, 14)     # oneDNN picks its kernel per input shape: the course's batches

# What each library does after the accumulator (the formulas: int8.requantize, int8.fixedpoint).
_AFTER_ACCUMULATE = {
    "fbgemm": ("float32, as b / (S1 S2) added to the accumulator", "float32 multiply by M, round half to even, + Z3"),
    "onednn": ("float32, added after scaling to real units", "float32 scales, + bias, ReLU, + Z3, then rounding"),
    "qnnpack": ("int32 (b / (S1 S2) rounded), added to the accumulator", "float32 multiply by M, round half to even, + Z3"),
    "fixedpoint": ("int32 (b / (S1 S2) rounded), added to the accumulator",
                   "fixed point: M0 * 2^-31 * 2^-n (rounding high multiply, rounding shift)"),
}

# Where a learner reads each kernel (paths in each project's repository).
SOURCES = {
    "fbgemm": "PyTorch aten/src/ATen/native/quantized/cpu/qconv.cpp, qlinear.cpp; FBGEMM "
              "include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput)",
    "onednn": "PyTorch aten/src/ATen/native/quantized/cpu/qconv.cpp (PackedConvWeightsOnednn), "
              "OnednnUtils.h; oneDNN src/cpu/x64/ (jit_uni_x8s8s32x_*, brgemm conv kernels)",
    "qnnpack": "PyTorch aten/src/ATen/native/quantized/cpu/qnnpack/src/ (q8gemm, q8conv, q8vadd, q8avgpool)",
    "aten": "PyTorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp",
    "fixedpoint": "gemmlowp fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul, RoundingDivideByPOT)",
}


def _weighted(op: str, geometry: dict, engine: str, cpu: CpuProfile, requant: str) -> dict:
    arithmetic = dispatch.weighted(op, engine, cpu, requant, geometry)(BATCH, OUT_HW)
    library = arithmetic.library.split()[0]
    bias, requantize = _AFTER_ACCUMULATE[library]
    accumulate = ("int16 pairs (saturating), then int32" if arithmetic.pairs
                  else "int8 x int8 products, exact int32 sum")
    return {"kernel": arithmetic.label, "accumulate": accumulate, "bias": bias, "requantize": requantize,
            "source": SOURCES[library]}


def _elementwise(op: str, engine: str, cpu: CpuProfile, requant: str) -> dict:
    fixed = requant == "fixedpoint"
    if op == "add":
        library = dispatch.add_library(engine, requant)
        how = {"aten": ("float32: dequantize both inputs, add, ReLU, multiply by 1 / S3, round half to even",
                        "ATen's vector loop (fused multiply-add) and scalar tail"),
               "qnnpack": ("integers: each input times an integer multiplier, a rounding shift", "QNNPACK q8vadd"),
               "fixedpoint": ("integers: both inputs moved to a common scale, a rounding shift",
                              "the paper's (TFLite's) integer add")}[library]
        return {"kernel": how[1], "accumulate": "-", "bias": "-", "requantize": how[0], "source": SOURCES[library]}
    if op == "avg_pool":
        qnnpack = not fixed and dispatch.uses_qnnpack_pooling(engine, "avg")
        library = "fixedpoint" if fixed else "qnnpack" if qnnpack else "aten"
        divide = ("integer division (fixed point)" if fixed else "float32 multiply by 1 / window, round half to even")
        return {"kernel": {"fixedpoint": "fixed point", "qnnpack": "QNNPACK q8avgpool", "aten": "ATen"}[library],
                "accumulate": "exact integer sum of the window", "bias": "-", "requantize": divide,
                "source": SOURCES[library]}
    if op == "max_pool":
        qnnpack = not fixed and dispatch.uses_qnnpack_pooling(engine, "max")
        return {"kernel": "QNNPACK u8maxpool" if qnnpack else "ATen", "accumulate": "-", "bias": "-",
                "requantize": "none: integer maximum, qparams kept", "source": SOURCES["qnnpack" if qnnpack else "aten"]}
    if op == "relu":
        return {"kernel": "ATen", "accumulate": "-", "bias": "-",
                "requantize": "none: integer max(q, Z), qparams kept", "source": SOURCES["aten"]}
    # cat: inputs already in the output's qparams are copied; the others move to them
    return {"kernel": "fixed point" if fixed else "ATen", "accumulate": "-", "bias": "-",
            "requantize": ("integer copy where qparams agree, else " +
                           ("fixed-point requantization" if fixed else "float32 dequantize + quantize")),
            "source": SOURCES["fixedpoint" if fixed else "aten"]}


def steps(layer_type: str, engine: str, cpu: CpuProfile, requant: str = "exact") -> dict:
    """How one layer type computes under `engine` on `cpu`: kernel, accumulate, bias, requantize, source."""
    dispatch.check(engine, requant)
    if layer_type not in LAYER_TYPES:
        raise BadInputError(f"layer_type={layer_type!r} is not one of the layer types described here: "
                            f"pass one of {list(LAYER_TYPES)}.")
    op, geometry = LAYER_TYPES[layer_type]
    if geometry is not None:
        return _weighted(op, geometry, engine, cpu, requant)
    return _elementwise(op, engine, cpu, requant)


def uses_vnni(layer_type: str, engine: str, cpu: CpuProfile) -> bool:
    """Does the kernel of this layer type multiply with VNNI (or AMX) instructions, four u8 x s8
    products per 32-bit lane at once? oneDNN names its ISA in the kernel; FBGEMM uses AVX-512 VNNI
    (not AVX-VNNI) on its exact paths; QNNPACK never."""
    row = steps(layer_type, engine, cpu)
    if row["kernel"].startswith("onednn"):
        return "vnni" in row["kernel"] or "amx" in row["kernel"]
    return row["kernel"].startswith("fbgemm") and cpu.fbgemm == "avx512_vnni" and "int16" not in row["accumulate"]


def is_integer_only(row: dict) -> bool:
    """No float32 step in a layer's accumulate, bias or requantize."""
    return not any("float32" in row[k] for k in ("accumulate", "bias", "requantize"))


def forum_table(engines, cpu: CpuProfile, requant: str = "exact") -> pd.DataFrame:
    """Layer type x (engine, step): what each engine computes on this CPU, readable as the forum asked."""
    columns = {}
    for engine in engines:
        rows = {t: steps(t, engine, cpu, requant) for t in LAYER_TYPES}
        for step in ("kernel", "accumulate", "bias", "requantize"):
            columns[(engine, step)] = {t: r[step] for t, r in rows.items()}
        columns[(engine, "integer only?")] = {t: "yes" if is_integer_only(r) else "no" for t, r in rows.items()}
    return pd.DataFrame(columns).rename_axis("layer type")


def runs_on(engine: str, cpu: CpuProfile) -> bool:
    """Does this CPU kind have the kernels of `engine`? QNNPACK runs everywhere; x86 and fbgemm need
    FBGEMM (x86-64 only), onednn needs oneDNN's x86 int8 kernels (on ARM the course uses qnnpack)."""
    needs = {"qnnpack": True, "fbgemm": cpu.fbgemm, "x86": cpu.fbgemm, "onednn": cpu.onednn}
    return bool(needs[dispatch.check_engine(engine)])


def accumulation_by_kind(kinds: dict[str, CpuProfile], engines) -> pd.DataFrame:
    """CPU kind x engine: which weighted layer types add products in int16 pairs (which can
    saturate) rather than exactly in int32; "-" where the kind has no kernels of that engine."""
    weighted = [t for t, (op, g) in LAYER_TYPES.items() if g is not None]
    table = {}
    for kind, cpu in kinds.items():
        row = {}
        for engine in engines:
            if not runs_on(engine, cpu):
                row[engine] = "-"
                continue
            paired = [t for t in weighted if "int16" in steps(t, engine, cpu)["accumulate"]]
            row[engine] = ("exact int32 everywhere" if not paired else "int16 pairs in every one" if len(paired) == len(weighted)
                           else "int16 pairs: " + ", ".join(paired))
        table[kind] = row
    return pd.DataFrame(table).T.rename_axis("CPU kind")
