"""From an int32 accumulator to uint8: each engine's float32 requantization, step by step.

After the exact integer sum (integer.py), every CPU engine of PyTorch leaves integers: it
multiplies by the real multiplier M = S_x * S_w / S_out in float32, adds a bias, rounds half to
even, adds the output zero point and clamps (a fused ReLU raises the floor to the zero point).
The engines differ in where the bias enters, in which order the float32 products are rounded,
and whether the zero point is added before or after rounding: differences of one step, now and
then, which is why `int8.run` follows the engine the model was converted under. Notebook 08,
section 4 puts them side by side; fixedpoint.py is the paper's integer-only alternative.

Where to read the C++ (paths from each repository's root; QNNPACK: PyTorch's copy, relative to
aten/src/ATen/native/quantized/cpu/qnnpack; oneDNN: v3.12, the version torch 2.14.1 was measured with):
Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput::f).
Reproduces: FBGEMM: src/QuantUtilsAvx2.cc (requantizeOutputProcessingAvx2).
Reproduces: QNNPACK: src/q8gemm/4x4c2-sse2.c (pytorch_q8gemm_ukernel_4x4c2__sse2).
Reproduces: oneDNN: src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp
    (jit_uni_x8s8s32x_fwd_kernel_vmm_t::store_output).
"""

from __future__ import annotations

import torch

F32 = torch.float32


def f32(value) -> torch.Tensor:
    """A float32 scalar tensor: every float step below rounds to float32, as the C++ does.

    Course helper: the C++ static_cast<float> of a double scale, no kernel of its own.
    """
    return torch.as_tensor(value, dtype=torch.float64).to(F32)


