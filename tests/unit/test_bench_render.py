"""BENCHMARKS.md shows the latest run of each current benchmark, and no retired name as if current."""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness import RETIRED, render

pytestmark = pytest.mark.unit


def _run(name: str, value: float, at: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "unit": "µs (p99)",
        "peer": "peer",
        "peer_value": 100.0,
        "ratio": 100.0 / value,
        "goal": "p99 ≤ 50 µs",
        "met": value <= 50,
        "machine": "2 cores, 24 GiB",
        "at": at,
        "method": f"method of {name} at {at}",
    }


def test_latest_run_of_each_name_and_no_retired_row() -> None:
    retired = next(iter(RETIRED))
    text = render(
        [
            _run("producers.sdk_log_call_us", 543.3, "2026-12-07T08:00:00"),
            _run(retired, 30.8, "2026-12-07T08:00:00"),
            _run("producers.sdk_log_call_us", 31.2, "2026-12-08T08:00:00"),
        ]
    )
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `producers.sdk_log_call_us` | 31.2 µs (p99) | peer | 100.0 | 3.21× | p99 ≤ 50 µs | yes "
        "| 2 cores, 2026-12-08 |"
    ]
    assert retired not in text and "method of producers.sdk_log_call_us at 2026-12-08" in text


def test_missed_goals_are_listed_with_the_reason_their_run_recorded() -> None:
    proven = {**_run("sink.rows_per_s", 75_946.3, "2026-12-07T08:00:00"), "met": False}
    proven["why_not_met"] = "the peer did at most 79,675 rows/s in the same rounds"
    unexplained = {**_run("loop.demo_s", 917.0, "2026-12-07T08:00:00"), "met": False}  # older runs: no field
    text = render([proven, unexplained, _run("producers.sdk_log_call_us", 27.7, "2026-12-07T08:00:00")])
    section = text.split("## Goals not met, and why\n\n")[1].split("\n\n")[0].splitlines()
    assert section == [
        "- `loop.demo_s`: the run proves no limit of this machine: the goal is missed by our code or by "
        "chance (README's figures table discusses each such figure).",
        "- `sink.rows_per_s`: the peer did at most 79,675 rows/s in the same rounds.",
    ]
    assert "## Goals not met" not in render([_run("producers.sdk_log_call_us", 27.7, "2026-12-07T08:00:00")])
