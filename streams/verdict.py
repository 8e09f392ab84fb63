"""The canary judge: compare a candidate with its incumbent on live MetricsWindows; promote or roll back.

It follows ``model.versions`` (who is incumbent, which candidates are in canary) and the closed
MetricsWindows of one window spec (tumbling 10 s by default), each window once by its event id
(a restarted stream worker re-sends closed windows under the same ids). For a candidate it sums
both versions' windows that started after the candidate was published — the same period for both —
and after every window decides:

- roll back at once when the candidate breaks a budget *beyond its uncertainty*: the error-rate
  increase's anytime-valid lower bound above ``max_error_rate_increase``; the candidate's p95
  latency's lower confidence bound above the incumbent's upper bound times ``max_latency_ratio``
  (p95s from the merged DDSketches, order-statistic bounds); the candidate's cost per request's
  lower bound above the incumbent's upper bound times ``max_cost_ratio`` (ratio estimator, spread
  between windows; at least 3 windows a side). Cost is the gateway's engine time on the request
  (vLLM's scheduled -> last token) plus tokens, not wall time with queueing;
- test the reward on a confidence sequence of the difference in positive rate
  (``streams.sequential``): valid at every look, so the false-promotion rate of an equal candidate
  stays at ``1 - confidence`` however many windows it looks at. Lower bound above 0 with at least
  ``min_samples`` rated responses -> promote; upper bound below 0 with at least
  ``min_rollback_samples`` -> roll back as worse;
- not decided yet but holding up (estimate >= 0): ramp its traffic share through ``ramp_steps``
  (one step per ``min_samples`` rated responses), so a good candidate is decided sooner while a bad
  one is caught at the first, small share;
- no decision after ``max_samples`` rated responses -> roll back ("not shown to be better"), unless
  the candidate was published with the trainer gate's significant held-out gain (paired, on the
  serving engine) and ``gated_margin`` > 0: then it is promoted when live it is shown not worse than
  the incumbent by more than that margin: a one-sided bound at ``confidence`` above -margin. That
  test is taken once, at the first look with ``max_samples``, so it is a fixed-sample bound (~0.6x
  the confidence sequence's width), not the sequence. The gate proves the gain, with far more power
  than live thumbs (a paired test on the same prompts); the canary shows live quality did not drop.
  A candidate worse by the margin or more is promoted with probability at most 2 (1 - confidence)
  (the sequence's error at any earlier look, plus this test's once), simulated by
  ``rftloop bench judge`` (``judge.gated_false_promotion_minus5``); no
  traffic at all after ``no_traffic_s`` (every gateway refused it, say) or still undecided after
  ``max_canary_s`` -> roll back with that reason: no candidate waits forever.

The unit is the rated request: the windows count a request's user votes once per kind (stage 1).
What a promotion guarantees, and what it does not, is in the README ("Training and canary decisions").

Each decision is a ModelVersionEvent (promoted / ramped / rolled_back) with the figures and the
reasons; the gateways apply it at once. Nothing is decided until both topics are replayed to where
they ended at start, so decisions already on the topic (manual ones too) are respected on restart.
Memory is bounded: windows older than every live canary (and than ``keep_windows_s``) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from statistics import NormalDist

from infra.settings import JudgeSettings
from schemas.events import MetricsWindow, VersionEventKind
from streams.sequential import difference_variance, rate_difference
from streams.sketch import DDSketch


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    positive: int = 0  # thumbs up, or rewards > 0 when a window has no thumbs
    rated: int = 0
    cost: Decimal = Decimal(0)
    latency: DDSketch = field(default_factory=DDSketch)
    votes: list[tuple[int, int]] = field(default_factory=list)  # (positive, rated) per window
    costs: list[tuple[float, int]] = field(default_factory=list)  # (cost, requests) per window

    def add(self, w: MetricsWindow) -> None:
        self.requests += w.requests
        self.errors += w.errors
        self.cost += w.cost_total
        if w.requests:
            self.costs.append((float(w.cost_total), w.requests))
        votes = w.thumbs_up + w.thumbs_down
        up = 0
        if votes:
            up = w.thumbs_up
        elif w.reward_count and w.reward_mean is not None:
            # mean on the [-1, 1] reward scale over n rewards -> how many were positive (exact for
            # the +-1 rewards of thumbs and 0/1 evaluator scores; mean-preserving otherwise)
            votes, up = w.reward_count, round(w.reward_count * (w.reward_mean + 1) / 2)
        if votes:
            self.positive += up
            self.rated += votes
            self.votes.append((up, votes))
        if w.latency_sketch:
            self.latency.merge(DDSketch.from_bytes(w.latency_sketch))

    @property
    def rate(self) -> float:
        return self.positive / self.rated if self.rated else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def cost_per_request(self) -> float:
        return float(self.cost) / self.requests if self.requests else 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_requests": float(self.requests),
            f"{prefix}_rated": float(self.rated),
            f"{prefix}_positive_rate": self.rate,
            f"{prefix}_error_rate": self.error_rate,
            f"{prefix}_latency_p95_ms": self.latency.quantile(0.95) or 0.0,
            f"{prefix}_cost_per_request": self.cost_per_request,
        }


def dispersion(*sides: Totals, min_windows: int = 5) -> float:
    """How much more the windows' positive rates vary than independent votes would (Pearson's
    chi-square over the windows, per degree of freedom; quasi-binomial), at least 1. Sticky users
    whose votes agree make it > 1, and the judge widens its interval by it: votes that move
    together are fewer independent facts than their count."""
    chi2, dof = 0.0, 0
    for t in sides:
        if len(t.votes) < min_windows:
            continue
        p = (t.positive + 1) / (t.rated + 2)
        chi2 += sum((x - n * p) ** 2 / (n * p * (1 - p)) for x, n in t.votes)
        dof += len(t.votes) - 1
    return max(1.0, chi2 / dof) if dof else 1.0


@dataclass
class Verdict:
    kind: VersionEventKind | None  # None: keep watching
    reasons: list[str]
    figures: dict[str, float]
    share: float | None = None  # the new traffic share of a ramp


def two_proportion_z(p1: int, n1: int, p2: int, n2: int) -> float:
    """z of (rate1 - rate2) with the pooled standard error; 0 when it is undefined (shown in the
    figures for reference; decisions use the confidence sequence)."""
    pooled = (p1 + p2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else (p1 / n1 - p2 / n2) / se


def p95_bounds(sketch: DDSketch, n: int, z: float) -> tuple[float | None, float | None]:
    """Lower and upper confidence bounds of the p95 from n values: the sketch's quantiles at the
    order-statistic ranks 0.95 -+ z * sqrt(0.95 * 0.05 / n) (distribution-free)."""
    if n <= 0:
        return None, None
    half = z * math.sqrt(0.95 * 0.05 / n)
    return sketch.quantile(max(0.0, 0.95 - half)), sketch.quantile(min(1.0, 0.95 + half))


def cost_bounds(t: Totals, z: float, min_windows: int = 3) -> tuple[float | None, float | None]:
    """Bounds of the cost per request: the ratio estimator sum(cost) / sum(requests) with its
    spread between windows (windows as clusters: no per-request cost travels in them)."""
    k = len(t.costs)
    n = sum(r for _, r in t.costs)
    if k < min_windows or not n:
        return None, None
    ratio = sum(c for c, _ in t.costs) / n
    var = sum((c - ratio * r) ** 2 for c, r in t.costs) / n**2 * k / (k - 1)
    half = z * math.sqrt(var)
    return ratio - half, ratio + half


def _budgets(candidate: Totals, incumbent: Totals, cfg: JudgeSettings, alpha: float) -> list[str]:
    """The budgets the candidate breaks beyond their uncertainty (empty: none)."""
    reasons = []
    err = rate_difference(
        candidate.errors, candidate.requests, incumbent.errors, incumbent.requests, alpha, cfg.mixture_tau
    )
    if err.lower > cfg.max_error_rate_increase:
        reasons.append(
            f"error rate {candidate.error_rate:.3f} vs incumbent {incumbent.error_rate:.3f}: increase {err} "
            f"above the budget +{cfg.max_error_rate_increase:.3f}"
        )
    z = NormalDist().inv_cdf(1 - alpha)
    c_lo, _ = p95_bounds(candidate.latency, candidate.latency.count, z)
    _, i_hi = p95_bounds(incumbent.latency, incumbent.latency.count, z)
    if c_lo and i_hi and c_lo > i_hi * cfg.max_latency_ratio:
        reasons.append(
            f"p95 latency {candidate.latency.quantile(0.95):.0f} ms (at least {c_lo:.0f}) vs "
            f"{incumbent.latency.quantile(0.95):.0f} ms (at most {i_hi:.0f}), budget {cfg.max_latency_ratio:.2f}x"
        )
    c_lo_cost, _ = cost_bounds(candidate, z)
    _, i_hi_cost = cost_bounds(incumbent, z)
    if c_lo_cost and i_hi_cost and c_lo_cost > i_hi_cost * cfg.max_cost_ratio:
        reasons.append(
            f"cost/request {candidate.cost_per_request:.6f} (at least {c_lo_cost:.6f}) vs "
            f"{incumbent.cost_per_request:.6f} (at most {i_hi_cost:.6f}), budget {cfg.max_cost_ratio:.2f}x"
        )
    return reasons


def judge(
    candidate: Totals,
    incumbent: Totals,
    cfg: JudgeSettings,
    share: float = 0.0,
    age_s: float = 0.0,
    gated: str | None = None,
) -> Verdict:
    """Decide on a candidate now serving ``share`` of the traffic, ``age_s`` after it was published
    (see the module doc). ``gated``: the trainer gate's significant held-out gain the candidate was
    published with, in words (None: none; ``cfg.gated_margin`` then never applies)."""
    figures = {**candidate.figures("candidate"), **incumbent.figures("incumbent")}
    alpha = 1 - cfg.confidence
    if candidate.requests == 0 and age_s >= cfg.no_traffic_s:
        return Verdict(
            VersionEventKind.rolled_back,
            [f"no traffic {age_s:.0f} s after it was published: no gateway serves it (refused?)"],
            figures,
        )
    if candidate.requests >= cfg.min_requests and incumbent.requests >= cfg.min_requests:
        reasons = _budgets(candidate, incumbent, cfg, alpha)
        if reasons:
            return Verdict(VersionEventKind.rolled_back, reasons, figures)
    phi = dispersion(candidate, incumbent)
    diff = rate_difference(
        candidate.positive, candidate.rated, incumbent.positive, incumbent.rated, alpha, cfg.mixture_tau, phi
    )
    figures |= {
        "difference": diff.estimate,
        "difference_lower": diff.lower,
        "difference_upper": diff.upper,
        "dispersion": phi,
    }
    if candidate.rated and incumbent.rated:
        figures["z"] = two_proportion_z(
            candidate.positive, candidate.rated, incumbent.positive, incumbent.rated
        )
    summary = (
        f"positive feedback {candidate.rate:.3f} (n={candidate.rated}) vs incumbent {incumbent.rate:.3f} "
        f"(n={incumbent.rated}), difference {diff} at {cfg.confidence:.0%} (anytime)"
    )
    enough = min(candidate.rated, incumbent.rated)
    if enough >= cfg.min_rollback_samples and diff.upper < 0:
        return Verdict(VersionEventKind.rolled_back, [f"worse: {summary}"], figures)
    if enough >= cfg.min_samples and diff.lower > 0:
        return Verdict(VersionEventKind.promoted, [f"better: {summary}"], figures)
    if candidate.rated >= cfg.max_samples:
        if gated and cfg.gated_margin > 0:
            # one look, at max_samples: a fixed-sample one-sided bound at the judge's confidence
            var = difference_variance(
                candidate.positive, candidate.rated, incumbent.positive, incumbent.rated, phi
            )
            lower = diff.estimate - NormalDist().inv_cdf(cfg.confidence) * math.sqrt(var)
            figures["difference_lower_once"] = lower
            if lower > -cfg.gated_margin:
                return Verdict(
                    VersionEventKind.promoted,
                    [
                        f"gated, and not worse live: the gate's held-out gain {gated}; live not shown better "
                        f"after {candidate.rated}, but {diff.estimate:+.3f} with a {cfg.confidence:.0%} lower "
                        f"bound (one look) of {lower:+.3f}, above -{cfg.gated_margin:.3f}: {summary}"
                    ],
                    figures,
                )
        return Verdict(
            VersionEventKind.rolled_back,
            [f"not shown to be better after {candidate.rated}: {summary}"],
            figures,
        )
    if age_s >= cfg.max_canary_s:
        return Verdict(
            VersionEventKind.rolled_back,
            [f"canary time limit: undecided after {age_s:.0f} s (max {cfg.max_canary_s:.0f} s): {summary}"],
            figures,
        )
    if enough < cfg.min_samples:
        return Verdict(
            None,
            [f"waiting: {candidate.rated}/{incumbent.rated} rated responses of {cfg.min_samples}"],
            figures,
        )
    # Holding up (not trending worse): give it more traffic, one step per min_samples rated responses,
    # so a good candidate is decided sooner while a bad one is caught at the small first share.
    steps = [x for x in cfg.steps() if x > share]
    done = len(cfg.steps()) - len(steps)
    if steps and diff.estimate >= 0 and candidate.rated >= cfg.min_samples * (done + 1):
        return Verdict(
            VersionEventKind.ramped,
            [f"holding up, traffic {f'{share:.0%} ' if share else ''}-> {steps[0]:.0%}: {summary}"],
            figures,
            steps[0],
        )
    return Verdict(None, [f"undecided: {summary}"], figures)
