"""How the embedded ClickHouse front reads a request body: Content-Length and chunked transfer encoding,
in pieces, and a body that ends before it said it would."""

from __future__ import annotations

import io
from email.message import Message

import pytest

from infra.clickhouse.embedded_engine import QueryFailed
from infra.clickhouse.http_body import chunks

BODY = bytes(range(256)) * 40  # 10,240 bytes


def _headers(**fields: str) -> Message:
    m = Message()
    for k, v in fields.items():
        m[k.replace("_", "-")] = v
    return m


def _chunked(body: bytes, piece: int) -> bytes:
    framed = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
        for i in range(0, len(body), piece)
    )
    return framed + b"0\r\nX-Trailer: 1\r\n\r\n"


def test_content_length_body_comes_in_pieces_of_at_most_size() -> None:
    rfile = io.BytesIO(BODY + b"next request")
    pieces = list(chunks(rfile, _headers(Content_Length=str(len(BODY))), size=4096))
    assert b"".join(pieces) == BODY and [len(p) for p in pieces] == [4096, 4096, 2048]
    assert rfile.read() == b"next request"  # nothing read past the body


def test_chunked_body_is_unframed_and_the_trailer_consumed() -> None:
    rfile = io.BytesIO(_chunked(BODY, 3000) + b"next request")
    pieces = list(chunks(rfile, _headers(Transfer_Encoding="chunked"), size=1024))
    assert b"".join(pieces) == BODY and max(len(p) for p in pieces) == 1024
    assert rfile.read() == b"next request"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_that_ends_early_is_a_named_error(chunked: bool) -> None:
    if chunked:
        rfile, headers = io.BytesIO(_chunked(BODY, 3000)[:5000]), _headers(Transfer_Encoding="chunked")
    else:
        rfile, headers = io.BytesIO(BODY[:5000]), _headers(Content_Length=str(len(BODY)))
    with pytest.raises(QueryFailed, match="ended early"):
        b"".join(chunks(rfile, headers))
