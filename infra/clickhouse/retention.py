"""ClickHouse TTLs per event table, matching each topic's Kafka retention unless settings say otherwise.

A row outlives the event on Kafka only when a user asks for it: by default every raw table keeps
rows for as long as its topic keeps the events (``retention.ms``; 7 days for requests, responses and
metric windows, 30 for feedback and rewarded samples, 90 for training runs), and the compacted
``model.versions`` table keeps its rows (lineage). ``RFTLOOP_CLICKHOUSE_TTL_DAYS`` overrides per
table (``{"inference_requested": 30}``; 0 = keep forever). Applied by every ``migrate`` (idempotent:
``MODIFY TTL`` / ``REMOVE TTL``), on a cluster to the replicated ``_local`` tables. ClickHouse drops
expired rows at merges; ``OPTIMIZE TABLE ... FINAL`` forces it.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from infra.clickhouse.tables import TABLE_NAMES
from schemas.topics import ALL_TOPICS

DAY_MS = 24 * 3600 * 1000


class UnknownTable(KeyError):
    """A TTL override for a table rftloop does not have."""


def default_ttl_days() -> dict[str, int]:
    """Per table: its topic's retention in days (0 for a compacted or unbounded topic)."""
    out = {}
    for spec in ALL_TOPICS:
        table = TABLE_NAMES.get(spec.event.avro_name)
        if table is None:
            continue
        ms = spec.config.get("retention.ms")
        out[table] = 0 if spec.compacted or ms is None or int(ms) < 0 else max(1, int(ms) // DAY_MS)
    return out


def ttl_days(overrides: dict[str, int]) -> dict[str, int]:
    days = default_ttl_days()
    unknown = sorted(set(overrides) - set(days))
    if unknown:
        raise UnknownTable(
            f"RFTLOOP_CLICKHOUSE_TTL_DAYS names {', '.join(unknown)}; tables: {', '.join(sorted(days))}"
        )
    return days | overrides


def ttl_statements(database: str, days: dict[str, int], cluster: str | None = None) -> list[str]:
    on = f" ON CLUSTER {cluster}" if cluster else ""
    suffix = "_local" if cluster else ""
    return [
        f"ALTER TABLE {database}.{table}{suffix}{on} "
        + (f"MODIFY TTL toDateTime(occurred_at) + INTERVAL {n} DAY" if n > 0 else "REMOVE TTL")
        for table, n in sorted(days.items())
    ]


def apply_ttls(client: Client, database: str, days: dict[str, int], cluster: str | None = None) -> None:
    for stmt in ttl_statements(database, days, cluster):
        if stmt.endswith("REMOVE TTL") and not _has_ttl(client, stmt.split()[2]):
            continue  # REMOVE TTL on a table without one is an error in ClickHouse
        client.command(stmt)


def _has_ttl(client: Client, table: str) -> bool:
    db, name = table.split(".", 1)
    rows = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        parameters={"db": db, "name": name},
    ).result_rows
    return bool(rows) and " TTL " in str(rows[0][0])
