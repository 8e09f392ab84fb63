"""A query's result sent as the engine produces it, and ClickHouse's exception block when it fails
part-way (the embedded front's ``wait_end_of_query=0``).

clickhouse-server streams a result with HTTP chunked transfer encoding. Once it has sent the 200
and some rows, an error can no longer change the status, so since 25.11 it names a random tag in
the ``X-ClickHouse-Exception-Tag`` header and, on failure, ends the body with an exception block
framed by that tag::

    __exception__\\r\\n<TAG>\\r\\n<error message>\\n<message length> <TAG>\\r\\n__exception__\\r\\n

Clients (clickhouse-connect's ``StreamFailureError``) look for exactly these bytes. The frame is
written here rather than taken from a library because no Python library writes the server's side
of this protocol.
"""

from __future__ import annotations

import secrets
import string
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
