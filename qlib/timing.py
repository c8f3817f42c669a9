"""Timings that hold on any CPU: warm-up, interleaved rounds, medians, spreads, and no verdict
inside the noise.

A laptop or a shared machine changes speed from one second to the next (turbo, other programs,
a first call that allocates and packs weights). So `compare` warms every model up before it
times any, then times them in interleaved rounds (every model once per round, so that a burst of
load lands on no model alone), with torch's thread count fixed. Each model gets the median of its
round medians and a spread: the lowest and highest round median. `verdict` calls one model
faster than another only when their spreads do not overlap (and there were at least MIN_ROUNDS
rounds); otherwise it says "within the noise" (or "not judged").
Notebooks 07, 10 and 11 and `qlib.bench` time with this module.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .engines import engine_active, engine_of
from .errors import BadInputError, check_whole

MIN_ROUNDS = 3   # fewer rounds give no spread worth judging by: no verdict then

# torch's own default intra-op thread count (its number of physical cores), read before anyone changes it.
ALL_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def threads(count: int | None):
    """Fix torch's intra-op thread count inside the block (None: keep the current one)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(check_whole(count, "threads", 1))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Timing:
    """One model's time per call, in milliseconds: median of the round medians and their spread."""

    name: str
    median_ms: float
    low_ms: float           # the fastest round's median
    high_ms: float          # the slowest round's median
    fastest_ms: float       # the fastest single call (the least disturbed one)
    rounds: int
    repeats: int
    threads: int

    def overlaps(self, other: "Timing") -> bool:
        """Do the two spreads overlap (or is either too short to have one)?"""
        if min(self.rounds, other.rounds) < MIN_ROUNDS:
            return True
        return self.low_ms <= other.high_ms and other.low_ms <= self.high_ms


def compare(models: dict, inputs: torch.Tensor, rounds: int = 5, repeats: int = 10, warmup: int = 3,
            num_threads: int | None = 1, progress: bool = False) -> dict[str, Timing]:
    """Time every model on `inputs`: each warmed up (`warmup` untimed calls) before any is timed,
    then `rounds` interleaved rounds of `repeats` timed calls each. Models converted under a
    quantized engine run with that engine active."""
    if not models:
        raise BadInputError("models is empty: pass a dict {name: model} of the models to time.")
    check_whole(rounds, "rounds", 1, example=5)
    check_whole(repeats, "repeats", 1, example=10)
    check_whole(warmup, "warmup", 0, example=3)
    if not isinstance(inputs, torch.Tensor):
        raise BadInputError(f"inputs is {type(inputs).__name__}, not a tensor: pass the batch each model is timed on.")
    for model in models.values():
        if hasattr(model, "eval"):
            model.eval()
    per_round = {name: [] for name in models}
    fastest = {name: float("inf") for name in models}
    with threads(num_threads) as used, torch.inference_mode():
        for model in models.values():
            with engine_active(engine_of(model)):
                for _ in range(warmup):
                    model(inputs)
        with tqdm(total=rounds * len(models), desc="timing", disable=not progress, leave=False) as bar:
            for _ in range(rounds):
                for name, model in models.items():
                    times = []
                    with engine_active(engine_of(model)):     # set once per model and round, not timed
                        for _ in range(repeats):
                            start = time.perf_counter()
                            model(inputs)
                            times.append((time.perf_counter() - start) * 1e3)
                    per_round[name].append(statistics.median(times))
                    fastest[name] = min(fastest[name], min(times))
                    bar.update()
    return {name: Timing(name, statistics.median(medians), min(medians), max(medians), fastest[name], rounds,
                         repeats, used)
            for name, medians in per_round.items()}


def verdict(subject: Timing, reference: Timing) -> str:
    """A sentence comparing two timings, with a direction only where their spreads are apart."""
    ratio = subject.median_ms / reference.median_ms
    numbers = (f"{subject.name} {subject.median_ms:.3g} ms ({subject.low_ms:.3g}-{subject.high_ms:.3g}) vs "
               f"{reference.name} {reference.median_ms:.3g} ms ({reference.low_ms:.3g}-{reference.high_ms:.3g})")
    if min(subject.rounds, reference.rounds) < MIN_ROUNDS:
        return f"{numbers}: {ratio:.2f}x, not judged (fewer than {MIN_ROUNDS} rounds: no spread to judge by)"
    if subject.overlaps(reference):
        return f"{numbers}: {ratio:.2f}x, within the noise of {subject.rounds} rounds (the spreads overlap)"
    word = "faster" if ratio < 1 else "slower"
    return f"{numbers}: {ratio:.2f}x, {subject.name} is {word}"


def is_faster(subject: Timing, reference: Timing) -> bool | None:
    """True / False where the spreads are apart, None where the difference is within the noise."""
    if subject.overlaps(reference):
        return None
    return subject.median_ms < reference.median_ms


def fastest(timings: dict[str, Timing]) -> tuple[str, list[str]]:
    """The fastest model by median, and those whose spread overlaps it (no slower, within the noise)."""
    best = min(timings.values(), key=lambda t: t.median_ms)
    tied = [t.name for t in timings.values() if t.name != best.name and t.overlaps(best)]
    return best.name, tied
