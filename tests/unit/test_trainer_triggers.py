"""When the trainer runs by itself (pure logic)."""

from __future__ import annotations

from pathlib import Path

from consumers.trainer.triggers import LastRun, Observation, TriggerConfig, due

CFG = TriggerConfig(new_samples=64, interval_s=3600, reward_floor=-0.2, min_rewards_for_drop=30)


def seen(new: int, now: float = 10_000.0, mean: float | None = None, n: int = 0) -> Observation:
    return Observation(now=now, new_samples=new, incumbent_reward_mean=mean, incumbent_rewards=n)


def test_enough_new_samples_trigger() -> None:
    last = LastRun(at=9_000, newest_sample=8_000)
    assert due(CFG, last, seen(63)) is None
    assert "64 new rewarded samples" in (due(CFG, last, seen(64)) or "")


def test_time_triggers_only_with_something_new() -> None:
    last = LastRun(at=1_000, newest_sample=900)
    assert due(CFG, last, seen(0, now=1_000 + 7200)) is None
    assert "since the last run" in (due(CFG, last, seen(1, now=1_000 + 3600)) or "")
    assert due(CFG, last, seen(1, now=1_000 + 3599)) is None


def test_a_quality_drop_triggers_with_enough_evidence() -> None:
    last = LastRun(at=9_000, newest_sample=8_000)
    assert "quality drop" in (due(CFG, last, seen(5, mean=-0.5, n=40)) or "")
    assert due(CFG, last, seen(5, mean=-0.5, n=10)) is None  # too few rewards to mean anything
    assert due(CFG, last, seen(5, mean=0.1, n=40)) is None
    assert due(TriggerConfig(reward_floor=None), last, seen(5, mean=-0.9, n=400)) is None


def test_last_run_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "t" / "last.json"
    assert LastRun.load(path) == LastRun()
    LastRun(at=5.0, newest_sample=4.5).save(path)
    assert LastRun.load(path) == LastRun(at=5.0, newest_sample=4.5)
    path.write_text("{broken")
    assert LastRun.load(path) == LastRun()
