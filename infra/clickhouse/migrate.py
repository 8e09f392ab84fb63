"""Versioned DDL: apply ``migrations/NNNN_*.sql`` in order, once each (`rftloop db migrate`).

Applied versions are recorded in ``<database>.schema_migrations``. Files use
``{database}`` for the database name and ``;`` between statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class Applied:
    version: str
    statements: int


def migrate(client: Client, database: str) -> list[Applied]:
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {r[0] for r in client.query(f"SELECT version FROM {database}.schema_migrations FINAL").result_rows}
    applied = []
    for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version = path.stem
        if version in done:
            continue
        sql = path.read_text().replace("{database}", database)
        body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
        statements = [s.strip() for s in body.split(";") if s.strip()]
        for stmt in statements:
            client.command(stmt)
        client.insert(f"{database}.schema_migrations", [[version]], column_names=["version"])
        applied.append(Applied(version, len(statements)))
    return applied