def rne(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (nearbyint / cvtps2dq); stays float32 (integer values) for speed.

    Course helper: one instruction's rounding (std::nearbyint, lrintf, cvtps2dq), not a kernel.
    """
    return torch.round(x)


def per_channel(v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Per-output-channel values shaped to broadcast against acc ([N, OC] or [N, OC, H, W]).

    Course helper: tensor broadcasting, no arithmetic of any kernel.
    """
    return v.view(-1, *([1] * (acc.dim() - 2)))


def fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add a * b + c with one rounding (vfmadd), computed exactly.

    a * b is exact in float64; the float64 sum s = a*b + c carries an error e (TwoSum), which only
    matters when s lies exactly halfway between two float32 values: then s moves one float64
    step towards the true value before the single rounding to float32.

    Course helper: an exact model of one vfmadd instruction (the compiler's fusion of the multiply
    and add in FBGEMM's requantizeOutputProcessingAvx2), not a kernel of its own.
    """
    a, b, c = torch.broadcast_tensors(a.to(F32), b.to(F32), c.to(F32))
    p, c64 = a.double() * b.double(), c.double()
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)
    halfway = ((s.view(torch.int64) & ((1 << 29) - 1)) == (1 << 28)) & (e != 0)
    if bool(halfway.any()):
        s = torch.where(halfway, torch.nextafter(s, torch.where(e > 0, torch.inf, -torch.inf).double()), s)
    return s.to(F32)


def requantize_fbgemm(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights,
                      path: str = "gemm") -> torch.Tensor:
    """fbgemm's ReQuantizeOutput: float bias added to the accumulator in units of in_s*w_s.

    Per-channel weights: acc + f32(bias / ats). Per-tensor weights: bias times f32(1/ats), which
    the compiler fused with the add into one FMA (a single rounding) except in the depthwise
    kernel (`path="depthwise"`); the forms differ in the last bit now and then. A product too large
    for int32 converts to INT32_MIN, so an absurd output scale gives 0, not 255.

    Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput::f).
    Reproduces: FBGEMM: src/QuantUtilsAvx2.cc (requantizeOutputProcessingAvx2).
    Reproduces: FBGEMM: src/QuantUtilsAvx2.cc (requantizeOutputProcessingGConvAvx2).
    Reproduces: FBGEMM: src/FbgemmI8DepthwiseAvx2-inl.h (requantize_).
    """
    ats = f32(in_s) * w_s.to(F32)                      # act_times_w_scale per output channel
    mult = ats / f32(out_s)
    raw = acc.to(F32)                                  # int32 -> float32 (cvtepi32_ps)
    if bias is not None:
        b = per_channel(bias.to(F32), acc)
        if per_channel_weights:
            raw += b / per_channel(ats, acc)
        elif path == "depthwise":
            raw += b * per_channel(f32(1.0) / ats, acc)
        else:
            raw = fma_f32(b, per_channel(f32(1.0) / ats, acc), raw)
    raw *= per_channel(mult, acc)
    q = torch.where(raw.abs() < 2.0 ** 31, rne(raw), torch.tensor(-2.0 ** 31))   # cvtps2dq
    return q.add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_qnnpack(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights=True) -> torch.Tensor:
    """QNNPACK: bias rounded to int32 (scale in_s*w_s), then one float multiplier.

    Reproduces: aten/src/ATen/native/quantized/cpu/QuantUtils.h (quant_utils::QuantizeBias).
    Reproduces: aten/src/ATen/native/quantized/cpu/QnnpackUtils.h (generate_requantization_scales).
    Reproduces: QNNPACK: src/q8gemm/4x4c2-sse2.c (pytorch_q8gemm_ukernel_4x4c2__sse2).
    Reproduces: QNNPACK: src/q8conv/4x4c2-sse2.c (pytorch_q8conv_ukernel_4x4c2__sse2).
    """
    if bias is not None:
        bq = rne(bias.to(F32) * (f32(1.0) / (w_s.to(F32) * f32(in_s)))).to(torch.int32)
        acc = acc + per_channel(bq, acc)
    req = (w_s.to(F32) * f32(in_s)) * (f32(1.0) / f32(out_s))
    raw = acc.to(F32).mul_(per_channel(req, acc))
    return rne(raw).add_(out_zp).clamp_(out_zp if relu else 0, 255)


def requantize_onednn(acc, in_s, w_s, bias, out_s, out_zp, relu, per_channel_weights=True,
                      scales="combined", linear=False) -> torch.Tensor:
    """oneDNN: scale the accumulator to real units, add the float bias, ReLU, then the zero point.

    PyTorch hands oneDNN reciprocals of the scales, which oneDNN inverts back (hence the double
    reciprocals; a linear layer's weight scales go through the same round trip). The kernels
    differ in how they apply the input and weight scales (onednn.py says which kernel does what):
    "combined" multiplies once by f32(s_in * s_w); "one_by_one" by s_in, then by s_w; "reference"
    as one_by_one, but it divides by the output scale instead of multiplying by its reciprocal.
    In the C++: PyTorch's entry point, then the jit kernel ("combined"), brgemm ("one_by_one")
    and the reference kernel ("reference"):

    Reproduces: aten/src/ATen/native/quantized/cpu/qconv.cpp (PackedConvWeightsOnednn::apply_impl).
    Reproduces: oneDNN: src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp
        (jit_uni_x8s8s32x_fwd_kernel_vmm_t::store_output).
    Reproduces: oneDNN: src/cpu/x64/brgemm/jit_brgemm_kernel.cpp
        (jit_brgemm_kernel_t::store_accumulators_apply_post_ops).
    Reproduces: oneDNN: src/cpu/ref_convolution_int8.cpp (ref_convolution_int8_fwd_t::execute_forward).
    """
    s = f32(1.0) / f32(1.0 / in_s)
    w = w_s.to(F32)
    if linear:
        w = f32(1.0) / (f32(1.0) / w)
    if scales == "combined":
        t = acc.to(F32).mul_(per_channel(s * w, acc))
    else:
        t = acc.to(F32).mul_(s).mul_(per_channel(w, acc))
    if bias is not None:
        t += per_channel(bias.to(F32), acc)
    if relu:
        t.clamp_min_(0)
    dst = f32(1.0) / f32(1.0 / out_s)
    t = t.div_(dst) if scales == "reference" else t.mul_(f32(1.0) / dst)
    return rne(t.add_(f32(out_zp))).clamp_(out_zp if relu else 0, 255)


# The three formulas by engine name, for tables that put them side by side (notebook 08).
REQUANTIZE = {"fbgemm": requantize_fbgemm, "qnnpack": requantize_qnnpack, "onednn": requantize_onednn}
