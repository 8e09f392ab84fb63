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
