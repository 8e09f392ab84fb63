"""Anytime-valid comparison of two positive rates: a normal-mixture confidence sequence.

The canary judge looks at the running totals after every closed window and may stop at any look.
A fixed-sample test re-run at each look (the judge's old z-test at 1.64) is not valid under that
peeking: measured by simulation of the judge, an equally good candidate was promoted in 23 % of
trials at a nominal 5 %. A confidence *sequence* holds at every look at once: with probability at
least 1 - alpha the true difference stays inside every interval the judge ever computes, so
stopping whenever an interval excludes 0 keeps the error rate at alpha however often it looks.

Chosen over the alternatives because the judge's looks are irregular (a window holds however many
rated responses arrived) and unbounded in number: a group-sequential design with alpha spending
needs the looks' information fractions planned ahead; the mixture boundary needs nothing planned.

Method (Robbins' normal mixture; the always-valid p-values of Johari, Pekelis and Walsh's mSPRT,
and the asymptotic confidence sequences of Waudby-Smith et al., "Time-uniform central limit
theory", 2023): for an estimate d of the difference with variance V, mixing the likelihood ratio
over a N(0, tau^2) prior on the effect gives the boundary

    |d - delta| <= sqrt( V (V + tau^2) / tau^2 * ( log((V + tau^2) / V) + 2 log(1 / a) ) ),

crossed with probability at most a over all looks. The judge uses it one-sided at level alpha
(a = 2 alpha: each tail of the symmetric boundary is crossed with probability at most alpha).
``tau`` tunes where the boundary is tightest: about the effect size one wants to detect quickly
(0.1 here, the 10-point gain; chosen by simulation, see ``rftloop bench judge``).

Assumptions, said plainly: rated responses are independent given the version, or their dependence
shows as extra spread between windows — the windows count a request's user votes once, and the
judge scales the variance by the windows' measured overdispersion (quasi-binomial, at least 1), so
sticky users whose votes agree count as fewer independent votes (``bench judge``'s ``sticky``
scenario measures what that buys; correlation spread thinly across many windows is not seen), and
the normal approximation holds — the
variance uses the add-one rates (x + 1) / (n + 2), so a run of all-wrong answers is not read as
certainty after three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def smoothed_variance(positive: int, n: int) -> float:
    """Variance of a positive rate from n Bernoulli votes, with add-one smoothing."""
    p = (positive + 1) / (n + 2)
    return p * (1 - p) / max(n, 1)


def difference_variance(pa: int, na: int, pb: int, nb: int, dispersion: float = 1.0) -> float:
    """Variance of rate_a - rate_b (add-one smoothed), scaled by ``dispersion`` (at least 1)."""
    return (smoothed_variance(pa, na) + smoothed_variance(pb, nb)) * max(1.0, dispersion)


def mixture_radius(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence at level ``alpha``."""
    if variance <= 0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(
        variance * (variance + t2) / t2 * (math.log((variance + t2) / variance) + 2 * math.log(1 / alpha))
    )


@dataclass(frozen=True)
class RateDifference:
    """rate_a - rate_b with its anytime-valid one-sided bounds."""

    estimate: float
    lower: float
    upper: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lower:+.3f}, {self.upper:+.3f}]"


def rate_difference(
    pa: int, na: int, pb: int, nb: int, alpha: float, tau: float = 0.1, dispersion: float = 1.0
) -> RateDifference:
    """The difference of two positive rates with bounds that each hold at level ``alpha`` at every
    look (the two-sided sequence at 2 alpha); ``dispersion`` (>= 1) scales the variance when votes
    are not independent (``streams.verdict.dispersion``)."""
    d = (pa / na if na else 0.0) - (pb / nb if nb else 0.0)
    r = mixture_radius(difference_variance(pa, na, pb, nb, dispersion), min(1.0, 2 * alpha), tau)
    return RateDifference(d, d - r, d + r)
