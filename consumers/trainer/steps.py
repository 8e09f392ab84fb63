"""What a training method returns, and its per-step log (loss, reward, KL, grad norm ...) in ClickHouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STEPS_TABLE = "training_steps"


@dataclass
class Trained:
    figures: dict[str, float]  # the run's summary (into the version event and TrainingRunEvent)
    steps: list[dict[str, Any]] = field(default_factory=list)  # TRL's log_history, one dict per log


def step_rows(version: str, method: str, steps: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per (step, numeric metric); TRL's final summary entry (train_runtime ...) included."""
    now = datetime.now(UTC)
    rows = []
    for entry in steps:
        step = int(entry.get("step", 0))
        for name, value in entry.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                rows.append([version, method, step, name, float(value), now])
    return rows


def write_steps(client: Any, db: str, version: str, method: str, steps: list[dict[str, Any]]) -> int:
    rows = step_rows(version, method, steps)
    if rows:
        client.insert(
            f"{db}.{STEPS_TABLE}",
            rows,
            column_names=["version", "method", "step", "metric", "value", "logged_at"],
        )
    return len(rows)
