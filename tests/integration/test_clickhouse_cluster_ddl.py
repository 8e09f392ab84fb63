"""The cluster form of every migration: ClickHouse's own parser accepts it and it keeps the columns.

No cluster (Keeper, shards) runs here, so the statements are parsed, not executed: formatQuery on
the embedded engine normalises the single-node and the cluster statement, and the column lists of
the single-node table and of the replicated local table must be the same.
"""

from __future__ import annotations

import re
from typing import Any

from infra.clickhouse.client import connect
from infra.clickhouse.cluster import cluster_statements
from infra.clickhouse.migrate import migration_files, statements


def _format(client: Any, sql: str) -> str:
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0])


def _columns(formatted: str) -> str:
    return formatted[formatted.index("(") : formatted.index("ENGINE")].strip()


def test_every_migration_has_a_cluster_form_that_parses_with_the_same_columns(stack: Any) -> None:
    client = connect(stack.clickhouse, database="default")
    tables = views = alters = drops = settings = 0
    for path in migration_files():
        for stmt in statements(path, "rftloop"):
            out = cluster_statements(stmt, "prod")
            formatted = [_format(client, s) for s in out]
            assert all("ON CLUSTER prod" in f for f in formatted), formatted
            if stmt.startswith("CREATE TABLE"):
                tables += 1
                local, dist = formatted
                assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/rftloop/" in local
                assert _columns(local) == _columns(_format(client, stmt))
                name = re.search(r"CREATE TABLE IF NOT EXISTS rftloop\.(\w+)", stmt)
                assert name and f"Distributed(prod, rftloop, {name[1]}_local" in dist
                if "`event_id`" in stmt:
                    assert "cityHash64(event_id)" in dist  # copies of an event meet on one shard
            elif "MODIFY SETTING" in stmt:  # a MergeTree storage setting: the local table only
                settings += 1
                assert len(formatted) == 1 and "_local ON CLUSTER prod" in formatted[0], formatted
            elif stmt.startswith("ALTER"):
                alters += 1
                assert len(formatted) == 2
            elif stmt.startswith("DROP VIEW"):  # a view a later migration replaces (0005, 0007)
                drops += 1
            else:
                views += 1
    assert tables == 9 and views == 6 and alters == 10 and drops == 2 and settings == 8
