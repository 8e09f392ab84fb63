"""The gate's quality comparison: a paired bootstrap of the accuracy gain on the same held-out prompts.

Candidate and incumbent answer the same prompts, so the gain is estimated from the per-prompt
differences (each prompt's share of right answers, candidate minus incumbent): a prompt both get
right or both get wrong adds no noise, which is what makes a paired test far tighter than
comparing two accuracies. The interval is the percentile bootstrap of the mean difference (4,000
resamples of the prompts, a fixed seed so a replayed run gives the same figures): no normal
approximation, which matters on a few dozen 0/1 answers. The gate publishes only when the
interval's lower bound clears ``min_quality_gain`` — a gain of +0.000 ... +0.10 on 31 answers,
whose interval spans zero, is rejected whatever its point estimate.

``needed_prompts`` says how many held-out prompts the gate would need to detect a given gain with
a given power (normal approximation on the observed spread of the differences), so a run reports
whether its held-out set could have shown the gain it hoped for.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist, fmean, pstdev
from typing import Any

RESAMPLES = 4000


@dataclass(frozen=True)
class Gain:
    estimate: float
    lower: float  # of the two-sided interval at ``level``
    upper: float
    level: float
    n: int
    sd: float  # spread of the per-prompt differences

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lower:+.3f}, {self.upper:+.3f}] ({self.level:.1%}, {self.n} prompts, paired)"


@functools.lru_cache(maxsize=8)
def _resamples(n: int, seed: int) -> Any:
    """RESAMPLES x n prompt indices drawn with replacement from a seeded generator: the same for
    every comparison of that size (cached: the gate's simulation compares thousands of times)."""
    import numpy as np

    picks = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n), dtype=np.int32)
    picks.flags.writeable = False
    return picks


def paired_gain(candidate: list[float], incumbent: list[float], level: float = 0.95, seed: int = 0) -> Gain:
    """Mean of candidate[i] - incumbent[i] with its percentile-bootstrap interval."""
    if len(candidate) != len(incumbent) or not candidate:
        raise ValueError("paired_gain needs the same, non-empty list of prompts for both versions")
    import numpy as np

    diffs = [c - i for c, i in zip(candidate, incumbent, strict=True)]
    n = len(diffs)
    means = np.sort(np.asarray(diffs)[_resamples(n, seed)].mean(axis=1))
    tail = (1 - level) / 2
    lo = float(means[math.floor(tail * (RESAMPLES - 1))])
    hi = float(means[math.ceil((1 - tail) * (RESAMPLES - 1))])
    return Gain(fmean(diffs), lo, hi, level, n, pstdev(diffs))


def needed_prompts(sd: float, gain: float, min_gain: float, level: float = 0.95, power: float = 0.8) -> int:
    """Held-out prompts for the interval's lower bound to clear ``min_gain`` with probability
    ``power`` when the true gain is ``gain`` (per-prompt differences with spread ``sd``)."""
    margin = gain - min_gain
    if margin <= 0:
        return 0  # no size can show a gain at or below the required one
    # a gain of g needs at least a share g of prompts answered differently, so the differences
    # spread at least sqrt(g (1 - g)) (one answer per prompt): the floor when the observed spread is
    # smaller, e.g. 0 when both versions answered every prompt alike
    g = min(abs(gain), 1.0)
    floor = math.sqrt(g * (1 - g))
    z = NormalDist().inv_cdf(1 - (1 - level) / 2) + NormalDist().inv_cdf(power)
    return max(1, math.ceil((z * max(sd, floor) / margin) ** 2))


# --- the sequential gate: looks at the held-out set in stages, valid under the repeated looks ------


