"""Native results as clickhouse-server writes them for a caller's ``client_protocol_version``.

chdb writes Native as protocol version 0, the version of a caller that names none. A server
writes Native for the version a caller names in ``client_protocol_version`` (its NativeWriter).
What changes from version 0, and what this module does for it:

- every block starts with the block info (``is_overflows`` 0, ``bucket_num`` -1): 8 bytes, added
  to each block here;
- from 54337 a top-level ``DateTime`` keeps its zone in its type name (``DateTime('Asia/Shanghai')``
  where version 0 says ``DateTime``): the zone comes from the query's ``DESCRIBE``, put back here;
- below 54405 LowCardinality columns go as their plain type. chdb keeps them whatever
  ``low_cardinality_allow_in_native_format`` says (it applies to the native TCP protocol only), so
  a result with such a column is refused for those versions (NOT_IMPLEMENTED, naming the version);
- from 54452 versioned aggregate-function states, and from 54454 a serialization kind per column:
  not written here, so those versions are refused (``UnsupportedRevision``).

clickhouse-connect asks for 54405 in a probe when it connects and checks the answer's bytes, then
reads every Native result with block info.

Putting a zone into a column's type name means walking the block column by column: each column's
type name comes before its data, whose length follows from the type (``_skip``). A column whose
length cannot be known without decoding its states (AggregateFunction, Variant, Dynamic, JSON) ends
the walk: columns after it keep the version-0 name, and that is logged. Written here because no
Python library writes the server side of Native (clickhouse-connect reads it, and writes only its
insert blocks).

What it costs (clickhouse-connect 1.12's ``query()`` against the front, medians, at 54405 against
the same client at version 0, two alternating runs): ``SELECT 1`` 2.8-2.9 ms against 2.6-3.0; 100,000
rows of a number and a String, no DateTime, 27-36 ms against 25-30; ten rows with a zoned DateTime
4.9-6.2 ms against 2.9-3.6 (the DESCRIBE, ~1 ms); 100,000 rows of a String then a zoned DateTime
47-53 ms against 26-35 (the String column walked in Python to reach the DateTime's name).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Generator, Iterator

from infra.clickhouse.embedded_engine import QueryFailed

log = logging.getLogger(__name__)

BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # field 1 is_overflows=0, field 2 bucket_num=-1, end
ZONE_IN_DATETIME = 54337  # DBMS_MIN_REVISION_WITH_TIME_ZONE_PARAMETER_IN_DATETIME_DATA_TYPE
LOW_CARDINALITY = 54405  # DBMS_MIN_REVISION_WITH_LOW_CARDINALITY_TYPE
HIGHEST = 54451  # 54452 versions aggregate-function states, 54454 adds a serialization kind per column

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "DateTime", "Date32", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
    "Nothing": 1,
}
_GEO = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(LineString)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}
_NAMED_ELEMENT = re.compile(r"^(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_.]*)\s+(\S.*)$", re.DOTALL)


class UnsupportedRevision(ValueError):
    """A ``client_protocol_version`` this front cannot write Native for."""


class _Opaque(Exception):
    """A column whose data length is not known without decoding it."""


def revision(value: str | None, native: bool = True) -> int:
    """The caller's ``client_protocol_version`` (0 when absent), or UnsupportedRevision naming it:
    not a number, or (for a ``native`` result; other formats do not change with it) not written here."""
    if value is None or value == "":
        return 0
    try:
        version = int(value)
    except ValueError:
        raise UnsupportedRevision(f"client_protocol_version must be a number, not {value!r}") from None
    if version < 0 or (native and version > HIGHEST):
        raise UnsupportedRevision(
            f"client_protocol_version {version} is not supported by the embedded ClickHouse: it writes "
            f"Native for versions 0 to {HIGHEST} (54452 versions aggregate-function states and 54454 "
            "adds a serialization kind per column, which chdb does not expose)"
        )
    return version if native else 0


def zoned_columns(describe_tsv: bytes) -> dict[int, str]:
    """From a ``DESCRIBE`` in TabSeparated: the position and type of each column that is a top-level
    ``DateTime`` with a zone, the columns version 0 names plain ``DateTime``."""
    zoned = {}
    for i, line in enumerate(describe_tsv.decode().splitlines()):
        fields = line.split("\t")
        if len(fields) > 1 and fields[1].startswith("DateTime("):
            zoned[i] = fields[1].replace("\\'", "'").replace("\\\\", "\\")
    return zoned


def blocks(
    data: Iterator[bytes], version: int, zoned: Callable[[], dict[int, str]] | None = None
) -> Generator[bytes, None, None]:
    """Each version-0 block of ``data`` (one block per item, as chdb's streamed query yields them) as
    a server writes it for ``version``. ``zoned`` gives the zoned DateTime columns (``zoned_columns``);
    it is called once, and only when a block has a column of type ``DateTime``. Closing this closes
    ``data`` (a stream stops its query)."""
    names: dict[int, str] | None = None
    try:
        for block in data:
            if version == 0 or not block:
                yield block
                continue
            if version < LOW_CARDINALITY and b"LowCardinality(" in block and _low_cardinality_in(block):
                raise QueryFailed(
                    48,
                    f"a LowCardinality column cannot be written for client_protocol_version {version}: "
                    "below 54405 a server sends it as its plain type, which chdb does not do. Ask with "
                    "54405 or later, or without client_protocol_version (NOT_IMPLEMENTED)",
                )
            if (
                version >= ZONE_IN_DATETIME
                and names is None
                and zoned is not None
                and b"\x08DateTime" in block
            ):
                names = zoned()
            yield BLOCK_INFO + (_with_zones(block, names) if names else block)
    finally:
        close = getattr(data, "close", None)
        if close is not None:
            close()


def split(data: bytes) -> list[bytes]:
    """A version-0 Native result of one or more blocks (one the engine did not stream), as its
    blocks. ValueError when a column's length cannot be known (the next block's start is then not)."""
    out, pos = [], 0
    while pos < len(data):
        start = pos
        columns, pos = _varint(data, pos)
        rows, pos = _varint(data, pos)
        for _ in range(columns):
            pos, type_name = _skip_header(data, pos)
            try:
                pos = _skip(type_name, data, pos, rows) if rows else pos
            except _Opaque:
                raise ValueError(f"a {type_name} column cannot be walked") from None
        out.append(data[start:pos])
    return out


def _low_cardinality_in(block: bytes) -> bool:
    """Whether a column of ``block`` is LowCardinality, anywhere in its type (yes where a column
    before one cannot be walked)."""
    columns, pos = _varint(block, 0)
    rows, pos = _varint(block, pos)
    for _ in range(columns):
        pos, type_name = _skip_header(block, pos)
        if "LowCardinality(" in type_name:
            return True
        try:
            pos = _skip(type_name, block, pos, rows) if rows else pos
        except _Opaque:
            return True
    return False


def _with_zones(block: bytes, zoned: dict[int, str]) -> bytes:
    """``block`` with the zones of ``zoned``'s columns put back in their type names."""
    columns, pos = _varint(block, 0)
    rows, pos = _varint(block, pos)
    last = max(zoned)
    out: list[bytes] = [block[:pos]]
    for i in range(min(columns, last + 1)):
        type_start = _string_end(block, pos)
        type_end, type_name = _skip_header(block, pos)
        if i in zoned and type_name == "DateTime":
            new = zoned[i].encode()
            out += [block[pos:type_start], _varint_bytes(len(new)), new]
        else:
            out.append(block[pos:type_end])
        pos = type_end
        if i == last:
            break
        try:
            end = _skip(type_name, block, pos, rows) if rows else pos
        except _Opaque:
            log.warning(
                "Native at a client_protocol_version: column %d (%s) cannot be walked; the DateTime "
                "columns after it keep their version-0 type name (no zone)",
                i,
                type_name,
            )
            break
        out.append(block[pos:end])
        pos = end
    out.append(block[pos:])
    return b"".join(out)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_end(buf: bytes, pos: int) -> int:
    length, pos = _varint(buf, pos)
    return pos + length


