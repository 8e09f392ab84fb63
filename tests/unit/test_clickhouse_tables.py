"""Event tables derived from the Avro schemas: keyed for dedup, one column per field."""

from __future__ import annotations

import json

from infra.clickhouse.tables import all_tables


def test_every_table_is_keyed_on_event_id_and_has_every_field() -> None:
    for t in all_tables():
        assert t.column_names[0] == "event_id" and "ORDER BY event_id" in t.ddl("db")
        assert t.column_names[-3:] == ["_topic", "_partition", "_offset"]
        schema = json.loads(t.topic.schema_path.read_text())
        assert t.field_names == [f["name"] for f in schema["fields"]]


def test_offset_runs_give_each_row_its_own_offset() -> None:
    """The sink's AvroConfluent insert sets _offset from runs: row k of run i is start[i] + k - begin[i]."""
    from infra.clickhouse.tables import offset_runs

    offsets = [5, 6, 7, 10, 11, 20, 22, 23]  # gaps: transaction markers, compaction
    starts, begins, ends = offset_runs(offsets)
    assert (starts, begins, ends) == ([5, 10, 20, 22], [0, 3, 5, 6], [3, 5, 6, 8])
    run = [next(i for i, e in enumerate(ends) if e > k) for k in range(len(offsets))]  # arrayFirstIndex
    assert [starts[i] + k - begins[i] for k, i in enumerate(run)] == offsets
    assert offset_runs([]) == ([], [], [])


def test_the_migrations_create_every_column_the_avro_schemas_derive() -> None:
    """An Avro field added later needs its ALTER ... ADD COLUMN migration: the sink inserts every field."""
    import re

    from infra.clickhouse.migrate import migration_files, statements

    columns: dict[str, set[str]] = {}
    for path in migration_files():
        for stmt in statements(path, "db"):
            if m := re.match(r"CREATE TABLE IF NOT EXISTS db\.(\w+)\s*\((.*)\)\s*ENGINE", stmt, re.S):
                columns[m[1]] = set(re.findall(r"^\s*`(\w+)`", m[2], re.M))
            elif m := re.match(r"ALTER TABLE db\.(\w+) ADD COLUMN IF NOT EXISTS `(\w+)`", stmt):
                columns[m[1]].add(m[2])
    for t in all_tables():
        assert set(t.column_names) <= columns[t.name], (t.name, set(t.column_names) - columns[t.name])


def test_an_insert_body_in_pieces_is_the_same_bytes_big_parts_sliced_without_a_copy() -> None:
    """The sink and the insert benchmark send a body through body_pieces: 1 MB pieces, so urllib3's
    framing copy of one piece overlaps the server's parse of the one before."""
    from infra.clickhouse.client import body_pieces

    big = bytes(range(256)) * 10_000  # 2.56 MB
    small = [bytes([i]) * 300 for i in range(40)]  # 12 KB
    parts = [*small[:22], big, *small[22:]]
    pieces = list(body_pieces(parts, size=1000))
    assert b"".join(pieces) == b"".join(parts)
    sliced = [p for p in pieces if isinstance(p, memoryview)]
    assert len(sliced) == 2560 and all(p.obj is big for p in sliced)  # views of the part, not copies
    joined = [p for p in pieces if isinstance(p, bytes)]
    # 4 smalls make a piece; what is held is sent before a big part, and at the end
    assert [len(p) for p in joined] == [1200] * 5 + [600] + [1200] * 4 + [600]
    assert list(body_pieces([])) == [] and list(body_pieces([b"ab", b"c"], size=10)) == [b"abc"]
