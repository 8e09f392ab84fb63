"""The gate's paired comparison (consumers/trainer/paired.py): a gain must be shown, not pointed at."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.trainer.gate import Figures, decide
from consumers.trainer.paired import SequentialGate, needed_prompts, obrien_fleming, paired_gain
from infra.settings import TrainerSettings


def _figures(per_prompt: list[float]) -> Figures:
    acc = sum(per_prompt) / len(per_prompt)
    return Figures(
        accuracy=acc,
        latency_ms=100,
        tokens_per_answer=8,
        tokens_per_s=80,
        n=len(per_prompt),
        per_prompt=per_prompt,
    )


def test_the_readme_gain_of_5_to_8_of_31_is_not_significant() -> None:
    """The README's +9.7 points was 5/31 -> 8/31 held-out answers; the old gate published it
    against a required gain of 0.02. Paired (the 5 right stay right, 3 more), its interval reaches 0."""
    incumbent = [1.0] * 5 + [0.0] * 26
    candidate = [1.0] * 8 + [0.0] * 23
    cfg = TrainerSettings(min_quality_gain=0.0)
    decision, gain = decide(_figures(candidate), _figures(incumbent), cfg)
    assert gain.estimate == pytest.approx(3 / 31)
    assert gain.lower <= 0.0 < gain.upper
    assert not decision.publish and "lower bound not above" in decision.reasons[0]


def test_a_consistent_gain_on_enough_prompts_is_published() -> None:
    incumbent = [0.25] * 80
    candidate = [0.25 + (0.5 if i % 2 else 0.0) for i in range(80)]  # +0.25 on average, every other prompt
    decision, gain = decide(_figures(candidate), _figures(incumbent), TrainerSettings())
    assert decision.publish and gain.lower > 0.1


def test_pairing_is_what_makes_the_interval_tight() -> None:
    """Same accuracies, unpaired-looking noise: the paired interval of identical answers is a point."""
    same = paired_gain([1.0, 0.0, 1.0, 0.0] * 10, [1.0, 0.0, 1.0, 0.0] * 10)
    assert same.estimate == same.lower == same.upper == 0.0
    with pytest.raises(ValueError, match="same, non-empty list"):
        paired_gain([1.0], [1.0, 0.0])


def test_held_out_size_from_power() -> None:
    # sd 0.5 per prompt, +0.10 to show above 0: (2.80 * 0.5 / 0.1)^2 = 196
    assert needed_prompts(0.5, 0.10, 0.0) == 197  # ceil(196.2)
    assert needed_prompts(0.5, 0.02, 0.02) == 0
    # no spread seen (both answered alike): at least the discordance a +0.10 gain needs, sd 0.3
    assert needed_prompts(0.0, 0.10, 0.0) == 71


def test_a_trainer_rank_every_gateway_would_refuse_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gate's engine took ranks up to 64 and the gateways 16: a rank-32 candidate passed the gate
    and waited forever for a gateway. One setting now, checked before anything is read or trained."""
    from consumers.trainer.run import run_once
    from infra.settings import ClickHouseSettings, ConfigError, KafkaSettings, RegistrySettings

    monkeypatch.setenv("RFTLOOP_GATEWAY_MAX_LORA_RANK", "16")
    with pytest.raises(ConfigError, match="RFTLOOP_TRAINER_LORA_RANK=32 is above the gateways'"):
        run_once(
            KafkaSettings(bootstrap_servers="127.0.0.1:1"),
            RegistrySettings(),
            ClickHouseSettings(url="http://127.0.0.1:1"),
            TrainerSettings(lora_rank=32),
            tmp_path,
        )


def test_obrien_fleming_boundaries_match_the_published_table() -> None:
    """Jennison & Turnbull (2000), table 2.3: C_B(K, alpha 0.05 two-sided) = 1.977, 2.004, 2.024, 2.040."""
    assert obrien_fleming(1) == pytest.approx((1.960,), abs=1e-3)
    for looks, c in [(2, 1.977), (3, 2.004), (4, 2.024), (5, 2.040)]:
        bounds = obrien_fleming(looks)
        assert bounds[-1] == pytest.approx(c, abs=2e-3)
        assert bounds[0] == pytest.approx(c * looks**0.5, abs=5e-3)


