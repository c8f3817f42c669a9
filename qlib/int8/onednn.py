"""Which oneDNN kernel PyTorch gets for a quantized conv or linear layer, and how that kernel rounds.

oneDNN picks an implementation per primitive, that is per layer *and input shape*, from its ISA
and the problem's shape; the kernels differ in how they apply the scales to the int32 sum
(measured on torch 2.14.1's oneDNN 3.12 at every ISA level, >= 10^6 outputs per case, 0
mismatches; see requantize.requantize_onednn for the formulas):

- "combined" (C): jit kernels (AVX2), the AMX brgemm micro-kernel, gemm:jit for linear;
- "one_by_one" (T): brgemm / brdgmm / jit_int8 kernels without AMX, and AMX's fallbacks;
- "reference" (R): ref:any, the C++ reference kernel (AVX2 grouped convs with channels per
  group not a multiple of 4).

Without VNNI (AVX2, AVX512_CORE) the kernels add pairs of neighbouring input channels of one tap
into a saturating int16 ("channels"); depthwise and reference kernels do not saturate. The AMX
rules depend on the shape, the thread count and the L1 cache (48 KiB assumed, a Sapphire Rapids
core's); they reproduce what was measured, one small first-layer case excepted.
Notebook 08, section 8.

Where to read the C++ (oneDNN v3.12; names as ONEDNN_VERBOSE prints them in brackets):
Reproduces: oneDNN: src/cpu/cpu_convolution_list.cpp (impl_list_map).
Reproduces: oneDNN: src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp (jit_uni_x8s8s32x_fwd_kernel_vmm_t)
    [jit_uni_int8].
Reproduces: oneDNN: src/cpu/x64/jit_avx512_core_x8s8s32x_conv_kernel.cpp
    (jit_avx512_core_x8s8s32x_fwd_kernel_vmm_t) [jit_int8].
Reproduces: oneDNN: src/cpu/x64/jit_brgemm_conv.cpp (brgemm_convolution_fwd_t) [brg_conv_fwd].
Reproduces: oneDNN: src/cpu/x64/jit_brgemm_1x1_conv.cpp (brgemm_1x1_convolution_fwd_t) [brgconv_1x1].
Reproduces: oneDNN: src/cpu/x64/jit_brdgmm_dw_conv.cpp (brdgmm_dw_convolution_fwd_t) [brdgmm_dw].
Reproduces: oneDNN: src/cpu/ref_convolution_int8.cpp (ref_convolution_int8_fwd_t) [ref:any].
"""

from __future__ import annotations

from dataclasses import dataclass

L1_BYTES = 48 * 1024


@dataclass(frozen=True)
class Kernel:
    """One oneDNN implementation: its verbose name, how it applies the scales, whether it saturates.

    Course helper: a record of what was measured about a kernel, no arithmetic.
    """

    name: str          # as ONEDNN_VERBOSE names it
    scales: str        # "combined", "one_by_one" or "reference"
    pairs: bool        # int16 pairs of neighbouring input channels (non-VNNI kernels)


