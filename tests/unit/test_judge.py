"""The canary judge's decisions on summed windows (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from bench.judge_benchmark import metrics_window
from infra.settings import JudgeSettings
from schemas.events import MetricsWindow, VersionEventKind
from streams.sketch import DDSketch
from streams.verdict import Totals, judge, two_proportion_z

CFG = JudgeSettings(min_samples=30, max_samples=300, confidence=0.95, min_requests=20, ramp_steps="")


def window(
    version: str,
    up: int,
    down: int,
    requests: int = 100,
    errors: int = 0,
    latency: float = 100.0,
    cost: str = "0.01",
) -> MetricsWindow:
    sketch = DDSketch()
    for _ in range(requests - errors):
        sketch.add(latency)
    return metrics_window(
        version,
        datetime(2026, 1, 1, tzinfo=UTC),
        up,
        down,
        requests=requests,
        errors=errors,
        error_rate=errors / requests,
        cost_total=Decimal(cost),
        latency_sketch=sketch.to_bytes(),
    )


def totals(*windows: MetricsWindow) -> Totals:
    t = Totals()
    for w in windows:
        t.add(w)
    return t


def test_two_proportion_z_matches_the_textbook_value() -> None:
    # 60/100 vs 45/100: pooled 0.525, se 0.07062 -> z 2.124
    assert round(two_proportion_z(60, 100, 45, 100), 3) == 2.124
    assert two_proportion_z(0, 10, 0, 10) == 0.0


def test_clearly_better_is_promoted_clearly_worse_rolled_back() -> None:
    inc = totals(window("base", 40, 60))
    better = judge(totals(window("v1", 70, 30)), inc, CFG)
    assert better.kind == VersionEventKind.promoted and better.reasons[0].startswith("better")
    worse = judge(totals(window("v1", 15, 85)), inc, CFG)
    assert worse.kind == VersionEventKind.rolled_back and worse.reasons[0].startswith("worse")
    assert (
        worse.figures["candidate_positive_rate"] == 0.15 and worse.figures["incumbent_positive_rate"] == 0.4
    )


def test_it_waits_for_enough_samples_and_gives_up_on_an_unproven_candidate() -> None:
    inc = totals(window("base", 40, 60))
    assert judge(totals(window("v1", 10, 5, requests=15)), inc, CFG).kind is None
    same = judge(totals(window("v1", 41, 59)), inc, CFG)
    assert same.kind is None and same.reasons[0].startswith("undecided")
    long = judge(totals(*[window("v1", 41, 59)] * 4), inc, CFG)
    assert long.kind == VersionEventKind.rolled_back and "not shown to be better" in long.reasons[0]


def test_budgets_roll_back_before_any_reward_test() -> None:
    inc = totals(window("base", 40, 60))
    slow = judge(totals(window("v1", 90, 10, latency=400.0)), inc, CFG)
    assert slow.kind == VersionEventKind.rolled_back and "p95 latency" in slow.reasons[0]
    failing = judge(totals(window("v1", 90, 10, errors=30)), inc, CFG)
    assert failing.kind == VersionEventKind.rolled_back and "error rate" in failing.reasons[0]
    inc3 = totals(*[window("base", 40, 60)] * 3)  # cost bounds need 3 windows a side
    pricey = judge(totals(*[window("v1", 90, 10, cost="0.05")] * 3), inc3, CFG)
    assert pricey.kind == VersionEventKind.rolled_back and "cost/request" in pricey.reasons[0]


def test_a_cost_over_budget_on_one_noisy_window_is_not_yet_a_rollback() -> None:
    """Point cost 2.3x the incumbent's (budget 1.5x), but one window in three carries it: the
    bound between windows cannot show it yet (the old point comparison rolled back)."""
    inc3 = totals(*[window("base", 40, 60, cost="1.0")] * 3)
    noisy = totals(
        window("v1", 90, 10, cost="1.0"), window("v1", 90, 10, cost="1.0"), window("v1", 90, 10, cost="5.0")
    )
    assert noisy.cost_per_request > 1.5 * inc3.cost_per_request
    assert judge(noisy, inc3, CFG).kind != VersionEventKind.rolled_back


def test_a_candidate_holding_up_is_ramped_step_by_step_and_a_worse_one_never() -> None:
    cfg = CFG.model_copy(update={"ramp_steps": "0.25,0.5"})
    inc = totals(window("base", 40, 60))
    first = judge(
        totals(window("v1", 13, 17, requests=30, cost="0.003")), inc, cfg, share=0.05
    )  # 30 rated, z >= 0
    assert first.kind == VersionEventKind.ramped and first.share == 0.25
    assert first.reasons[0].startswith("holding up, traffic 5% -> 25%")
    # the next step needs another min_samples rated responses
    assert judge(totals(window("v1", 20, 25, requests=45, cost="0.0045")), inc, cfg, share=0.25).kind is None
    second = judge(totals(window("v1", 28, 32, requests=60, cost="0.006")), inc, cfg, share=0.25)
    assert second.kind == VersionEventKind.ramped and second.share == 0.5
    assert (
        judge(totals(window("v1", 40, 50, requests=90, cost="0.009")), inc, cfg, share=0.5).kind is None
    )  # top step
    trailing = judge(
        totals(window("v1", 10, 20, requests=30, cost="0.003")), inc, cfg, share=0.05
    )  # z < 0, not significant
    assert trailing.kind is None and trailing.reasons[0].startswith("undecided")


def test_ramp_steps_are_checked_at_startup() -> None:
    import pytest
    from pydantic import ValidationError

    for bad in ("0.5,0.25", "1.5", "half"):
        with pytest.raises(ValidationError, match="RFTLOOP_JUDGE_RAMP_STEPS"):
            JudgeSettings(ramp_steps=bad)


def test_a_gated_candidate_not_shown_better_live_is_promoted_only_when_not_worse_by_the_margin() -> None:
    """After max_samples undecided: the gate's significant held-out gain plus a live difference
    whose anytime lower bound is above -margin promotes; without the gate's gain, with the path off,
    or with the lower bound below -margin, it is rolled back as before."""
    inc = totals(*[window("base", 40, 60)] * 8)
    slightly_better = totals(*[window("v1", 43, 57)] * 8)  # +0.03 on 800 a side: 95 % lower bound (once) -0.011
    slightly_worse = totals(*[window("v1", 37, 63)] * 8)  # -0.03: -0.070
    gain = "+0.120 [+0.027, +0.212]"
    on = CFG.model_copy(update={"gated_margin": 0.05})
    promoted = judge(slightly_better, inc, on, gated=gain)
    assert promoted.kind == VersionEventKind.promoted and promoted.reasons[0].startswith("gated")
    assert gain in promoted.reasons[0] and round(promoted.figures["difference_lower_once"], 3) == -0.011
    assert promoted.figures["difference_lower"] < -0.011  # the confidence sequence: wider
    assert judge(slightly_better, inc, on).kind == VersionEventKind.rolled_back  # no gate gain
    assert judge(slightly_better, inc, CFG, gated=gain).kind == VersionEventKind.rolled_back  # path off
    worse = judge(slightly_worse, inc, on, gated=gain)
    assert worse.kind == VersionEventKind.rolled_back and "not shown to be better" in worse.reasons[0]
    assert round(worse.figures["difference_lower_once"], 3) == -0.070
