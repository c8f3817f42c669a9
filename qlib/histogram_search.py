"""HistogramObserver's range search, replayed step by step so that every candidate can be seen.

`HistogramObserver.calculate_qparams` does not look for the range with the lowest error. It runs
a greedy search (`_non_linear_param_search`, from caffe2's norm minimization): starting from the
full histogram, it moves the quantile bounds alpha (from 0) and beta (from 1) by 1e-5 at a time;
each move that frees at least one bin gives a candidate, shrunk from the side that frees more
bins (the sparser tail). Each candidate is scored by `l2_error`, an estimate of the quantization
error computed on the histogram with `levels` = 2**bits = 256 levels, even under reduce_range
(which quantizes to 128). The search stops at the first candidate whose estimate is higher than
the last accepted one and keeps that last range. Then the usual `_calculate_qparams` runs.

`search` repeats torch's float32 arithmetic operation for operation, so its final range equals
the observer's bit for bit (tests/test_observers.py). Notebook 02, section 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import BadInputError, kind_of


def _check_histogram(histogram) -> torch.Tensor:
    if not isinstance(histogram, torch.Tensor) or histogram.dim() != 1 or not histogram.is_floating_point() \
            or histogram.numel() < 2:
        raise BadInputError(f"histogram must be a 1-D float tensor of bin counts (an observer's .histogram), not "
                            f"{kind_of(histogram)}.")
    if not bool(torch.isfinite(histogram).all()) or bool((histogram < 0).any()):
        raise BadInputError("histogram holds negative, NaN or infinite counts; pass an observer's .histogram.")
    return histogram


def _check_bins(start_bin, end_bin, bins: int) -> tuple[int, int]:
    if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in (start_bin, end_bin)) \
            or not 0 <= start_bin <= end_bin < bins:
        raise BadInputError(f"start_bin={start_bin!r}, end_bin={end_bin!r} must be integers with "
                            f"0 <= start_bin <= end_bin < {bins} (the number of bins): the candidate range is "
                            "bins start_bin to end_bin, both included.")
    return int(start_bin), int(end_bin)


def _cube_integral(delta_begin, delta_end, density):
    """density * integral of t**2 dt from delta_begin to delta_end (torch's `_get_norm`)."""
    return density * ((delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin) / 3)


def l2_error(histogram: torch.Tensor, bin_width: float, start_bin: int, end_bin: int, levels: int = 256) -> float:
    """The L2 error HistogramObserver estimates for the range of bins start_bin..end_bin.

    Each source bin's count is spread uniformly over the bin; the candidate range is cut into
    `levels` equal destination bins, and every value goes to the centre of its destination bin
    (values left of the range to the first centre, right of it to the last). The estimate is the
    integral of (x - centre)**2 over that density, in float32 as torch computes it.
    """
    histogram = _check_histogram(histogram)
    start_bin, end_bin = _check_bins(start_bin, end_bin, histogram.numel())
    dst_width = bin_width * (end_bin - start_bin + 1) / levels
    if dst_width == 0.0:
        return 0.0
    # each source bin [begin, end), measured from the start of the candidate range
    src_begin = (torch.arange(histogram.numel()) - start_bin) * bin_width
    src_end = src_begin + bin_width
    # the destination bins its two ends fall in (clamped: outside the range means the end level)
    dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, levels - 1)
    dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, levels - 1)
    density = histogram / bin_width
    half = dst_width / 2
    # from the bin's begin to the end of its first destination bin ...
    error = _cube_integral(src_begin - (dst_of_begin + 0.5) * dst_width, torch.ones(histogram.numel()) * half, density)
    # ... every whole destination bin in between (-1 of them when begin and end share one) ...
    error = error + (dst_of_end - dst_of_begin - 1) * _cube_integral(torch.tensor(-half), torch.tensor(half), density)
    # ... and from the start of its last destination bin to the bin's end
    error = error + _cube_integral(torch.tensor(-half), src_end - (dst_of_end * dst_width + half), density)
    return error.sum().item()


@dataclass(frozen=True)
class Candidate:
    """One range the search scored: bins start_bin..end_bin, shrunk on side `moved`."""

    start_bin: int
    end_bin: int
    moved: str          # "start" (the low end moved up) or "end" (the high end moved down)
    error: float        # l2_error of this range
    accepted: bool      # False for the candidate that stopped the search (and those after it)


