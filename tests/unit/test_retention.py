"""ClickHouse TTLs per table that match the topics' retention (infra/clickhouse/retention.py)."""

from __future__ import annotations

import pytest

from infra.clickhouse.retention import UnknownTable, default_ttl_days, ttl_days, ttl_statements
from infra.clickhouse.tables import TABLE_NAMES


def test_every_event_table_keeps_rows_as_long_as_its_topic_keeps_events() -> None:
    days = default_ttl_days()
    assert set(days) == set(TABLE_NAMES.values())
    assert days["inference_requested"] == days["inference_completed"] == days["metrics_windows"] == 7
    assert days["feedback_submitted"] == days["rewarded_samples"] == 30
    assert days["training_runs"] == 90
    assert days["model_versions"] == 0  # compacted: lineage is kept


def test_overrides_and_their_ddl() -> None:
    days = ttl_days({"inference_requested": 30, "rewarded_samples": 0})
    stmts = ttl_statements("db", days)
    assert "ALTER TABLE db.inference_requested MODIFY TTL toDateTime(occurred_at) + INTERVAL 30 DAY" in stmts
    assert "ALTER TABLE db.rewarded_samples REMOVE TTL" in stmts
    on_cluster = ttl_statements("db", days, cluster="c")
    assert any(
        s.startswith("ALTER TABLE db.inference_requested_local ON CLUSTER c MODIFY TTL") for s in on_cluster
    )
    with pytest.raises(UnknownTable, match="inference_requestd"):
        ttl_days({"inference_requestd": 3})
