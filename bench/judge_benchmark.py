"""`rftloop bench judge`: the canary judge's error rates, by simulation of its own decision code.

Each trial publishes a candidate at a 5 % share and feeds a ``CanaryBook`` (the object the judge
process runs) one closed 10 s window per version at a time, 20 rated responses per window split
by the current traffic share (binomially), thumbs up with the version's true rate, and lets it
decide after every window, ramps included, until it promotes or rolls back. The peer is the
judge's previous rule (a fixed one-sided two-proportion z-test at 1.64 re-run after every window,
``fixed_z_rule`` below), driven through the same book, the same windows (same seeds) in the same run.
"""

from __future__ import annotations

import math
import random
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from statistics import NormalDist
from typing import Any

from bench.harness import Context, Result
from infra.settings import JudgeSettings
from schemas.events import MetricsWindow, ModelVersionEvent, VersionEventKind, WindowKind
from streams.canary_book import CanaryBook
from streams.verdict import Totals, Verdict, judge, two_proportion_z

Rule = Callable[..., Verdict]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RATED_PER_WINDOW = 20
START_SHARE = 0.05
TRIALS = 2000


def fixed_z_rule(
    candidate: Totals,
    incumbent: Totals,
    cfg: JudgeSettings,
    share: float = 0.0,
    age_s: float = 0.0,
    gated: str | None = None,
) -> Verdict:
    """The judge before the confidence sequence (the peer): min 30 rated a side, then a fixed
    z-test at ``confidence`` at every look; ramp while z >= 0; roll back after 400 undecided."""
    figures: dict[str, float] = {}
    if candidate.rated < 30 or incumbent.rated < 30:
        return Verdict(None, ["waiting"], figures)
    z = two_proportion_z(candidate.positive, candidate.rated, incumbent.positive, incumbent.rated)
    critical = NormalDist().inv_cdf(cfg.confidence)
    if z <= -critical:
        return Verdict(VersionEventKind.rolled_back, ["worse"], figures)
    if z >= critical:
        return Verdict(VersionEventKind.promoted, ["better"], figures)
    if candidate.rated >= 400:
        return Verdict(VersionEventKind.rolled_back, ["not shown to be better"], figures)
    steps = [x for x in cfg.steps() if x > share]
    done = len(cfg.steps()) - len(steps)
    if steps and z >= 0 and candidate.rated >= 30 * (done + 1):
        return Verdict(VersionEventKind.ramped, ["holding up"], figures, steps[0])
    return Verdict(None, ["undecided"], figures)


def metrics_window(version: str, start: datetime, up: int, down: int, **extra: Any) -> MetricsWindow:
    """One closed 10 s tumbling window of model ``m`` with these thumbs (``extra``: other fields);
    the unit tests build theirs with it too."""
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "producer": "bench",
        "model": "m",
        "version": version,
        "window_start": start,
        "window_end": start + timedelta(seconds=10),
        "window_size_s": 10,
        "window_kind": WindowKind.tumbling,
        "requests": up + down,
        "errors": 0,
        "error_rate": 0.0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_total": Decimal(0),
        "thumbs_up": up,
        "thumbs_down": down,
    }
    return MetricsWindow(**(fields | extra))


def _votes(rng: random.Random, n: int, p: float, cluster: int) -> int:
    """Positive votes among n, from users of ``cluster`` votes each whose own rate varies around p
    (Beta, intra-user correlation 0.1) when cluster > 1: sticky users."""
    if cluster <= 1:
        return sum(rng.random() < p for _ in range(n))
    up = 0
    for i in range(0, n, cluster):
        pu = rng.betavariate(p * 9, (1 - p) * 9) if 0 < p < 1 else p
        up += sum(rng.random() < pu for _ in range(min(cluster, n - i)))
    return up


@dataclass
class Outcome:
    kind: VersionEventKind
    rated: int  # candidate rated responses when decided
    served: int  # candidate requests served before the decision
    seconds: float


# what a candidate that passed the trainer's gate carries on model.versions (its eval figures)
GATED = {"gain": 0.07, "gain_lower": 0.02, "gain_upper": 0.12}


