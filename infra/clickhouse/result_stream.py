"""A query's result sent as the engine produces it, and ClickHouse's exception block when it fails
part-way (the embedded front, unless the caller asks ``wait_end_of_query=1``).

clickhouse-server streams a result unless the caller sets ``wait_end_of_query=1`` (clickhouse-connect
sets it for ``query()``; its ``command()`` and ``*_stream`` methods do not). Its output format flushes after each
block, so the headers (with the progress so far as ``X-ClickHouse-Summary``) go with the first
block: a query that fails before it is answered with its error status. A caller's ``buffer_size``
above the default (1 MiB) makes the server hold that many bytes in memory first: a result that ends,
or fails, within them is answered whole. It streams with HTTP chunked transfer encoding. Once it has
sent the 200 and some rows, an error can no longer change the status, so since 25.11 it names a
random tag in the ``X-ClickHouse-Exception-Tag`` header and, on failure, ends the body with an
exception block framed by that tag::

    __exception__\\r\\n<TAG>\\r\\n<error message>\\n<message length> <TAG>\\r\\n__exception__\\r\\n

Clients (clickhouse-connect's ``StreamFailureError``) look for exactly these bytes. The frame is
written here rather than taken from a library because no Python library writes the server's side
of this protocol.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterator
from io import BufferedIOBase

# chdb formats each streamed block as a whole output: a JSON, CSVWithNames or Parquet result
# streamed that way would repeat its header per block (measured: the concatenation differs from
# the buffered result). These formats have no prefix or suffix, so their blocks concatenate into
# the buffered result byte for byte (checked for Native and JSONEachRow; the rest are row formats).
STREAMABLE_FORMATS = frozenset(
    {
        "Native",
        "RowBinary",
        "TabSeparated",
        "TSV",
        "TabSeparatedRaw",
        "TSVRaw",
        "CSV",
        "JSONEachRow",
        "JSONLines",
        "NDJSON",
        "JSONCompactEachRow",
        "JSONStringsEachRow",
        "JSONCompactStringsEachRow",
    }
)
_TAG_ALPHABET = string.ascii_lowercase + string.digits
BUFFER_SIZE = 1 << 20  # a server's default buffer_size (DBMS_DEFAULT_BUFFER_SIZE): no memory hold
# what chdb's streaming query runs (SHOW, DESCRIBE, EXPLAIN ... answer "Streaming query is not supported")
_STREAMED_STATEMENT = re.compile(r"^\s*(?:\(|SELECT\b|WITH\b)", re.IGNORECASE)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)


def streamable(statement: str, fmt: str) -> bool:
    """Whether ``statement``'s result can go as the engine produces it: a SELECT whose format has
    blocks that concatenate."""
    return bool(_STREAMED_STATEMENT.match(statement)) and output_format(statement, fmt) in STREAMABLE_FORMATS


def output_format(statement: str, fmt: str) -> str:
    """The format ``statement``'s result comes in: its own FORMAT clause, else ``fmt``."""
    clause = _FORMAT_CLAUSE.search(statement)
    return clause.group(1) if clause else fmt


def without_format(statement: str) -> str:
    """``statement`` without its trailing FORMAT clause (and ``;``): a query a subquery can hold."""
    return _FORMAT_CLAUSE.sub("", statement).rstrip().rstrip(";")


def streaming_refused(exc: Exception) -> bool:
    """Whether the engine refused to stream a statement (chdb streams only some: ``WITH ... INSERT``
    not); it runs whole then."""
    return getattr(exc, "code", None) == 36 and "Streaming query is not supported" in str(exc)


def held_bytes(params: dict[str, str]) -> int:
    """The bytes held before streaming starts: the caller's ``buffer_size`` where it is above the
    default, else none (the first block goes as it comes)."""
    try:
        asked = int(params.get("buffer_size") or 0)
    except ValueError:
        return 0
    return asked if asked > BUFFER_SIZE else 0


def hold(blocks: Iterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The first blocks, until more than ``limit`` bytes are held (at least one block) or the
    result ends: (blocks, ended). A failure meanwhile propagates: an ordinary error answer."""
    held: list[bytes] = []
    size = 0
    for block in blocks:
        held.append(block)
        size += len(block)
        if size > limit:
            return held, False
    return held, True


def exception_tag() -> str:
    """16 random lowercase letters and digits, as clickhouse-server's tags are."""
    return "".join(secrets.choice(_TAG_ALPHABET) for _ in range(16))


def exception_block(tag: str, message: str) -> bytes:
    """The bytes that end a failed stream (see the module doc)."""
    text = message.rstrip("\n").encode()
    return b"__exception__\r\n%s\r\n%s\n%d %s\r\n__exception__\r\n" % (
        tag.encode(),
        text,
        len(text),
        tag.encode(),
    )


def write_chunk(out: BufferedIOBase, data: bytes) -> None:
    """One HTTP/1.1 chunk (``b""`` writes the last one, which ends the body). A small block goes in
    one write (one packet: the socket has Nagle off); a big one is not copied to frame it."""
    if not data:
        out.write(b"0\r\n\r\n")
    elif len(data) < 1 << 16:
        out.write(b"%x\r\n%s\r\n" % (len(data), data))
    else:
        out.write(b"%x\r\n" % len(data))
        out.write(data)
        out.write(b"\r\n")
