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

import math
import random
from dataclasses import dataclass
from statistics import NormalDist, fmean, pstdev

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
        return f"{self.estimate:+.3f} [{self.lower:+.3f}, {self.upper:+.3f}] ({self.level:.0%}, {self.n} prompts, paired)"


def paired_gain(candidate: list[float], incumbent: list[float], level: float = 0.95, seed: int = 0) -> Gain:
    """Mean of candidate[i] - incumbent[i] with its percentile-bootstrap interval."""
    if len(candidate) != len(incumbent) or not candidate:
        raise ValueError("paired_gain needs the same, non-empty list of prompts for both versions")
    diffs = [c - i for c, i in zip(candidate, incumbent, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(fmean(rng.choices(diffs, k=n)) for _ in range(RESAMPLES))
    tail = (1 - level) / 2
    lo = means[math.floor(tail * (RESAMPLES - 1))]
    hi = means[math.ceil((1 - tail) * (RESAMPLES - 1))]
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
