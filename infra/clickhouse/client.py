"""clickhouse-connect clients for the configured ClickHouse (embedded or a real server), and the
pieces an insert's body is sent in."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from infra.settings import ClickHouseSettings


def connect(settings: ClickHouseSettings, database: str | None = None, **kw: Any) -> Client:
    """A client over HTTP. Loopback traffic goes uncompressed (compression costs more CPU
    than it saves there); set ``compress`` to override."""
    kw.setdefault("compress", False)
    # no session per client: rftloop keeps no session state (no temporary tables), and one client is
    # shared by threads (the dashboard, the sink's pool), which a ClickHouse session refuses
    # (SESSION_IS_LOCKED); without one, requests run side by side
    kw.setdefault("autogenerate_session_id", False)
    return clickhouse_connect.get_client(
        host=settings.host,
        port=settings.port,
        secure=settings.secure,
        username=settings.username,
        password=settings.password.get_secret_value(),
        database=database if database is not None else settings.database,
        **kw,
    )


BODY_PIECE_BYTES = 1 << 20


def body_pieces(parts: Iterable[bytes], size: int = BODY_PIECE_BYTES) -> Iterator[bytes | memoryview]:
    """``parts`` as one insert body in pieces of about ``size`` bytes, for ``raw_insert(...,
    insert_block=<this>)``: small parts joined, a big one sliced without a copy.

    Why pieces: urllib3 frames each chunk of a chunked body by formatting it into a new bytes object,
    and that copy finishes before the chunk's first byte leaves. For one 84 MB chunk it took ~40 ms
    here, with the server idle (``infra.clickhouse_insert_rows_s`` measures it). In 1 MB pieces the
    client copies a piece while the server parses the one before."""
    pending: list[bytes] = []
    held = 0
    for part in parts:
        if len(part) >= size:
            if pending:
                yield b"".join(pending)
                pending, held = [], 0
            view = memoryview(part)
            for start in range(0, len(view), size):
                yield view[start : start + size]
            continue
        pending.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)
