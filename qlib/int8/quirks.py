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
3. **lanes**: kernels that vectorise over channels (NHWC average pooling, NHWC cat) treat the
   first `C // 8 * 8` channels in vector lanes and the rest in scalar code: `vector_lanes`.
"""

from __future__ import annotations

import math

import torch

from .cpu import CpuProfile

# --- 1. int16 pairs -------------------------------------------------------------------------------


def pairs_of(kernel: str, channels: int, taps: int = 1, groups: int = 1):
    """Which products an AVX2 u8 x s8 kernel adds together in int16 (vpmaddubsw), as index
    pairs into K = channels * taps in im2col's (channel, tap) order; index K means "nothing".

    Measured with all-255 inputs and two weights of 127 at chosen places: fbgemm pairs
    neighbours in its (tap, channel) order, channel fastest (K = kh*kw*C/G), depthwise and
    linear included; oneDNN pairs neighbouring channels within one tap, and its depthwise and
    C/G = 6 grouped kernels did not saturate at all.
    """
    k = channels * taps
    if kernel == "fbgemm":
        f = torch.arange(k)
        order = (f % channels) * taps + f // channels            # fbgemm position -> im2col index
    elif kernel == "onednn" and (groups == 1 or channels % 4 == 0):
        c = torch.arange(channels + channels % 2)
        order = torch.stack([torch.where(c < channels, c * taps + t, k) for t in range(taps)]).reshape(-1)
    else:
        return None
    if len(order) % 2:
        order = torch.cat([order, torch.tensor([k])])
    return order.view(-1, 2)


# --- 2. scalar tails of ATen's vectorized loops -----------------------------------------------------

PARALLEL_GRAIN = 32768  # at::internal::GRAIN_SIZE: below it, TensorIterator runs one chunk


def scalar_tail(numel: int, cpu: CpuProfile) -> torch.Tensor:
    """Flat positions (memory order) that ATen's cpu_kernel_vec leaves to its scalar function.

    TensorIterator splits a contiguous range over the threads when it holds at least 32,768
    elements (at::parallel_for: chunks of ceil(n / threads)); each chunk runs blocks of two
    vectors of uint8 (64 values with AVX2, 128 with AVX-512) and finishes its last
    (length % block) values one by one.
    """
    block = 2 * cpu.vector_bytes
    threads = min(cpu.aten_threads(), -(-numel // PARALLEL_GRAIN)) if numel >= PARALLEL_GRAIN else 1
    chunk = -(-numel // threads)
    tails = [torch.arange(start + min(chunk, numel - start) // block * block, start + min(chunk, numel - start))
             for start in range(0, numel, chunk)]
    return torch.cat(tails) if tails else torch.zeros(0, dtype=torch.long)


def tail_positions(shape, channels_last: bool, cpu: CpuProfile) -> torch.Tensor:
    """Flat (NCHW) indices of the values a vector kernel leaves to its scalar tail; the kernel
    walks memory, which for channels_last tensors is N, H, W, C order."""
    tail = scalar_tail(math.prod(shape), cpu)
    if not channels_last:
        return tail
    n, c, h, w = shape
    i_n, rest = tail // (h * w * c), tail % (h * w * c)
    i_h, rest = rest // (w * c), rest % (w * c)
    i_w, i_c = rest // c, rest % c
    return ((i_n * c + i_c) * h + i_h) * w + i_w


# --- 3. channel lanes -------------------------------------------------------------------------------


def vector_lanes(channels: int, cpu: CpuProfile) -> torch.Tensor:
    """[1, C, 1, 1] mask of the channels an NHWC kernel computes in its 8-wide vector lanes."""
    return (torch.arange(channels) < channels // 8 * 8).view(1, channels, 1, 1)
