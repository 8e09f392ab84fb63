"""The capacity model's arithmetic (bench/capacity.py renders SCALING.md from measured figures)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from bench.capacity import H100_8B, LOADS, Mix, plan, render, units


def _results(**values: float) -> dict[str, dict[str, Any]]:
    base = {
        "streams.events_per_s": 10_000.0,
        "sink.rows_per_s": 20_000.0,
        "gateway.throughput_vs_bare_vllm": 10.0,
        "trainer.kto_samples_per_s": 2.0,
        "trainer.grpo_step_s": 5.0,
        "infra.kafka_produce_mb_s": 100.0,
        "infra.clickhouse_insert_rows_s": 1_000_000.0,
        "producers.sdk_log_call_us": 50.0,
        "gateway.vs_hf_generate": 150.0,
        **values,
    }
    return {
        name: {"value": v, "unit": "u", "at": "2026-11-26T00:00:00", "machine": "2 cores, 24 GiB"}
        for name, v in base.items()
    }


def test_units_round_up_at_the_headroom() -> None:
    assert units(100, 1000, 0.5) == 1
    assert units(1000, 1000, 0.5) == 2
    assert units(1001, 1000, 0.5) == 3
    assert units(0.1, 1000, 0.5) == 1  # never zero


def test_plan_follows_the_mix_and_the_measured_rates() -> None:
    mix = Mix(feedback_share=0.5, output_tokens=100, headroom=0.5)
    rows = plan(_results(), mix)
    assert [r["requests_per_s"] for r in rows] == list(LOADS)
    big = rows[-1]
    # 10,000 req/s × (3 + 2·0.5) stream inputs = 40,000/s over 10,000/s × 0.5 per worker
    assert big["stream_workers"] == 8
    assert big["partitions"] == 16
    # × (2 + 2·0.5) rows = 30,000 rows/s over 20,000 × 0.5
    assert big["sinks"] == 3
    # cited tokens/s ÷ 100 tokens × 0.7 per GPU
    assert big["gpus_h100_8b"] == 268  # ⌈10,000 / (5,333 / 100 × 0.7 = 37.3)⌉
    assert big["rewarded_per_s"] == 5_000
    for a, b in pairwise(rows):
        assert b["stream_workers"] >= a["stream_workers"] and b["gpus_h100_8b"] >= a["gpus_h100_8b"]


def test_a_slower_join_costs_its_inputs_at_its_own_rate() -> None:
    mix = Mix(feedback_share=0.5, headroom=0.5)
    rows = plan(_results(**{"streams.join_events_per_s": 2_500.0}), mix)
    # 10,000 req/s: 1.5 stage-1 inputs at 10,000/s (1.5 worker-s) + 2.5 join inputs at 2,500/s (10)
    # = 11.5 worker-seconds per second, planned at half: 23 workers
    assert rows[-1]["stream_workers"] == 23
    assert "`streams.join_events_per_s`" in render(_results(**{"streams.join_events_per_s": 2_500.0}))


def test_rendered_page_names_its_sources() -> None:
    page = render(_results())
    assert H100_8B.source in page
    for name in ("streams.events_per_s", "sink.rows_per_s", "trainer.kto_samples_per_s"):
        assert f"`{name}`" in page
    assert page.count("\n| 1") >= 3  # one table row per load