def conv_kernel(isa: str, geometry: dict, batch: int, out_hw: tuple, threads: int) -> Kernel:
    """The kernel of a 2-D conv with symmetric per-channel weights; `isa` as in CpuProfile.onednn.

    oneDNN takes the first implementation in its list whose pd_t::init accepts the problem.

    Reproduces: oneDNN: src/cpu/cpu_convolution_list.cpp (impl_list_map).
    """
    cin, cout, groups = geometry["in_channels"], geometry["out_channels"], geometry["groups"]
    kh, kw = geometry["kernel"]
    cg, ocg = cin // groups, cout // groups
    depthwise = groups > 1 and cg == 1 and ocg == 1
    grouped = groups > 1 and not depthwise
    one_by_one = kh == kw == 1 and tuple(geometry["padding"]) == (0, 0)
    saturates = isa in ("avx2", "avx512_core")
    if isa == "avx2":
        if depthwise:
            return Kernel("jit_uni_int8:avx2", "combined", False)
        if grouped and (cg % 4 or ocg % 4):
            return Kernel("ref:any", "reference", False)
        return Kernel("jit_uni_int8_1x1:avx2" if one_by_one and groups == 1 else "jit_uni_int8:avx2", "combined", True)
    if isa == "avx2_vnni":
        if depthwise:
            return Kernel("brdgmm_dw:avx2_vnni", "one_by_one", False)
        if grouped and cg <= 8 and cg % 4 == 0 and ocg % 4 == 0:
            return Kernel("jit_uni_int8:avx2_vnni", "combined", False)
        return Kernel("brgconv_1x1:avx2_vnni" if one_by_one else "brg_conv_fwd:avx2_vnni", "one_by_one", False)
    if isa in ("avx512_core", "avx512_core_vnni"):
        # (with one input channel per group and AVX512_VBMI, AVX512_CORE pairs taps instead:
        # CPUs with AVX-512 but no VNNI have no VBMI, so this is not modelled)
        if depthwise:
            return Kernel(f"brdgmm_dw:{isa}", "one_by_one", False)
        name = "brgconv_1x1" if one_by_one else "brg_conv_fwd"
        if grouped and cg <= 16 and cg % 4 == 0 and ocg % 4 == 0:
            name = "jit_int8_1x1" if one_by_one else "jit_int8"
        return Kernel(f"{name}:{isa}", "one_by_one", saturates)
    # AMX
    if depthwise:
        return Kernel("brdgmm_dw:avx512_core_vnni", "one_by_one", False)
    oh, ow = out_hw
    small = oh * ow <= 4 and cg <= 512 and batch * groups * cg * ocg <= (L1_BYTES // 2 if one_by_one else L1_BYTES)
    if small or (one_by_one and cg % 4):       # (1x1, cg % 4 and cg > 32: "jit:avx10_1_512_amx", one by one too)
        return Kernel(("brgconv_1x1" if one_by_one else "brg_conv_fwd") + ":avx512_core_vnni", "one_by_one", False)
    if one_by_one:
        per_thread = threads > 1 and batch == 1 and cg * oh <= 28 * 1024 and ocg * oh <= 14 * 1024
        return Kernel("brgconv_1x1:avx10_1_512_amx", "one_by_one" if per_thread else "combined", False)
    wide = ow >= 256 and not (cg < 32 and kh * kw > 1)
    return Kernel("brg_conv_fwd:avx10_1_512_amx", "one_by_one" if wide else "combined", False)


def linear_kernel(isa: str, rows: int, in_features: int, out_features: int) -> Kernel:
    """The kernel of a linear layer with `rows` input rows (the batch).

    oneDNN takes the first matmul implementation in its list whose pd_t::init accepts the problem:
    brg_matmul is src/cpu/x64/matmul/brgemm_matmul.cpp, gemm:jit src/cpu/matmul/gemm_x8s8s32x_matmul.cpp.

    Reproduces: oneDNN: src/cpu/matmul/cpu_matmul_list.cpp (get_matmul_impl_list).
    Reproduces: aten/src/ATen/native/quantized/cpu/qlinear.cpp (PackedLinearWeightsOnednn::apply_impl).
    """
    if isa == "avx2":
        return Kernel("gemm:jit", "combined", True)
    if isa in ("avx2_vnni", "avx512_core", "avx512_core_vnni"):
        return Kernel(f"brg_matmul:{isa}", "one_by_one", isa == "avx512_core")
    small = ((rows == 1 and in_features == 256) or (rows <= 32 and rows * out_features <= 256)
             or in_features <= 16)
    if small:
        return Kernel("brg_matmul:avx10_1_512", "one_by_one", False)
    return Kernel("brg_matmul:avx10_1_512_amx", "combined", False)
