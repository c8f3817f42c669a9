"""An interactive quantization explorer: a thin ipywidgets layer over pure, tested functions.

`explore(...)` computes everything (grid, quantized samples, errors) and `plot_exploration(...)`
draws it; `explorer()` only wires sliders to them with `ipywidgets.interactive`, so pytest tests
the functions directly and the widget through its `.result`.
Notebook 01 (the explorer).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from . import qmath
from .errors import BadInputError, check_choice, check_whole, kind_of

SCHEMES = ("affine", "symmetric")


def _laplace(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) / 2 ** 0.5  # unit variance


_SAMPLERS = {
    "gaussian": lambda n, generator: torch.randn(n, generator=generator),
    "laplace (heavy tails)": _laplace,
    "after ReLU": lambda n, generator: torch.relu(torch.randn(n, generator=generator) + 0.5),
}
DISTRIBUTIONS = tuple(_SAMPLERS)


def sample(distribution: str = "gaussian", n: int = 20_000, seed: int = 0) -> torch.Tensor:
    """A fixed float32 sample standing in for a tensor to quantize."""
    check_choice(distribution, "distribution", DISTRIBUTIONS, "a sample the explorer knows")
    return _SAMPLERS[distribution](n, torch.Generator().manual_seed(seed))


def integer_range(bits: int, scheme: str) -> tuple[int, int]:
    """Unsigned [0, 2^b - 1] for the affine scheme, signed [-2^(b-1), 2^(b-1) - 1] for symmetric."""
    check_whole(bits, "bits", 2, 16, example=8)
    check_choice(scheme, "scheme", SCHEMES, "a quantization scheme the explorer draws")
    if scheme == "affine":
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@dataclass
class Exploration:
    """Everything the explorer shows: parameters, samples, their quantized images and errors."""

    bits: int
    scheme: str
    xmin: float
    xmax: float
    qmin: int
    qmax: int
    scale: float
    zero_point: int
    x: torch.Tensor
    q: torch.Tensor
    x_hat: torch.Tensor

    @property
    def error(self) -> torch.Tensor:
        return self.x_hat - self.x

    @property
    def representable(self) -> tuple[float, float]:
        """The real interval the grid covers: [S (qmin - Z), S (qmax - Z)]."""
        return qmath.representable(self.scale, self.zero_point, self.qmin, self.qmax)

    @property
    def clipped(self) -> torch.Tensor:
        return qmath.clipped(self.x, self.scale, self.zero_point, self.qmin, self.qmax)

    def stats(self) -> dict:
        inside = ~self.clipped
        return {
            "scale S": self.scale, "zero point Z": self.zero_point,
            "levels": self.qmax - self.qmin + 1,
            "max |rounding error| (unclipped)": float(self.error[inside].abs().max()) if inside.any() else 0.0,
            "S/2": self.scale / 2,
            "clipped fraction": float(self.clipped.float().mean()),
            "max |clipping error|": float(self.error[self.clipped].abs().max()) if self.clipped.any() else 0.0,
            "MSE": float(self.error.double().pow(2).mean()),
            "SQNR (dB)": qmath.sqnr_db(self.x, self.x_hat),
        }


def explore(bits: int = 8, xmin: float = -3.0, xmax: float = 3.0, scheme: str = "affine",
            distribution: str = "gaussian", x: torch.Tensor | None = None) -> Exploration:
    """Quantize a sample with `bits`-bit integers calibrated to [xmin, xmax] (pure function)."""
    qmin, qmax = integer_range(bits, scheme)
    scale, zero_point = qmath.qparams_for_range(xmin, xmax, qmin, qmax, symmetric=scheme == "symmetric")
    x = sample(distribution) if x is None else x
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise BadInputError(f"x must be a finite float tensor to quantize, not {kind_of(x)} (or one with NaN / "
                            "inf); leave it out to use the explorer's own sample.")
    q = qmath.quantize_to_range(x, scale, zero_point, qmin, qmax)
    x_hat = (q - zero_point).to(torch.float32) * torch.tensor(scale, dtype=torch.float32)
    return Exploration(bits, scheme, float(xmin), float(xmax), qmin, qmax, scale, zero_point, x, q, x_hat)


def plot_exploration(result: Exploration, max_ticks: int = 64):
    """Three panels: the grid over the sample's histogram, the map x -> x_hat, the error."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    x = result.x.numpy()
    lo, hi = result.representable
    ax = axes[0]
    ax.hist(x, bins=120, color="0.7")
    levels = result.qmax - result.qmin + 1
    step = max(1, levels // max_ticks)
    for q in range(result.qmin, result.qmax + 1, step):
        ax.axvline(result.scale * (q - result.zero_point), color="tab:blue", lw=0.5, alpha=0.6)
    ax.axvline(0.0, color="tab:red", lw=1.5, label="0.0 (q = Z)")
    ax.set_title(f"{levels} levels{'' if step == 1 else f' (every {step}th shown)'}")
    ax.legend(loc="upper right", fontsize=8)
    order = result.x.argsort()
    axes[1].plot(x[order], result.x_hat.numpy()[order], lw=1)
    axes[1].axvspan(lo, hi, color="tab:green", alpha=0.1, label="representable")
    axes[1].set(title="x -> dequantize(quantize(x))", xlabel="x", ylabel="x_hat")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[2].plot(x[order], result.error.numpy()[order], lw=0.8)
    for bound in (-result.scale / 2, result.scale / 2):
        axes[2].axhline(bound, color="tab:orange", ls="--", lw=1)
    axes[2].set(title="error x_hat - x  (dashed: +-S/2)", xlabel="x")
    fig.suptitle(f"{result.bits}-bit {result.scheme}: S = {result.scale:.4g}, Z = {result.zero_point}, "
                 f"SQNR = {qmath.sqnr_db(result.x, result.x_hat):.1f} dB", y=1.03)
    return fig


def _show(bits, value_range, scheme, distribution) -> Exploration:
    result = explore(bits, value_range[0], value_range[1], scheme, distribution)
    plot_exploration(result)
    plt.show()
    return result


def explorer():
    """Sliders for bit width, calibration range, scheme and sample; `.result` is the Exploration."""
    import ipywidgets as widgets

    return widgets.interactive(
        _show,
        bits=widgets.IntSlider(value=3, min=2, max=8, description="bits", continuous_update=False),
        value_range=widgets.FloatRangeSlider(value=(-3.0, 3.0), min=-6.0, max=6.0, step=0.1,
                                             description="range", continuous_update=False),
        scheme=widgets.Dropdown(options=SCHEMES, value="affine", description="scheme"),
        distribution=widgets.Dropdown(options=DISTRIBUTIONS, value="gaussian", description="sample"),
    )