def test_a_clear_gain_stops_at_the_first_look_and_no_gain_at_an_interim_look_stops_for_futility() -> None:
    seq = SequentialGate(200, 2, min_gain=0.0)
    assert seq.slices() == [(0, 100), (100, 200)]
    better = seq.look([1.0 if i % 2 else 0.0 for i in range(100)], [0.0] * 100)  # +0.5
    assert (better.verdict, better.look) == ("better", 1)
    assert better.gain.level == pytest.approx(1 - 2 * 0.00258, abs=1e-4)  # z 2.797 at look 1
    worse = seq.look([0.0] * 100, [1.0 if i % 4 == 0 else 0.0 for i in range(100)])
    assert worse.verdict == "no better"
    # undecided at look 1 (+0.06 on 100), then the final boundary on all 200
    mixed = [1.0 if i % 2 else 0.0 for i in range(100)]
    base = [1.0 if i % 2 else 0.0 for i in range(94)] + [0.0] * 6
    mixed[1], mixed[3] = 0.0, 0.0  # some discordance both ways
    assert seq.look(mixed, base).verdict == "continue"
    with pytest.raises(ValueError, match="not one of the looks"):
        seq.look([1.0] * 50, [0.0] * 50)


def test_a_small_held_out_set_gets_one_look_the_fixed_test() -> None:
    seq = SequentialGate(31, 2, min_gain=0.0)
    assert seq.looks == 1 and seq.slices() == [(0, 31)]
    assert seq.bounds == pytest.approx((1.960,), abs=1e-3)


def test_the_gate_times_the_two_versions_interleaved_and_scores_every_prompt() -> None:
    """Latency is timed one request at a time, the versions alternating prompt by prompt (a burst of
    other work hits both), quality on every prompt in one batch per version."""
    from consumers.trainer.data import Sample
    from consumers.trainer.engine import Answer
    from consumers.trainer.gate import evaluate

    calls: list[tuple[str | None, int]] = []

    class Fake:
        def prompt(self, sample: Sample) -> str:
            return sample.prompt

        def generate(
            self, prompts: list[str], adapter: str | None, max_tokens: int, temperature: float, *, fresh: bool = False
        ) -> list[Answer]:
            calls.append((adapter, len(prompts)))
            # the candidate answers every question right, the incumbent none
            text = (lambda p: p.split()[-1]) if adapter == "cand" else (lambda p: "0")
            return [Answer(text(p), [1], [1, 2, 3], [0.0]) for p in prompts]

    samples = [Sample(f"r{i}", f"e{i}", f"q {i + 10}", [], "a", 1.0, str(i + 10), "t", 0, i) for i in range(6)]
    out = evaluate(
        Fake(), samples, {"incumbent": None, "candidate": "cand"}, 8, latency_samples=4, temperature=0
    )
    assert out["candidate"].per_prompt == [1.0] * 6 and out["incumbent"].per_prompt == [0.0] * 6
    timed = [adapter for adapter, n in calls if n == 1][2:]  # after the two warm-ups
    assert timed == [None, "cand", "cand", None, None, "cand", "cand", None]
    assert out["candidate"].latency_ms > 0 and out["incumbent"].tokens_per_answer == 3


def test_the_simulated_continued_generation_has_the_shares_its_method_line_states() -> None:
    """bench's trainer.gate_power_plus5_600 says: parent right on 60 %, 20 % of prompts answered
    differently, candidate +5 points. The generator must produce those shares (100 k prompts)."""
    import random

    from bench.gate_benchmark import CONTINUED, _continued

    accuracy, differ, gain = CONTINUED
    candidate, incumbent = _continued(random.Random(5), gain, 100_000)
    n = len(candidate)
    assert abs(sum(incumbent) / n - accuracy) < 0.01
    assert abs(sum(c != i for c, i in zip(candidate, incumbent, strict=True)) / n - differ) < 0.01
    assert abs((sum(candidate) - sum(incumbent)) / n - gain) < 0.01
    same, _ = _continued(random.Random(5), 0.0, 100_000)
    assert abs(sum(same) / n - accuracy) < 0.01  # no gain: the candidate is as right as the parent
