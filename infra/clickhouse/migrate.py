"""Versioned DDL: apply ``migrations/NNNN_*.sql`` in order, once each (`rftloop db migrate`).

Applied versions are recorded in ``<database>.schema_migrations``. Files use
``{database}`` for the database name and ``;`` between statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from infra.clickhouse.cluster import cluster_statements

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class Applied:
    version: str
    statements: int


def statements(path: Path, database: str) -> list[str]:
    """The statements of one migration file for `database` (comments dropped)."""
    sql = path.read_text().replace("{database}", database)
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(
    client: Client, database: str, cluster: str | None = None, ttls: dict[str, int] | None = None
) -> list[Applied]:
    """Apply pending migrations; with `cluster`, in their cluster form (`infra/clickhouse/cluster.py`).
    With ``ttls`` (``RFTLOOP_CLICKHOUSE_TTL_DAYS``: overrides of the topic-matching defaults), set
    every event table's TTL (`infra/clickhouse/retention.py`)."""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    engine = (
        f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{database}/schema_migrations', '{{replica}}')"
        if cluster
        else "ReplacingMergeTree"
    )
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}{on}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations{on} "
        "(version String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        f"ENGINE = {engine} ORDER BY version"
    )
    done = {r[0] for r in client.query(f"SELECT version FROM {database}.schema_migrations FINAL").result_rows}
    applied = []
    for path in migration_files():
        version = path.stem
        if version in done:
            continue
        todo = statements(path, database)
        if cluster:
            todo = [c for stmt in todo for c in cluster_statements(stmt, cluster)]
        for stmt in todo:
            client.command(stmt)
        client.insert(f"{database}.schema_migrations", [[version]], column_names=["version"])
        applied.append(Applied(version, len(todo)))
    if ttls is not None:
        from infra.clickhouse.retention import apply_ttls, ttl_days

        apply_ttls(client, database, ttl_days(ttls), cluster)
    return applied
