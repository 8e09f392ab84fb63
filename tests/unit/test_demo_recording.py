"""`make demo` records its compounding figures only for a run that started from the base model."""

from __future__ import annotations

import io

from rich.console import Console

from cli import demo_report
from cli.demo_report import Generation


def _generations(first_parent: str) -> list[Generation]:
    return [
        Generation(1, first_parent, "v1", "grpo", 300, {"gain": 0.2}, decision="promoted"),
        Generation(2, "v1", "v2", "grpo", 300, {"gain": 0.1}, decision="promoted"),
    ]


def test_a_run_from_the_base_model_is_recorded_and_a_continued_one_is_not(monkeypatch) -> None:
    recorded: list[str] = []
    monkeypatch.setattr("bench.harness.record", lambda results: recorded.extend(r.name for r in results))
    out = io.StringIO()
    console = Console(file=out, width=200)
    demo_report.record_generations(_generations("base"), 700.0, 2, console)
    assert "loop.generations_promoted" in recorded and "trainer.quality_gain_total" in recorded
    recorded.clear()
    demo_report.record_generations(_generations("vc9a9f3becc"), 700.0, 2, console)
    assert recorded == []
    assert "not recorded" in out.getvalue() and "vc9a9f3becc" in out.getvalue()