@functools.lru_cache(maxsize=16)
def obrien_fleming(looks: int, alpha: float = 0.025) -> tuple[float, ...]:
    """One-sided z boundaries of an O'Brien-Fleming group-sequential test with ``looks`` equally
    spaced looks and overall type-I error ``alpha``: b_k = c * sqrt(looks / k), with c solved so that
    P(Z_k >= b_k at some look | no gain) = alpha. The crossing probability is computed exactly on a
    grid (Armitage-McPherson-Rowe recursion on the score process, whose increments are independent
    normals), not simulated. One look is the fixed-size test (1.960 at alpha 0.025)."""
    import numpy as np

    if looks < 1:
        raise ValueError("a sequential gate needs at least one look")
    norm = NormalDist()
    if looks == 1:
        return (norm.inv_cdf(1 - alpha),)
    t = [k / looks for k in range(1, looks + 1)]
    grid = np.linspace(-10.0, 10.0, 1601)
    h = float(grid[1] - grid[0])
    cdf = np.vectorize(norm.cdf)
    sds = [math.sqrt(t[k] - t[k - 1]) for k in range(1, looks)]
    steps = [
        np.exp(-((grid[:, None] - grid[None, :]) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi)) * h
        for sd in sds
    ]

    def crossing(c: float) -> float:
        # On the score scale S_k = Z_k sqrt(t_k) the O'Brien-Fleming boundary is the constant c.
        inside = grid < c
        density = np.exp(-(grid**2) / (2 * t[0])) / math.sqrt(2 * math.pi * t[0]) * inside
        total = 1 - norm.cdf(c / math.sqrt(t[0]))
        for sd, step in zip(sds, steps, strict=True):
            total += float(np.sum(density * (1 - cdf((c - grid) / sd))) * h)
            density = (step @ density) * inside
        return total

    lo, hi = norm.inv_cdf(1 - alpha), norm.inv_cdf(1 - alpha / looks) + 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if crossing(mid) > alpha else (lo, mid)
    c = (lo + hi) / 2
    return tuple(c * math.sqrt(looks / k) for k in range(1, looks + 1))


@dataclass(frozen=True)
class Look:
    gain: Gain  # at this look's level (1 - 2 x its one-sided alpha)
    look: int  # 1-based
    of: int
    verdict: str  # "better" (lower bound above min_gain), "no better" (stop), or "continue"


class SequentialGate:
    """The gate's quality test over ``n`` held-out prompts in ``looks`` stages.

    The prompts are scored in slices (``slices()``); after each, ``look`` says whether the gain is
    shown (the paired bootstrap's lower bound at that look's O'Brien-Fleming level clears
    ``min_gain``: publish), shown absent (an interim look whose point estimate is not above
    ``min_gain``: stop and reject — a non-binding futility rule, which can only lower the type-I
    error), or undecided (score the next slice). The last look uses the final boundary. The
    repeated looks keep the chance of passing a no-better candidate at ``alpha`` (one-sided), where
    stopping at the first look whose 95 % interval clears 0 would not; bench/trainer_benchmark.py
    measures both by simulating this class. A clear gain stops at the first look, half the scoring.
    Looks are at least ``min_look`` prompts apart, so a small held-out set gets fewer looks."""

    def __init__(self, n: int, looks: int, min_gain: float, alpha: float = 0.025, min_look: int = 20) -> None:
        if n < 1:
            raise ValueError("the sequential gate needs at least one held-out prompt")
        self.n, self.min_gain = n, min_gain
        self.looks = max(1, min(looks, n // min_look))
        self.bounds = obrien_fleming(self.looks, alpha)
        self.sizes = [math.ceil(n * k / self.looks) for k in range(1, self.looks + 1)]

    def slices(self) -> list[tuple[int, int]]:
        """(start, end) of the held-out prompts to score before each look."""
        return list(zip([0, *self.sizes[:-1]], self.sizes, strict=True))

    def look(self, candidate: list[float], incumbent: list[float]) -> Look:
        """The verdict on the first ``len(candidate)`` prompts (one of the looks' sizes)."""
        k = self.sizes.index(len(candidate)) if len(candidate) in self.sizes else -1
        if k < 0:
            raise ValueError(f"{len(candidate)} prompts is not one of the looks' sizes {self.sizes}")
        level = 1 - 2 * (1 - NormalDist().cdf(self.bounds[k]))
        gain = paired_gain(candidate, incumbent, level=level)
        if gain.lower > self.min_gain:
            verdict = "better"
        elif k == self.looks - 1 or gain.estimate <= self.min_gain:
            verdict = "no better"
        else:
            verdict = "continue"
        return Look(gain, k + 1, self.looks, verdict)