def _skip_header(buf: bytes, pos: int) -> tuple[int, str]:
    """Past a column's name and type: (position of its data, its type name)."""
    pos = _string_end(buf, pos)
    length, start = _varint(buf, pos)
    return start + length, buf[start : start + length].decode()


@functools.lru_cache(maxsize=512)
def _parts(type_name: str) -> tuple[str, tuple[str, ...]]:
    """``Name(arg, arg)`` as its name and its top-level arguments (quotes and brackets respected)."""
    open_ = type_name.find("(")
    if open_ < 0:
        return type_name.strip(), ()
    if not type_name.rstrip().endswith(")"):
        raise _Opaque(type_name)
    inner = type_name[open_ + 1 : type_name.rstrip().rfind(")")]
    args, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(inner):
        ch = inner[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
        i += 1
    args.append(inner[start:].strip())
    return type_name[:open_].strip(), tuple(a for a in args if a)


def _element(arg: str) -> str:
    """A Tuple or Nested element's type, its name dropped when it has one (``index Int32``)."""
    m = _NAMED_ELEMENT.match(arg)
    return m.group(2) if m else arg


def _prefix(type_name: str, buf: bytes, pos: int) -> int:
    """Past the state prefix a column of ``type_name`` writes before its data (LowCardinality's key
    version, wherever it is nested)."""
    name, args = _parts(type_name)
    if name == "LowCardinality":
        return pos + 8
    if name in ("Nullable", "Array", "SimpleAggregateFunction"):
        return _prefix(args[-1], buf, pos)
    if name in ("Tuple", "Map"):
        for arg in args:
            pos = _prefix(_element(arg), buf, pos)
        return pos
    if name == "Nested":
        return _prefix(f"Tuple({', '.join(args)})", buf, pos)
    if name in _GEO:
        return _prefix(_GEO[name], buf, pos)
    return pos


def _skip(type_name: str, buf: bytes, pos: int, rows: int) -> int:
    """Past a whole column of ``rows`` values of ``type_name``: its prefix, then its data."""
    return _data(type_name, buf, _prefix(type_name, buf, pos), rows)


def _data(type_name: str, buf: bytes, pos: int, rows: int) -> int:
    name, args = _parts(type_name)
    size = _FIXED.get(name)
    if size is not None:
        return pos + size * rows
    if name == "String":
        for _ in range(rows):
            length = buf[pos]
            if length < 0x80:
                pos += 1 + length
            else:
                length, pos = _varint(buf, pos)
                pos += length
        return pos
    if name == "FixedString":
        return pos + int(args[0]) * rows
    if name == "Decimal":
        precision = int(args[0])
        return pos + rows * (4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
    if name.startswith("Interval"):
        return pos + 8 * rows
    if name == "Nullable":
        return _data(args[0], buf, pos + rows, rows)
    if name == "SimpleAggregateFunction":
        return _data(args[-1], buf, pos, rows)
    if name in ("Array", "Map", "Nested"):
        count = int.from_bytes(buf[pos + 8 * rows - 8 : pos + 8 * rows], "little") if rows else 0
        pos += 8 * rows
        inner = args[0] if name == "Array" else f"Tuple({', '.join(args)})"
        return _data(inner, buf, pos, count)
    if name == "Tuple":
        if not args:  # an empty tuple writes a byte per row, as Nothing does
            return pos + rows
        for arg in args:
            pos = _data(_element(arg), buf, pos, rows)
        return pos
    if name == "LowCardinality":
        return _low_cardinality(args[0], buf, pos, rows)
    if name in _GEO:
        return _data(_GEO[name], buf, pos, rows)
    raise _Opaque(type_name)


def _low_cardinality(inner: str, buf: bytes, pos: int, rows: int) -> int:
    """Past one granule of LowCardinality data (Native writes the whole column as one): its index
    type, the dictionary keys it adds, then one index per row."""
    if rows == 0:
        return pos
    flags = int.from_bytes(buf[pos : pos + 8], "little")
    pos += 8
    if flags & (1 << 9):  # HasAdditionalKeysBit
        keys = int.from_bytes(buf[pos : pos + 8], "little")
        name, args = _parts(inner)
        pos = _data(args[0] if name == "Nullable" else inner, buf, pos + 8, keys)
    count = int.from_bytes(buf[pos : pos + 8], "little")
    return pos + 8 + count * (1, 2, 4, 8)[flags & 0xFF]