def trial(
    rule: Rule,
    cfg: JudgeSettings,
    p_cand: float,
    p_inc: float,
    seed: int,
    cluster: int = 1,
    gate: dict[str, float] | None = None,
    start_share: float = START_SHARE,
) -> Outcome:
    """One canary; ``gate``: the gate's figures it was published with (None: none); ``start_share``:
    the share it is published at."""
    rng = random.Random(seed)
    book = CanaryBook(cfg, rule=rule)
    book.on_version(
        ModelVersionEvent(
            event_id=uuid.uuid4(),
            producer="bench",
            kind=VersionEventKind.published,
            model="m",
            version="cand",
            parent_version="base",
            traffic_share=start_share,
            eval=gate or {},
            occurred_at=T0,
            decision="canary",
        )
    )
    rated = 0
    for k in range(100_000):
        canaries = {c.version: c for c in book.fold.canaries()}
        if "cand" not in canaries:
            break
        share = canaries["cand"].share or 0.0
        start = T0 + timedelta(seconds=10 * k)
        n_c = sum(rng.random() < share for _ in range(RATED_PER_WINDOW))
        n_i = RATED_PER_WINDOW - n_c
        up_c, up_i = _votes(rng, n_c, p_cand, cluster), _votes(rng, n_i, p_inc, cluster)
        rated += n_c
        book.on_window(metrics_window("cand", start, up_c, n_c - up_c))
        book.on_window(metrics_window("base", start, up_i, n_i - up_i))
        for event in book.decide(start + timedelta(seconds=10)):
            if event.kind != VersionEventKind.ramped:
                return Outcome(event.kind, rated, rated, 10.0 * (k + 1))
    raise AssertionError("the judge never decided")  # max_canary_s bounds every trial


def run(
    rule: Rule,
    cfg: JudgeSettings,
    p_cand: float,
    p_inc: float,
    trials: int,
    cluster: int = 1,
    gate: dict[str, float] | None = None,
    start_share: float = START_SHARE,
) -> list[Outcome]:
    return [trial(rule, cfg, p_cand, p_inc, seed, cluster, gate, start_share) for seed in range(trials)]


def _share(outcomes: list[Outcome], kind: VersionEventKind) -> float:
    return sum(o.kind == kind for o in outcomes) / len(outcomes)


def _interval(k: float, n: int) -> str:
    """Wilson 95 % interval of a simulated share, so a reader sees the simulation's own noise."""
    z = 1.96
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return f"[{centre - half:.3f}, {centre + half:.3f}]"


def judge_figures(ctx: Context, trials: int = TRIALS) -> list[Result]:
    cfg = JudgeSettings()
    method = (
        f"{trials} simulated canaries per scenario through streams.canary_book.CanaryBook (the judge "
        f"process's decision code, default JudgeSettings): candidate published at {START_SHARE:.0%}, one "
        f"closed 10 s window per version at a time with {RATED_PER_WINDOW} rated responses split binomially "
        "by the current share (ramps applied), thumbs up with the version's true rate, a decision after "
        "every window. Peer: the previous rule (fixed one-sided z-test at 1.64 after every window, min 30, "
        "max 400), same book, same seeds, same run"
    )
    out: list[Result] = []
    scenarios = {
        "aa": (0.30, 0.30, 1),
        "plus10": (0.40, 0.30, 1),
        "broken": (0.0, 0.30, 1),
        "aa_sticky": (0.30, 0.30, 5),
    }
    res = {
        name: (run(judge, cfg, pc, pi, trials, cl), run(fixed_z_rule, cfg, pc, pi, trials, cl))
        for name, (pc, pi, cl) in scenarios.items()
    }
    promoted = VersionEventKind.promoted
    ours, peer = res["aa"]
    k = _share(ours, promoted)
    out.append(
        Result(
            "judge.aa_false_promotion",
            k,
            "share promoted",
            "fixed z-test (previous judge)",
            _share(peer, promoted),
            "<= 0.05",
            f"{method}. Equal candidate (0.30 vs 0.30); 95 % interval of ours {_interval(k * trials, trials)}",
            higher_is_better=False,
            goal_value=0.05,
        )
    )
    ours, peer = res["aa_sticky"]
    k = _share(ours, promoted)
    out.append(
        Result(
            "judge.aa_false_promotion_sticky",
            k,
            "share promoted",
            "fixed z-test (previous judge)",
            _share(peer, promoted),
            "<= 0.05 (measured, not assumed)",
            f"{method}. Equal candidate, votes in runs of 5 from one user whose own rate is Beta around 0.30 "
            f"(intra-user correlation 0.1); 95 % interval of ours {_interval(k * trials, trials)}",
            higher_is_better=False,
            goal_value=0.05,
        )
    )
    ours, peer = res["plus10"]
    decided = [o.rated for o in ours if o.kind == promoted]
    out.append(
        Result(
            "judge.power_plus10",
            _share(ours, promoted),
            "share promoted",
            "fixed z-test (previous judge)",
            _share(peer, promoted),
            ">= 0.80",
            f"{method}. Candidate 0.40 vs incumbent 0.30; median rated candidate responses to a promotion: "
            f"{statistics.median(decided) if decided else float('nan'):.0f} (peer "
            f"{statistics.median([o.rated for o in peer if o.kind == promoted] or [float('nan')]):.0f})",
            goal_value=0.80,
        )
    )
    out += _gated(trials, method)
    out += _gated_demo(trials)
    ours, peer = res["broken"]
    out.append(
        Result(
            "judge.broken_rated_to_rollback",
            statistics.median(o.rated for o in ours),
            "rated responses",
            "fixed z-test (previous judge)",
            statistics.median(o.rated for o in peer),
            "<= 30",
            f"{method}. Broken candidate (0.0 vs 0.30): median rated candidate responses before its rollback; "
            f"rolled back in {_share(ours, VersionEventKind.rolled_back):.1%} of trials",
            higher_is_better=False,
            goal_value=30,
        )
    )
    return out


