"""An HTTP request's body as the embedded ClickHouse front reads it: in pieces as it arrives
(``Content-Length`` or chunked transfer encoding), decompressed whole when the client compressed it
(``Content-Encoding``: gzip, deflate, lz4, zstd, as clickhouse-server takes them)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from email.message import Message
from io import BufferedIOBase

from infra.clickhouse.embedded_engine import QueryFailed

MAX_BODY = 1 << 31


def chunks(rfile: BufferedIOBase, headers: Message, size: int = 1 << 20) -> Iterator[bytes]:
    """The raw request body in pieces (Content-Length or chunked transfer encoding)."""
    total = 0
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        while True:
            line = rfile.readline(65537).strip()
            n = int(line.split(b";", 1)[0], 16)
            if n == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return
            total += n
            if total > MAX_BODY:
                raise QueryFailed(1001, "request body too large")
            yield from _read(rfile, n, size)
            rfile.readline(3)
    else:
        left = int(headers.get("Content-Length") or 0)
        if left > MAX_BODY:
            raise QueryFailed(1001, "request body too large")
        yield from _read(rfile, left, size)


def _read(rfile: BufferedIOBase, n: int, size: int) -> Iterator[bytes]:
    """The next ``n`` bytes of the body in pieces of at most ``size``; QueryFailed if it ends first."""
    while n:
        piece = rfile.read(min(n, size))
        if not piece:
            raise QueryFailed(1001, "request body ended early")
        n -= len(piece)
        yield piece


def decoded(rfile: BufferedIOBase, headers: Message) -> Iterator[bytes]:
    """The decoded body in pieces: streamed when uncompressed, decompressed whole otherwise."""
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return chunks(rfile, headers)
    return iter([decompress(b"".join(chunks(rfile, headers)), encoding)])


def decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        import zlib

        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        out, view = [], data
        while view:
            d = lz4.frame.LZ4FrameDecompressor()
            out.append(d.decompress(view))
            view = d.unused_data
        return b"".join(out)
    if encoding == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        return reader.read()
    if encoding == "br":
        raise QueryFailed(1001, f"Content-Encoding {encoding} is not supported by the embedded server")
    raise QueryFailed(1001, f"unknown Content-Encoding {encoding!r}")
