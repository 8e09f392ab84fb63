"""When the trainer runs on its own: enough new samples, enough time, or a quality drop (pure logic).

- ``new_samples``: at least N rewarded samples newer than the last run's newest;
- ``interval``: T seconds since the last run, with at least one new sample;
- ``quality_drop``: the incumbent's mean reward over its recent closed windows fell below a floor
  (with enough rewarded responses behind it to mean something).
``rftloop trainer`` polls ClickHouse and calls ``due``; ``rftloop train --now`` skips it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class TriggerConfig:
    new_samples: int = 64
    interval_s: float = 3600.0
    reward_floor: float | None = None
    min_rewards_for_drop: int = 30


@dataclass
class LastRun:
    at: float = 0.0  # epoch seconds of the last run (the daemon's start when it never ran)
    newest_sample: float = 0.0  # epoch seconds of the newest sample it saw

    @classmethod
    def load(cls, path: Path) -> LastRun:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)


@dataclass
class Observation:
    now: float
    new_samples: int  # samples newer than LastRun.newest_sample
    incumbent_reward_mean: float | None  # over its recent closed windows
    incumbent_rewards: int


def due(cfg: TriggerConfig, last: LastRun, seen: Observation) -> str | None:
    """The reason to run now, or None."""
    if seen.new_samples >= cfg.new_samples:
        return f"{seen.new_samples} new rewarded samples (trigger at {cfg.new_samples})"
    if seen.new_samples > 0 and last.at and seen.now - last.at >= cfg.interval_s:
        return f"{seen.now - last.at:.0f} s since the last run (trigger at {cfg.interval_s:.0f} s)"
    if (
        cfg.reward_floor is not None
        and seen.incumbent_reward_mean is not None
        and seen.incumbent_rewards >= cfg.min_rewards_for_drop
        and seen.incumbent_reward_mean < cfg.reward_floor
        and seen.new_samples > 0
    ):
        return (
            f"quality drop: incumbent mean reward {seen.incumbent_reward_mean:.3f} over {seen.incumbent_rewards} "
            f"rewards is below {cfg.reward_floor:.3f}"
        )
    return None


def observe(
    client: Any, db: str, model: str, incumbent: str, last: LastRun, now: float, recent_windows: int = 6
) -> Observation:
    new = client.query(
        f"SELECT count(), toUnixTimestamp64Milli(max(rewarded_at)) FROM {db}.latest_samples "
        "WHERE model = {m:String} AND toUnixTimestamp64Milli(rewarded_at) > {t:Int64}",
        parameters={"m": model, "t": int(last.newest_sample * 1000)},
    ).result_rows[0]
    windows = client.query(
        f"SELECT sum(reward_count), sum(reward_mean * reward_count) FROM (SELECT reward_count, reward_mean "
        f"FROM {db}.windows_final WHERE model = {{m:String}} AND version = {{v:String}} AND reward_count > 0 "
        f"AND window_kind = 'tumbling' ORDER BY window_start DESC LIMIT {int(recent_windows)})",
        parameters={"m": model, "v": incumbent},
    ).result_rows[0]
    n_rewards = int(windows[0] or 0)
    return Observation(
        now=now,
        new_samples=int(new[0]),
        incumbent_reward_mean=float(windows[1]) / n_rewards if n_rewards else None,
        incumbent_rewards=n_rewards,
    )