def _gated_scenarios(
    trials: int,
    cfg: JudgeSettings,
    strict: JudgeSettings,
    p_inc: float,
    start_share: float,
    peer_name: str,
    method: str,
    scenarios: tuple[tuple[str, float, str, float | None, str], ...],
) -> list[Result]:
    """Each (name, candidate's live rate, goal, goal value, text): ``trials`` gated canaries judged
    with the path (``cfg``) and without it (``strict``), same seeds; the share promoted."""
    promoted = VersionEventKind.promoted
    out = []
    for name, p_cand, goal, goal_value, text in scenarios:
        ours = run(judge, cfg, p_cand, p_inc, trials, 1, GATED, start_share)
        peer = run(judge, strict, p_cand, p_inc, trials, 1, GATED, start_share)
        k = _share(ours, promoted)
        out.append(
            Result(
                name,
                k,
                "share promoted",
                peer_name,
                _share(peer, promoted),
                goal,
                f"{method}. {text}; 95 % interval of ours {_interval(k * trials, trials)}",
                higher_is_better=p_cand > p_inc,
                goal_value=goal_value,
            )
        )
    return out


def _gated(trials: int, method: str) -> list[Result]:
    """The gated path (JudgeSettings.gated_margin): candidates published with the gate's significant
    held-out gain, judged with a 0.05 margin (ours) and without the path (peer: margin 0, today's
    default), same seeds."""
    common = (
        f"{method}, except the peer: the same judge without the gated path (gated_margin 0, the default). "
        f"Candidates published with the gate's figures {GATED} (a significant held-out gain), ours with "
        "RFTLOOP_JUDGE_GATED_MARGIN=0.05"
    )
    scenarios = (
        (
            "judge.gated_false_promotion_minus5",
            0.25,
            "<= 0.05",
            0.05,
            "Gated candidate 5 points worse live (0.25 vs 0.30): the gate was wrong, or live traffic "
            "differs from its held-out set; promoted only if shown not worse by more than the margin",
        ),
        (
            "judge.gated_promotion_aa",
            0.30,
            "report (x the gate's false-publish rate, <= 0.025)",
            None,
            "Gated candidate equal live (0.30 vs 0.30): it reaches the canary only when the gate passed a "
            "no-better candidate (at most 2.5 %, `sequential_gate`), so the loop promotes it with at most "
            "0.025 x this share",
        ),
        (
            "judge.gated_power_plus7",
            0.37,
            "report",
            None,
            "Gated candidate 7 points better live (0.37 vs 0.30), the size of a third generation's live gain "
            "in the demo",
        ),
    )
    cfg, strict = JudgeSettings(gated_margin=0.05), JudgeSettings()
    return _gated_scenarios(
        trials, cfg, strict, 0.30, START_SHARE, "the judge without the gated path", common, scenarios
    )


def _gated_demo(trials: int) -> list[Result]:
    """The gated path at `make demo`'s judge settings (cli/demo.py): canaries on half the traffic,
    ratings from 25, undecided after 300, margin 0.05; parents right ~60 % of the time, as the
    demo's second and third generations' are. Peer: the same settings without the path."""
    strict = JudgeSettings(min_samples=25, max_samples=300, ramp_steps="0.5")
    cfg = strict.model_copy(update={"gated_margin": 0.05})
    method = (
        f"{trials} simulated canaries per scenario through streams.canary_book.CanaryBook at make demo's "
        "judge settings (RFTLOOP_JUDGE_MIN_SAMPLES=25, MAX_SAMPLES=300, RAMP_STEPS=0.5, GATED_MARGIN=0.05, "
        "the rest default): candidate published at 50 % with the gate's figures "
        f"{GATED}, one closed 10 s window per version at a time with {RATED_PER_WINDOW} rated responses "
        "split binomially by the share, thumbs up with the version's true rate, a decision after every "
        "window. Peer: the same settings and seeds without the gated path (margin 0)"
    )
    scenarios: tuple[tuple[str, float, str, float | None, str], ...] = (
        (
            "judge.gated_false_promotion_minus5_demo",
            0.55,
            "<= 0.10 (the bound: 2 x (1 - confidence))",
            0.10,
            "Gated candidate 5 points worse live (0.55 vs 0.60)",
        ),
        ("judge.gated_promotion_aa_demo", 0.60, "report", None, "Gated candidate equal live (0.60 vs 0.60)"),
        (
            "judge.gated_power_plus7_demo",
            0.67,
            "report",
            None,
            "Gated candidate 7 points better live (0.67 vs 0.60)",
        ),
    )
    return _gated_scenarios(
        trials, cfg, strict, 0.60, 0.5, "the same judge without the gated path", method, scenarios
    )
