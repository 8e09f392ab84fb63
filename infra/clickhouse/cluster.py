"""The migrations' DDL for a ClickHouse cluster (`RFTLOOP_CLICKHOUSE_CLUSTER`).

Each single-node statement becomes its cluster form, with the same names for readers:

- ``CREATE TABLE db.t (...) ENGINE = ReplacingMergeTree[(v)] ...`` -> a replicated local table
  ``db.t_local ON CLUSTER c`` (``ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t_local',
  '{replica}'[, v])``, same columns, partitioning and order) and ``db.t ON CLUSTER c AS db.t_local``
  with ``ENGINE = Distributed(c, db, t_local, <key>)``. Event tables are sharded by
  ``cityHash64(event_id)`` so every copy of an event lands on one shard, where ReplacingMergeTree
  (read with FINAL) collapses it — the sink's at-least-once dedup keeps working across shards.
- ``ALTER TABLE db.t ...`` -> the same on ``db.t_local ON CLUSTER c`` and on ``db.t ON CLUSTER c``;
  ``ALTER TABLE db.t MODIFY SETTING ...`` (a MergeTree storage setting) on ``db.t_local`` only.
- ``CREATE VIEW db.v AS ...`` and ``CREATE DATABASE`` -> ``ON CLUSTER c`` (views read the
  Distributed tables by their usual names).

The embedded server keeps the single-node DDL; `rftloop db ddl --cluster NAME` prints this form.
"""

from __future__ import annotations

import re

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<db>\w+)\.(?P<name>\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE\s*=\s*ReplacingMergeTree(?:\((?P<version>[^)]*)\))?\s*(?P<rest>.*)$",
    re.S,
)
_ALTER = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<name>\w+)\s+(?P<rest>.*)$", re.S)
_VIEW = re.compile(
    r"^CREATE (?P<kind>VIEW|MATERIALIZED VIEW) IF NOT EXISTS (?P<db>\w+)\.(?P<name>\w+)\s+(?P<rest>AS.*)$",
    re.S,
)
_DATABASE = re.compile(r"^CREATE DATABASE IF NOT EXISTS (?P<db>\w+)$")
_DROP_VIEW = re.compile(r"^DROP VIEW IF EXISTS (?P<db>\w+)\.(?P<name>\w+)$")


class UnsupportedDDL(ValueError):
    """A migration statement this translator does not know how to run on a cluster."""


def cluster_statements(statement: str, cluster: str) -> list[str]:
    stmt = statement.strip().rstrip(";")
    if m := _CREATE_TABLE.match(stmt):
        db, name, version = m["db"], m["name"], m["version"]
        local = f"{name}_local"
        path = f"'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'"
        engine = f"ReplicatedReplacingMergeTree({path}{', ' + version if version else ''})"
        key = "cityHash64(event_id)" if re.search(r"`event_id`", m["columns"]) else "rand()"
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.{local} ON CLUSTER {cluster}\n{m['columns']}\n"
            f"ENGINE = {engine}\n{m['rest'].strip()}",
            f"CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{local}\n"
            f"ENGINE = Distributed({cluster}, {db}, {local}, {key})",
        ]
    if m := _ALTER.match(stmt):
        db, name, rest = m["db"], m["name"], m["rest"]
        if rest.lstrip().upper().startswith("MODIFY SETTING"):  # a storage setting: only MergeTree has it
            return [f"ALTER TABLE {db}.{name}_local ON CLUSTER {cluster} {rest}"]
        return [
            f"ALTER TABLE {db}.{name}_local ON CLUSTER {cluster} {rest}",
            f"ALTER TABLE {db}.{name} ON CLUSTER {cluster} {rest}",
        ]
    if m := _VIEW.match(stmt):
        return [f"CREATE {m['kind']} IF NOT EXISTS {m['db']}.{m['name']} ON CLUSTER {cluster} {m['rest']}"]
    if m := _DATABASE.match(stmt):
        return [f"CREATE DATABASE IF NOT EXISTS {m['db']} ON CLUSTER {cluster}"]
    if m := _DROP_VIEW.match(stmt):  # a view replaced by a later migration
        return [f"DROP VIEW IF EXISTS {m['db']}.{m['name']} ON CLUSTER {cluster}"]
    raise UnsupportedDDL(f"no cluster form for: {stmt[:120]}")
