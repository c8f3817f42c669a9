"""What vector kernels do differently from the textbook arithmetic, named after the CPU that does it.

The integer arithmetic (integer.py) and the engines' float32 formulas (requantize.py,
elementwise.py) know no CPU. Three things here do, each a function of the CPU profile:

1. **int16 pairs** (CPUs without VNNI): `vpmaddubsw` adds two u8 x s8 products into an int16
   with saturation. Which two depends on how a kernel lays out K: `pairs_of` gives the pairs,
   `integer.saturate_pairs` applies them.
2. **scalar tails** (ATen's vectorized loops): a loop runs whole blocks of two vectors and
   finishes the rest value by value, with a different float formula (no fused multiply-add).
   `scalar_tail` says which positions those are; they move with the vector width, the tensor's
   size, its memory order and the number of threads.
3. **lanes**: NHWC cat vectorises over channels: the first `C // 8 * 8` channels in vector
   lanes, the rest in scalar code: `scalar_channels`. (NHWC average pooling has lanes too, but its
   two multipliers give the same integers.)
Notebook 08, sections 3, 8 and 9.

Where to read the C++:
Reproduces: FBGEMM: src/GenerateKernelU8S8S32ACC32.cc (CodeGenBase::genComputeBlock).
Reproduces: aten/src/ATen/native/cpu/Loops.h (vectorized_loop).
Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
    (qcat_nhwc_kernel).
"""

from __future__ import annotations

import torch

from .cpu import CpuProfile

# --- 1. int16 pairs -------------------------------------------------------------------------------


def pairs_of(kernel: str, channels: int, taps: int = 1):
    """Which products an AVX2 u8 x s8 kernel adds together in int16 (vpmaddubsw), as index
    pairs into K = channels * taps in im2col's (channel, tap) order; index K means "nothing".

    Measured with all-255 inputs and two weights of 127 at chosen places: fbgemm pairs
    neighbours in its (tap, channel) order, channel fastest (K = kh*kw*C/G), depthwise and
    linear included, on every kernel path; oneDNN pairs neighbouring channels within one tap
    (onednn.py says which of its kernels saturate at all).

    Reproduces: FBGEMM: src/GenerateKernelU8S8S32ACC32.cc (CodeGenBase::genComputeBlock).
    Reproduces: FBGEMM: src/GenerateI8Depthwise.cc (GenI8Depthwise::getOrCreate).
    Reproduces: oneDNN: src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp
        (jit_uni_x8s8s32x_fwd_kernel_vmm_t::compute_ker).
    Reproduces: oneDNN: src/cpu/x64/brgemm/jit_brgemm_kernel.cpp (jit_brgemm_kernel_t::dot_product).
    """
    k = channels * taps
    if kernel == "fbgemm":
        f = torch.arange(k)
        order = (f % channels) * taps + f // channels            # fbgemm position -> im2col index
    elif kernel == "onednn":
        c = torch.arange(channels + channels % 2)
        order = torch.stack([torch.where(c < channels, c * taps + t, k) for t in range(taps)]).reshape(-1)
    else:
        return None
    if len(order) % 2:
        order = torch.cat([order, torch.tensor([k])])
    return order.view(-1, 2)


# --- 2. scalar tails of ATen's vectorized loops -----------------------------------------------------

PARALLEL_GRAIN = 32768  # at::internal::GRAIN_SIZE: below it, TensorIterator runs one chunk
BLOCK = 64              # cpu_kernel_vec's block: two Vectorized<quint8> of the AVX2 build


def scalar_tail(numel: int, cpu: CpuProfile) -> torch.Tensor:
    """Flat positions (memory order) that ATen's cpu_kernel_vec leaves to its scalar function.

    TensorIterator splits a contiguous range over the threads when it holds at least 32,768
    elements (at::parallel_for: chunks of ceil(n / threads)); each chunk runs blocks of 64 uint8
    values (two AVX2 vectors; AVX-512 CPUs run the same AVX2 build) and finishes its last
    (length % 64) values one by one. Without vectorized kernels (DEFAULT build) every value is.
    (The 32,768 is at::internal::GRAIN_SIZE, in aten/src/ATen/TensorIterator.h.)

    Reproduces: aten/src/ATen/native/cpu/Loops.h (vectorized_loop).
    """
    if not cpu.quantized_vectors:
        return torch.arange(numel)
    threads = min(cpu.aten_threads(), -(-numel // PARALLEL_GRAIN)) if numel >= PARALLEL_GRAIN else 1
    chunk = -(-numel // threads)
    tails = [torch.arange(start + min(chunk, numel - start) // BLOCK * BLOCK, start + min(chunk, numel - start))
             for start in range(0, numel, chunk)]
    return torch.cat(tails) if tails else torch.zeros(0, dtype=torch.long)


def tail_mask(t: torch.Tensor, cpu: CpuProfile) -> torch.Tensor:
    """[shape of t] mask of the values a vector kernel walking t's memory leaves to its scalar tail.

    Course helper: maps scalar_tail's flat memory positions onto t's NCHW indices.
    """
    flat = torch.zeros(t.numel(), dtype=torch.bool)
    flat[scalar_tail(t.numel(), cpu)] = True
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        n, c, h, w = t.shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)      # memory is N, H, W, C
    return flat.view(t.shape)


# --- 3. channel lanes -------------------------------------------------------------------------------


def scalar_channels(channels: int, cpu: CpuProfile):
    """Which channels NHWC cat dequantizes value by value (DQ_S): those past the last whole group
    of 8 vector lanes ([1, C, 1, 1] mask), or all of them without vectorized kernels (True).

    Reproduces: aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
        (qcat_nhwc_kernel).
    """
    if not cpu.quantized_vectors:
        return True
    return (torch.arange(channels) >= channels // 8 * 8).view(1, channels, 1, 1)
