"""Integer-arithmetic-only inference: a converted model re-executed by readable Python.

PyTorch runs a converted (int8) model in C++ and assembly kernels (FBGEMM, QNNPACK, oneDNN).
This package reads the scales, zero points, int8 weights and biases out of the converted modules
and redoes every op with integer tensors, the way the engine the model was converted under
computes it on a given CPU: `run(qmodel, x)` equals `qmodel(x)` bit for bit (`torch.equal`).
`requant="fixedpoint"` swaps the engines' float32 requantization for the integer-only one of
Jacob et al. (2018) to measure what it changes. Notebook 08 teaches it.

Reading order (the integer path of one layer reads in one sitting: 1 -> 2 -> 7):

1. integer.py      the exact int32 accumulators (im2col, conv / linear sums, pooling windows)
2. requantize.py   each engine's float32 step from int32 back to uint8 (FBGEMM, QNNPACK, oneDNN)
3. fixedpoint.py   the paper's integer-only requantization (M = M0 * 2**-n), add, mul, division
4. elementwise.py  add, mul, cat, pooling, mean, activations as ATen and QNNPACK compute them
5. cpu.py          the CPU profile: which kernels a CPU kind runs; quirks.py: what they do
                   differently (int16 pairs, scalar tails, lanes); onednn.py: oneDNN's kernels
6. dispatch.py     the one place mapping (op, engine, CPU, requant) to the functions above
7. layers.py       the layers with weights and the stubs; ops.py: the others; functional.py:
                   torch functions called on int8 activations
8. interpreter.py  the Interpreter: the model's own forward() over those layers, under a guard
9. compare.py      PyTorch's side (qlib.recorder: every op it ran) next to ours
10. recordings.py, record.py, replay.py, compact.py, diff.py   what PyTorch computed on other
                   CPUs, and how two CPUs' recordings differ
11. anatomy.py     the forum's question per layer type: integer or float32, read from dispatch
"""

from . import anatomy, recordings
from .compare import arithmetic_summary, checked_here, claim_exact, compare_layers, trace
from .cpu import KINDS, CpuProfile
from .dispatch import ENGINES, REQUANT_MODES
from .elementwise import add_float, add_qnnpack, dequantize, mul_float, quantize
from .fixedpoint import (multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot,
                         saturating_rounding_doubling_high_mul)
from .integer import conv_accumulate, im2col, linear_accumulate
from .interpreter import Interpreter, engine_of, run
from .layers import UnsupportedModuleError
from .quirks import pairs_of, scalar_tail
from .requantize import REQUANTIZE, requantize_fbgemm, requantize_onednn, requantize_qnnpack

__all__ = ["Interpreter", "run", "compare_layers", "trace", "checked_here", "claim_exact", "arithmetic_summary", "engine_of", "CpuProfile", "KINDS", "ENGINES",
           "REQUANT_MODES", "UnsupportedModuleError", "quantize", "dequantize", "im2col", "conv_accumulate",
           "linear_accumulate", "requantize_fbgemm", "requantize_qnnpack", "requantize_onednn", "REQUANTIZE",
           "quantize_multiplier", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier", "add_float", "add_qnnpack", "mul_float", "pairs_of", "scalar_tail"]