@dataclass
class Search:
    """The search's candidates in order, and the range it returns (float32, as torch's)."""

    candidates: list[Candidate]
    start_bin: int
    end_bin: int
    new_min: torch.Tensor
    new_max: torch.Tensor
    full_error: float = field(default=float("nan"))   # l2_error of the whole histogram, for reference
    min_val: torch.Tensor | None = None
    bin_width: torch.Tensor | None = None

    def range_of(self, candidate: Candidate) -> tuple[float, float]:
        """The real range [low, high) of a candidate's bins."""
        low = self.min_val + self.bin_width * candidate.start_bin
        high = self.min_val + self.bin_width * (candidate.end_bin + 1)
        return float(low), float(high)

    @property
    def stopped_by(self) -> Candidate | None:
        """The first candidate whose error rose: the search stopped there (None: it ran out of steps)."""
        return next((c for c in self.candidates if not c.accepted), None)


def search(histogram: torch.Tensor, min_val, max_val, levels: int = 256, stepsize: float = 1e-5,
           stop_at_first_increase: bool = True, max_candidates: int | None = None) -> Search:
    """Replay HistogramObserver._non_linear_param_search on a histogram over [min_val, max_val].

    With stop_at_first_increase=False the search walks on past torch's stopping point (every
    candidate then counts as accepted for the walk, but `start_bin` / `end_bin` / `new_min` /
    `new_max` stay torch's answer), to show what lay beyond it; `max_candidates` bounds the walk.
    """
    histogram = _check_histogram(histogram)
    min_val, max_val = torch.as_tensor(min_val, dtype=torch.float32), torch.as_tensor(max_val, dtype=torch.float32)
    if not bool(torch.isfinite(min_val)) or not bool(torch.isfinite(max_val)) or not bool(min_val <= max_val):
        raise BadInputError(f"min_val={float(min_val)} and max_val={float(max_val)} must be finite with min <= max: "
                            "the range the histogram covers (an observer's .min_val and .max_val after calibration).")
    bins = histogram.numel()
    bin_width = (max_val - min_val) / bins                      # float32, for the final range
    width = (max_val.item() - min_val.item()) / bins            # double, for the error estimate
    total = torch.sum(histogram).item()
    cumulative = torch.cumsum(histogram, dim=0).numpy()         # float32, compared in float32 as torch does

    alpha, beta = 0.0, 1.0
    start_bin, end_bin = 0, bins - 1          # the walk's current range
    answer = (start_bin, end_bin)             # the range torch keeps
    norm_min = float("inf")
    stopped = False
    candidates: list[Candidate] = []
    while alpha < beta:
        if max_candidates is not None and len(candidates) >= max_candidates:
            break
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        # torch compares a float32 cumulative count with these, so they are rounded to float32 first
        low_threshold, high_threshold = np.float32(next_alpha * total), np.float32(next_beta * total)
        left, right = start_bin, end_bin
        while left < end_bin and cumulative[left] < low_threshold:
            left += 1
        while right > start_bin and cumulative[right] > high_threshold:
            right -= 1
        if left - start_bin > end_bin - right:                 # the low tail frees more bins: move it
            next_start, next_end, moved, alpha = left, end_bin, "start", next_alpha
        else:
            next_start, next_end, moved, beta = start_bin, right, "end", next_beta
        if (next_start, next_end) == (start_bin, end_bin):
            continue                                           # no bin freed yet: step the quantile again
        norm = l2_error(histogram, width, next_start, next_end, levels)
        rose = norm > norm_min
        if rose and not stopped:
            stopped = True
            if stop_at_first_increase:
                candidates.append(Candidate(next_start, next_end, moved, norm, False))
                break
        candidates.append(Candidate(next_start, next_end, moved, norm, not stopped))
        if not stopped:
            answer = (next_start, next_end)
        norm_min = norm
        start_bin, end_bin = next_start, next_end
    new_min = min_val + bin_width * answer[0]
    new_max = min_val + bin_width * (answer[1] + 1)
    return Search(candidates, answer[0], answer[1], new_min, new_max,
                  l2_error(histogram, width, 0, bins - 1, levels), min_val, bin_width)


def search_observer(observer, levels: int | None = None, **options) -> Search:
    """`search` on a calibrated HistogramObserver's histogram and range, with its number of levels
    (`dst_nbins`, 256 for 8-bit dtypes) unless `levels` says otherwise (a what-if)."""
    if not all(hasattr(observer, name) for name in ("histogram", "min_val", "max_val", "dst_nbins")):
        raise BadInputError(f"search_observer takes a torch.ao.quantization.HistogramObserver, not {kind_of(observer)}.")
    if not bool(torch.isfinite(observer.min_val)):
        raise BadInputError("this HistogramObserver has seen no data yet: call it on calibration batches first.")
    return search(observer.histogram, observer.min_val, observer.max_val,
                  observer.dst_nbins if levels is None else levels, **options)
