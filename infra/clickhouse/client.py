"""clickhouse-connect clients for the configured ClickHouse (embedded or a real server)."""

from __future__ import annotations

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
