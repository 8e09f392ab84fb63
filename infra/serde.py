"""Avro in the Confluent wire format: magic byte 0, 4-byte schema id, Avro body.

Byte-compatible with confluent-kafka's AvroSerializer/AvroDeserializer (and with
ClickHouse's AvroConfluent input format), but leaner on the hot path: the writer
schema's id is resolved once, the parsed schemas are cached by id, and the
header is packed with one struct call. fastavro does the Avro work underneath.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from infra.registry import canonical, load_schema
from schemas.events import Event
from schemas.topics import TopicSpec

MAGIC = 0
_HEADER = struct.Struct(">bI")


class SerdeError(Exception):
    """Base of every encode/decode failure. Consumers send the message to the DLQ."""


class SchemaNotRegistered(SerdeError):
    """The local schema is not in the registry and auto-registration is off."""


class RegistryUnavailable(SerdeError):
    """The schema registry did not answer (down, wrong URL, timeout); nothing was encoded."""


class NotFramed(SerdeError):
    """The bytes do not start with the Confluent magic byte and a schema id."""


class UnknownSchemaId(SerdeError):
    """The schema id in the header is not in the registry."""


class CorruptBody(SerdeError):
    """The Avro body could not be decoded with the writer schema (truncated, garbage)."""


class InvalidRecord(SerdeError):
    """The record decoded but breaks the event model (e.g. a NaN reward)."""


class TopicSerde:
    """Encode/decode one topic's events against the registry.

    ``encode`` writes with the local .avsc schema; its registry id is looked up
    (or, with ``auto_register``, registered) once. ``decode`` reads any writer
    schema the registry knows and resolves it to the local reader schema, so
    old readers read new data and new readers read old data.
    """

    def __init__(
        self,
        registry: SchemaRegistryClient,
        topic: TopicSpec,
        *,
        auto_register: bool = False,
        schema: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._registry = registry
        self._auto_register = auto_register
        self._schema_json = schema if schema is not None else load_schema(topic.schema_path)
        self.reader_schema = fastavro.parse_schema(self._schema_json)
        self._writer_id: int | None = None
        self._header = b""
        self._writers: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- encoding ------------------------------------------------------------
    @property
    def schema_id(self) -> int:
        if self._writer_id is None:
            with self._lock:
                if self._writer_id is None:
                    self._writer_id = self._resolve_id()
                    self._header = _HEADER.pack(MAGIC, self._writer_id)
                    self._writers[self._writer_id] = self.reader_schema
        return self._writer_id

    def _resolve_id(self) -> int:
        avro = Schema(canonical(self._schema_json), "AVRO")
        try:
            found = self._registry.lookup_schema(self.topic.subject, avro).schema_id
            if found is None:
                raise SerdeError(f"registry returned no id for {self.topic.subject}")
            return int(found)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise SerdeError(f"registry lookup for {self.topic.subject} failed: {exc}") from exc
        except SerdeError:
            raise
        except Exception as exc:  # transport errors (confluent-kafka's vendored httpx), timeouts
            raise RegistryUnavailable(
                f"schema registry unreachable looking up {self.topic.subject} "
                f"(check RFTLOOP_REGISTRY_URL): {type(exc).__name__}: {exc}"
            ) from exc
        if not self._auto_register:
            raise SchemaNotRegistered(
                f"the schema of {self.topic.subject} is not registered; run `rftloop schemas register` "
                "(or set RFTLOOP_REGISTRY_AUTO_REGISTER=true in development)"
            )
        return int(self._registry.register_schema(self.topic.subject, avro))

    def encode(self, record: dict[str, Any]) -> bytes:
        self.schema_id  # noqa: B018 - resolves the header once
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.reader_schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerdeError(f"{self.topic.event.avro_name} does not fit its schema: {exc}") from exc
        return buf.getvalue()

    def encode_event(self, event: Event) -> bytes:
        return self.encode(event.to_avro())

    # -- decoding ------------------------------------------------------------
    def _writer_schema(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None:
            try:
                registered = self._registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise UnknownSchemaId(f"schema id {schema_id} is not in the registry") from exc
                raise
            writer_json = json.loads(registered.schema_str or "{}")
            parsed = (
                self.reader_schema if writer_json == self._schema_json else fastavro.parse_schema(writer_json)
            )
            self._writers[schema_id] = parsed
        return parsed

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < 5:
            raise NotFramed(f"{0 if data is None else len(data)} bytes: too short for a framed Avro record")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise NotFramed(f"magic byte {magic} (expected 0): not Confluent-framed Avro")
        writer = self._writer_schema(schema_id)
        stream = io.BytesIO(data)
        stream.seek(5)
        # Same schema on both sides: skip Avro schema resolution (the common, hot case).
        reader = None if writer is self.reader_schema else self.reader_schema
        try:
            record = fastavro.schemaless_reader(stream, writer, reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, UnicodeError ...
            raise CorruptBody(f"{type(exc).__name__}: {exc} (schema id {schema_id})") from exc
        if stream.tell() != len(data):
            raise CorruptBody(
                f"{len(data) - stream.tell()} trailing bytes after the record (schema id {schema_id})"
            )
        if not isinstance(record, dict):
            raise CorruptBody(f"decoded a {type(record).__name__}, not a record (schema id {schema_id})")
        return record

    def decode_event(self, data: bytes | None) -> Event:
        record = self.decode(data)
        try:
            event: Event = self.topic.event.from_avro(record)
            return event
        except ValueError as exc:
            raise InvalidRecord(str(exc)) from exc
