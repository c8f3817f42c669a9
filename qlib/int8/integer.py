"""Integer arithmetic, exact, and no knowledge of any CPU: the accumulators of Jacob et al. (2018).

A quantized conv or linear layer's output starts as an int32 sum of products of the input's and
the weights' integers, each minus its zero point (notebook 08, equations 4-5):

    acc[oc] = sum_k (x_k - Z_x) * (w_k - Z_w[oc]) = sum_k x_k w'_k - Z_x * sum_k w'_k

Here every value is an integer tensor and every operation is exact. The one CPU quirk that
touches these sums, the int16 saturation of AVX2 kernels, is applied by `saturate_pairs` to the
pairs that `quirks.pairs_of` names. Pooling's window sums live here too.

Where to read the C++ (FBGEMM: the u8 x s8 GEMM, and the zero-point terms its output stage removes):
Reproduces: FBGEMM: src/GenerateKernelU8S8S32ACC32.cc (CodeGenBase::genComputeBlock).
Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput::f).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def im2col(xq: torch.Tensor, x_zp: int, kernel, stride, padding, dilation):
    """The sliding windows of uint8 x: [N, C*kh*kw, OH*OW] (padding holds x_zp, i.e. real 0).

    Reproduces: FBGEMM: src/PackAWithIm2Col.cc (PackAWithIm2Col::pack).
    """
    x = F.pad(xq.contiguous(), (padding[1], padding[1], padding[0], padding[0]), value=x_zp)
    span_h, span_w = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    windows = x.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
    windows = windows[..., ::dilation[0], ::dilation[1]]          # [N, C, OH, OW, kh, kw]
    n, c, oh, ow = windows.shape[:4]
    cols = torch.empty(n, c, kernel[0], kernel[1], oh, ow, dtype=torch.int32)
    cols.copy_(windows.permute(0, 1, 4, 5, 2, 3))                  # one copy, uint8 -> int32
    return cols.view(n, c * kernel[0] * kernel[1], oh * ow), (oh, ow)


def _count(stats, saturated: int) -> None:
    if stats is not None:
        stats["saturated"] = stats.get("saturated", 0) + saturated


def conv_accumulate(xq, x_zp, wq, w_zp, stride, padding, dilation, groups, pairs=None, stats=None):
    """acc[n, oc, y, x] = sum over the window of (x - x_zp) * (w - w_zp[oc]), int32.

    Computed as the paper does (eq. 7-8): sum x*w' by integer matmul, minus x_zp * sum w'
    (a per-channel constant), with w' = w - w_zp (symmetric weights: w' = w). `pairs` (see
    quirks.pairs_of) makes it add products two by two in int16 with saturation, as AVX2 kernels
    do; `stats["saturated"]` then counts the clipped sums.

    Reproduces: aten/src/ATen/native/quantized/cpu/qconv.cpp (PackedConvWeight::apply_impl).
    Reproduces: FBGEMM: src/GenerateKernelU8S8S32ACC32.cc (CodeGenBase::genComputeBlock).
    Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput::f).
    """
    oc, cg, kh, kw = wq.shape
    cols, (oh, ow) = im2col(xq, x_zp, (kh, kw), stride, padding, dilation)
    n = cols.shape[0]
    cols = cols.view(n, groups, cg * kh * kw, oh * ow)
    w = (wq.to(torch.int32) - w_zp.to(torch.int32).view(-1, 1, 1, 1)).reshape(groups, oc // groups, cg * kh * kw)
    if oh * ow >= 32:
        acc = torch.matmul(w, cols)                                 # [N, G, OC/G, OH*OW]
    else:  # few output pixels: one wide matmul beats N small ones (same integers)
        wide = cols.permute(1, 2, 0, 3).reshape(groups, cg * kh * kw, n * oh * ow)
        acc = torch.matmul(w, wide).view(groups, oc // groups, n, oh * ow).permute(2, 0, 1, 3).contiguous()
    if pairs is not None:
        _count(stats, saturate_pairs(acc, cols, wq.to(torch.int32).reshape(w.shape), pairs,
                                     xq.flatten(1).amax(1)))
    acc = acc.view(n, oc, oh, ow)
    return acc.sub_((x_zp * w.sum(-1)).view(1, oc, 1, 1)) if x_zp else acc


def linear_accumulate(xq, x_zp, wq, w_zp, pairs=None, stats=None) -> torch.Tensor:
    """acc[n, o] = sum_k (x[n, k] - x_zp) * (w[o, k] - w_zp[o]) = x.w' - x_zp * sum_k w', int32.

    Reproduces: aten/src/ATen/native/quantized/cpu/qlinear.cpp (PackedLinearWeight::apply_impl).
    Reproduces: FBGEMM: src/Fbgemm.cc (fbgemmPacked).
    Reproduces: FBGEMM: include/fbgemm/OutputProcessing-inl.h (ReQuantizeOutput::f).
    """
    w = wq.to(torch.int32) - w_zp.to(torch.int32).view(-1, 1)
    x = xq.to(torch.int32).reshape(-1, w.shape[1])
    acc = torch.matmul(w, x.t()).t().contiguous()
    if pairs is not None:
        _count(stats, saturate_pairs(acc.view(len(x), 1, -1, 1), x.view(len(x), 1, -1, 1),
                                     wq.to(torch.int32).unsqueeze(0), pairs, x.amax(1)))
    acc = acc - x_zp * w.sum(-1) if x_zp else acc
    return acc.reshape(*xq.shape[:-1], w.shape[0])


def saturate_pairs(acc, cols, w, pairs, image_max, chunk: int = 1 << 16) -> int:
    """Fix acc [N, G, OC/G, L] in place for pairs whose sum leaves int16; returns how many did.

    cols [N, G, K, L]: raw u8 activations; w [G, OC/G, K]: raw s8 weights; pairs [P, 2]: index
    pairs into K (index K: no partner); image_max [N]: each image's largest activation (cheap to
    screen with). Only pairs with (x_a + x_b) * max|w| > 32767 are looked at, so it costs little
    when saturation is rare (reduce_range) and stays exact when it is not.

    Reproduces: FBGEMM: src/GenerateKernelU8S8S32ACC32.cc (CodeGenBase::genComputeBlock).
    Reproduces: oneDNN: src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp
        (jit_uni_x8s8s32x_fwd_kernel_vmm_t::compute_ker).
    """
    n_, g_, k, l_ = cols.shape
    ocg = w.shape[1]
    w_max = int(w.abs().max())
    if 2 * 255 * w_max <= 32767:
        return 0
    # only images holding an activation large enough to matter (rare with reduce_range)
    images = (image_max.to(torch.int64) * 2 * w_max > 32767).nonzero().flatten()
    if len(images) == 0:
        return 0
    if len(images) < n_:
        sub = acc[images]
        count = saturate_pairs(sub, cols[images], w, pairs, image_max[images], chunk)
        acc[images] = sub
        return count
    w = torch.cat([w, torch.zeros_like(w[..., :1])], -1)               # index K: the padding
    a, b = pairs[:, 0], pairs[:, 1]
    b_x = torch.where(b < k, b, 0)                                      # padding: any x, weight 0
    xa, xb = cols[:, :, a], cols[:, :, b_x]                             # [N, G, P, L]
    n, g, p, l = ((xa + xb) * w_max > 32767).nonzero(as_tuple=True)
    flat, count = acc.view(-1), 0
    for s in range(0, len(n), chunk):
        ni, gi, pi, li = n[s:s + chunk], g[s:s + chunk], p[s:s + chunk], l[s:s + chunk]
        products = (xa[ni, gi, pi, li].unsqueeze(1) * w[gi, :, a[pi]]
                    + xb[ni, gi, pi, li].unsqueeze(1) * w[gi, :, b[pi]])        # [M, OC/G]
        correction = products.clamp(-32768, 32767) - products
        index = ((ni * g_ + gi).unsqueeze(1) * ocg + torch.arange(ocg)) * l_ + li.unsqueeze(1)
        flat.index_add_(0, index.reshape(-1), correction.reshape(-1))
        count += int((correction != 0).sum())
    return count


# --- pooling windows ---------------------------------------------------------------------------------

def pair(v) -> tuple[int, int]:
    """An int or a pair as a pair, as nn.Module arguments allow.

    Course helper: argument normalisation, no arithmetic.
    """
    return (v, v) if isinstance(v, int) else tuple(v)


def pool_windows(t, kernel, stride, padding, dilation=1, ceil_mode=False, pad_value=0, extra_value=0):
    """Sliding windows of an integer tensor [..., H, W] -> [..., OH, OW, kh, kw], as PyTorch's
    pooling sizes them: `padding` filled with pad_value, the ceil_mode overhang with extra_value.

    Reproduces: aten/src/ATen/native/Pool.h (pooling_output_shape_pad_lr).
    """
    k, s, p, d = pair(kernel), pair(stride if stride else kernel), pair(padding), pair(dilation)
    span = [d[i] * (k[i] - 1) + 1 for i in (0, 1)]
    sizes = []
    for i, size in enumerate(t.shape[-2:]):
        out = (size + 2 * p[i] - span[i] + ((s[i] - 1) if ceil_mode else 0)) // s[i] + 1
        if ceil_mode and (out - 1) * s[i] >= size + p[i]:
            out -= 1                                   # the last window must start inside
        sizes.append(out)
    extra = [max(0, (sizes[i] - 1) * s[i] + span[i] - (t.shape[-2 + i] + 2 * p[i])) for i in (0, 1)]
    t = F.pad(t, (p[1], p[1], p[0], p[0]), value=pad_value)
    t = F.pad(t, (0, extra[1], 0, extra[0]), value=extra_value)
    windows = t.unfold(-2, span[0], s[0]).unfold(-2, span[1], s[1])
    return windows[..., :sizes[0], :sizes[1], ::d[0], ::d[1]]


def edge_clamped_windows(t, kernel, stride, padding, dilation=1):
    """Pooling windows [..., OH, OW, kh, kw] whose taps outside the image read the nearest edge
    value (QNNPACK's indirection buffer clamps the coordinates) instead of being skipped.

    Reproduces: QNNPACK: src/indirection.c (pytorch_qnnp_indirection_init_maxpool2d).
    (QNNPACK: PyTorch's copy, path relative to aten/src/ATen/native/quantized/cpu/qnnpack.)
    """
    k, s, p, d = pair(kernel), pair(stride if stride else kernel), pair(padding), pair(dilation)
    h, w = t.shape[-2:]
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    ys = (torch.arange(oh).view(-1, 1) * s[0] - p[0] + torch.arange(k[0]) * d[0]).clamp(0, h - 1)   # [OH, kh]
    xs = (torch.arange(ow).view(-1, 1) * s[1] - p[1] + torch.arange(k[1]) * d[1]).clamp(0, w - 1)   # [OW, kw]
    rows = t[..., ys, :]                                   # [..., OH, kh, W]
    taps = rows[..., xs]                                   # [..., OH, kh, OW, kw]
    return taps.transpose(-3, -2)                          # [..., OH, OW, kh, kw]


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive pooling window along one axis (ATen's start/end_index).

    Reproduces: aten/src/ATen/native/quantized/cpu/AdaptiveAveragePooling.cpp (start_index, end_index).
    """
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]
