"""Avro in the Confluent wire format: magic byte 0, 4-byte schema id, Avro body.

Byte-compatible with confluent-kafka's AvroSerializer/AvroDeserializer (and with
ClickHouse's AvroConfluent input format), but leaner on the hot path: the writer
schema's id is resolved once, the parsed schemas are cached by id, and the
header is packed with one struct call.

Two Avro libraries do the work underneath:

- **cavro** (Cython, MIT) writes every record, and reads every record written with our own
  schema (the hot case). On this machine it does the same Avro round trip about twice as fast as
  fastavro (``rftloop bench schemas.serde_events_per_s``, whose ``fastavro_alone`` and
  ``cavro_alone`` rows measure both libraries bare in the same passes). Its bytes and values are
  fastavro's own for every topic (``tests/integration/test_serde.py``).
- **fastavro** reads records written with another schema, resolved against ours (schema
  evolution), and its converters turn the logical types (uuid, timestamp-millis, decimal) of a
  record's top-level fields into plain values and back. The converters are found once per schema
  and the codecs read and write a copy of the schema without those annotations: cavro's own
  logical types cost more per record than fastavro's converters (measured; nested logical types
  are still cavro's).

A record whose bytes run on after its last field is refused (:class:`CorruptBody`): cavro does
not say where it stopped, so the decoder asks it for one byte more and expects the end of input.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from typing import Any

import cavro
import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro._logical_readers import LOGICAL_READERS
from fastavro._logical_writers import LOGICAL_WRITERS

from infra.registry import canonical, load_schema
from schemas.events import Event
from schemas.topics import TopicSpec

MAGIC = 0
_HEADER = struct.Struct(">bI")
# fastavro's behaviour where cavro's defaults differ: records read as dicts, naive datetimes are UTC
_CAVRO_OPTIONS = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True, naive_dt_assume_utc=True)
# one more byte after a record: reading it must fail with EOFError, else the body ran on
_ONE_BYTE = cavro.Schema('{"type": "fixed", "size": 1, "name": "trailing"}')


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
        plain, self._to_plain, self._from_plain = _without_logical_types(self._schema_json)
        self._codec = cavro.Schema(
            json.dumps(plain if self._to_plain else self._schema_json), options=_CAVRO_OPTIONS
        )
        self._writer_id: int | None = None
        self._header = b""
        self._writers: dict[int, Any] = {}
        self._from_plain_without: dict[frozenset[str], tuple[Converter, ...]] = {}
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
        try:
            if self._to_plain:
                record = dict(record)
                for name, convert, schema in self._to_plain:
                    value = record.get(name)
                    if value is not None:
                        record[name] = convert(value, schema)
            body: bytes = self._codec.binary_encode(record)
        except (cavro.CavroException, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerdeError(f"{self.topic.event.avro_name} does not fit its schema: {exc}") from exc
        return self._header + body

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

    def decode(self, data: bytes | None, *, plain: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The record in ``data``. Top-level fields named in ``plain`` keep their logical type's
        Avro value: a uuid its string, a timestamp-millis its int of milliseconds since the epoch, a
        decimal its bytes. For hot loops that need no ``UUID`` or ``datetime`` object (stage 1 of
        the streams: ~1.9 µs a record less)."""
        if data is None or len(data) < 5:
            raise NotFramed(f"{0 if data is None else len(data)} bytes: too short for a framed Avro record")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise NotFramed(f"magic byte {magic} (expected 0): not Confluent-framed Avro")
        writer = self._writer_schema(schema_id)
        try:
            if writer is self.reader_schema:  # same schema on both sides: no resolution (the hot case)
                body = cavro.MemoryReader(memoryview(data)[5:])
                record = self._codec.binary_read(body)
                try:
                    _ONE_BYTE.binary_read(body)
                except EOFError:
                    pass  # the record ended where the bytes do
                else:
                    raise CorruptBody(f"trailing bytes after the record (schema id {schema_id})")
                if isinstance(record, dict):
                    for name, convert, schema in self._converters(plain):
                        value = record[name]
                        if value is not None:
                            record[name] = convert(value, schema, schema)
            else:
                stream = io.BytesIO(data)
                stream.seek(5)
                record = fastavro.schemaless_reader(stream, writer, self.reader_schema)
                if stream.tell() != len(data):
                    raise CorruptBody(
                        f"{len(data) - stream.tell()} trailing bytes after the record (schema id {schema_id})"
                    )
                if plain and isinstance(record, dict):  # fastavro converted every field: undo those
                    for name, convert, schema in self._to_plain:
                        value = record.get(name)
                        if name in plain and value is not None:
                            record[name] = convert(value, schema)
        except CorruptBody:
            raise
        except Exception as exc:  # EOFError, ValueError, IndexError, UnicodeError ... from either codec
            raise CorruptBody(f"{type(exc).__name__}: {exc} (schema id {schema_id})") from exc
        if not isinstance(record, dict):
            raise CorruptBody(f"decoded a {type(record).__name__}, not a record (schema id {schema_id})")
        return record

    def _converters(self, plain: frozenset[str]) -> tuple[Converter, ...]:
        """The readers' converters of the fields not in ``plain`` (found once per set)."""
        if not plain:
            return self._from_plain
        found = self._from_plain_without.get(plain)
        if found is None:
            found = self._from_plain_without[plain] = tuple(c for c in self._from_plain if c[0] not in plain)
        return found

    def decode_event(self, data: bytes | None) -> Event:
        record = self.decode(data)
        try:
            event: Event = self.topic.event.from_avro(record)
            return event
        except ValueError as exc:
            raise InvalidRecord(str(exc)) from exc


Converter = tuple[str, Any, dict[str, Any]]  # (field, fastavro's converter, the logical type's schema)


def _without_logical_types(
    schema: dict[str, Any],
) -> tuple[dict[str, Any], tuple[Converter, ...], tuple[Converter, ...]]:
    """``schema`` with the logical types of its top-level fields (alone or beside ``"null"``) made
    plain, and for each such field fastavro's converters to and from the plain value."""
    fields, to_plain, from_plain = [], [], []
    for f in schema["fields"]:
        t = f["type"]
        nullable = isinstance(t, list) and len(t) == 2 and "null" in t
        branch = (t[1] if t[0] == "null" else t[0]) if nullable else t
        key = f"{branch.get('type')}-{branch.get('logicalType')}" if isinstance(branch, dict) else ""
        if key not in LOGICAL_WRITERS or key not in LOGICAL_READERS or branch["type"] == "fixed":
            fields.append(f)
            continue
        bare = {k: v for k, v in branch.items() if k != "logicalType"}
        plain: Any = bare["type"] if set(bare) == {"type"} else bare
        fields.append({**f, "type": [plain if x is branch else x for x in t] if nullable else plain})
        to_plain.append((f["name"], LOGICAL_WRITERS[key], branch))
        from_plain.append((f["name"], LOGICAL_READERS[key], branch))
    return {**schema, "fields": fields}, tuple(to_plain), tuple(from_plain)
