"""ClickHouse's HTTP interface in front of the embedded chdb engine.

chdb is the real ClickHouse engine as a library, but it cannot open ClickHouse's
own HTTP listener ("start_servers_callback is not set"), and it holds its data
dir exclusively. So one process of ours owns the engine and speaks the HTTP
protocol that clickhouse-connect, curl, Grafana and every other ClickHouse HTTP
client speak: GET/POST with ``query=``, ``database=``, ``default_format=``,
``param_<name>`` query parameters, settings as URL parameters, request bodies
(chunked and/or lz4/zstd/gzip compressed), inserts with binary bodies (streamed into
the engine as they arrive, never through a decoded SQL string: ``Engine.insert``,
``body_pipe``), ``multipart/form-data`` external tables (``external_tables``), ``/ping``, and errors as
``Code: N. DB::Exception: ...`` with ``X-ClickHouse-Exception-Code``, and results streamed as the
engine produces them unless the caller asks ``wait_end_of_query=1``, as from a server
(``result_stream``: an error after the first rows ends the body with ClickHouse's exception block).

The engine, its session pool and what it refuses are in ``embedded_engine``.

Run it with ``python -m infra.clickhouse.embedded_server --path DIR --port N``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from infra.clickhouse import external_tables, http_body, native_revision, result_stream
from infra.clickhouse.body_pipe import BodyPipe
from infra.clickhouse.embedded_engine import Engine, QueryFailed, quote_literal
from infra.clickhouse.sql_text import query_text

log = logging.getLogger(__name__)

# URL parameters that are protocol, not ClickHouse settings.
_PROTOCOL_PARAMS = {
    "query",
    "database",
    "default_format",
    "session_id",
    "session_timeout",
    "session_check",
    "query_id",
    "user",
    "password",
    "compress",
    "decompress",
    "enable_http_compression",
    "wait_end_of_query",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close",
    "buffer_size",
    "client_protocol_version",  # the Native a server writes for it: ``native_revision``
}
# INSERT INTO t [(cols)] [SETTINGS ...] FORMAT f: the SETTINGS clause goes after FROM INFILE in the
# rewrite (ClickHouse's grammar: INSERT INTO t FROM INFILE 'f' [SETTINGS ...] FORMAT f)
_INSERT_RE = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)(\s+SETTINGS\s+.+?)?\s+FORMAT\s+([A-Za-z0-9_]+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_INPUT_RE = re.compile(r"\binput\s*\(", re.IGNORECASE)  # the input() table function: the request body
# statements that return no result set: a server sends them no X-ClickHouse-Format, and clients
# (clickhouse-connect's command()) then read the X-ClickHouse-Summary as the command's summary
_NO_RESULT = re.compile(
    r"^\s*(?:INSERT|CREATE|DROP|ALTER|TRUNCATE|RENAME|SET|USE|OPTIMIZE|SYSTEM|KILL|DETACH|ATTACH|GRANT|"
    r"REVOKE|DELETE|UPDATE|EXCHANGE|UNDROP|BACKUP|RESTORE)\b",
    re.IGNORECASE,
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# where a query runs: database, parameters, settings, ClickHouse session and its timeout
_Context = tuple[str | None, dict[str, str], dict[str, str], str | None, float]
# ClickHouse returns 4xx for errors that are the caller's fault.
_STATUS_BY_CODE = {
    62: 400,  # SYNTAX_ERROR
    36: 400,  # BAD_ARGUMENTS
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    47: 400,  # UNKNOWN_IDENTIFIER
    53: 400,  # TYPE_MISMATCH
    115: 400,  # UNKNOWN_SETTING
    456: 400,  # UNKNOWN_QUERY_PARAMETER
    60: 404,  # UNKNOWN_TABLE
    81: 404,  # UNKNOWN_DATABASE
    516: 401,  # AUTHENTICATION_FAILED
    373: 409,  # SESSION_IS_LOCKED
    48: 501,  # NOT_IMPLEMENTED
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rftloop-chdb"
    # TCP_NODELAY: a response goes out as headers, then body. With Nagle's algorithm on, the body waits
    # for the ACK of the headers, which the client delays (~40 ms on Linux): every query took 40+ ms.
    disable_nagle_algorithm = True
    engine: Engine
    password: str = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", "rftloop-embedded")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_stream(
        self, held: list[bytes], rest: Generator[bytes, None, None], headers: dict[str, str]
    ) -> None:
        """A result past the held buffer, as the engine produces it: chunked, with the exception block
        (``result_stream``) if the query fails after the 200 went out. Its X-ClickHouse-Summary is
        the progress when the headers go, as a server's is."""
        tag = result_stream.exception_tag()
        self.send_response(200)
        for k, v in {
            **headers,
            "Content-Type": "application/octet-stream"
            if headers["X-ClickHouse-Format"] == "Native"
            else "text/plain; charset=UTF-8",
            "Transfer-Encoding": "chunked",
            "X-ClickHouse-Exception-Tag": tag,
            "X-ClickHouse-Server-Display-Name": "rftloop-embedded",
        }.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            try:
                for block in held:
                    result_stream.write_chunk(self.wfile, block)
                for block in rest:
                    result_stream.write_chunk(self.wfile, block)
            except QueryFailed as exc:
                block = result_stream.exception_block(tag, self._error_text(exc))
                result_stream.write_chunk(self.wfile, block)
            result_stream.write_chunk(self.wfile, b"")
        except OSError:  # the client went away (at any write): stop the query, drop the connection
            self.close_connection = True
        finally:
            rest.close()  # cancels the query if it did not run to its end

    def _error_text(self, exc: QueryFailed) -> str:
        """ClickHouse's error text: ``Code: N. DB::Exception: ... (version V)``."""
        text = str(exc)
        if not text.startswith("Code:"):
            text = f"Code: {exc.code}. DB::Exception: {text}"
        return f"{text} (version {self.engine.version})"

    def _error(self, exc: QueryFailed) -> None:
        self._send(
            _STATUS_BY_CODE.get(exc.code, 500),
            f"{self._error_text(exc)}\n".encode(),
            {"X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": "text/plain; charset=UTF-8"},
        )

    def _authorized(self, params: dict[str, str]) -> bool:
        if not self.password:
            return True
        given = params.get("password") or self.headers.get("X-ClickHouse-Key") or ""
        auth = self.headers.get("Authorization", "")
        if not given and auth.lower().startswith("basic "):
            import base64

            given = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")[2]
        import hmac

        return hmac.compare_digest(given.encode(), self.password.encode())

    # -- verbs -------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle(read_body=False)

    def do_HEAD(self) -> None:
        self._handle(read_body=False)

    def do_POST(self) -> None:
        self._handle(read_body=True)

    def _handle(self, read_body: bool) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/replicas_status") and not url.query:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("/", ""):
            self._send(404, b"There is no handle " + url.path.encode() + b"\n")
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True, errors="backslashreplace"))
        query_id = params.get("query_id") or str(uuid.uuid4())
        external: list[external_tables.ExternalTable] = []
        streamed: tuple[list[bytes], Generator[bytes, None, None], dict[str, str]] | None = None
        try:
            if not self._authorized(params):
                raise QueryFailed(516, "default: Authentication failed: password is incorrect")
            body = http_body.decoded(self.rfile, self.headers) if read_body else iter(())
            files: dict[str, bytes] = {}
            content_type = self.headers.get("Content-Type", "")
            if read_body and content_type.lower().startswith("multipart/form-data"):
                fields, files = external_tables.parse_form(content_type, b"".join(body))
                params = {**params, **fields}  # form fields are parameters as in the URL
                body = iter(())
                external = external_tables.tables(files, params, self.engine.tmpdir)
            statement = self._statement(params.get("query", ""), body)
            fmt = params.get("default_format", "TabSeparated")
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {
                k: v
                for k, v in params.items()
                if k not in _PROTOCOL_PARAMS
                and not k.startswith("param_")
                and _SETTING_NAME.match(k)
                and not external_tables.is_table_param(k, files)
            }
            # the Native protocol version the caller reads (0 where the result is in another format)
            version = self._version(params, statement, fmt)
            # the zone a server names for the result's DateTimes: the caller's session_timezone, or its own
            tz = settings.get("session_timezone") or self.engine.timezone
            context: _Context = (
                params.get("database"),
                qparams,
                settings,
                params.get("session_id") or None,
                float(params.get("session_timeout") or 60),
            )
            if isinstance(statement, _Insert):
                sql = statement.head
                out, summary = self._insert(statement, params, settings)
            elif (
                params.get("wait_end_of_query", "0").lower() not in ("1", "true")
                and result_stream.streamable(statement, fmt)
                and not external
                and self.command != "HEAD"
            ):
                sql, started, totals = statement, time.perf_counter(), dict[str, int]()
                blocks = self.engine.stream(statement, fmt, *context, summary=totals)
                if version:  # the zones looked up first: the stream holds its session until it ends
                    zones = (
                        self._zones(statement, context) if version >= native_revision.ZONE_IN_DATETIME else {}
                    )
                    blocks = native_revision.blocks(blocks, version, lambda: zones)
                try:  # as a server: headers with the first block, or the whole result past a caller's buffer_size
                    held, ended = result_stream.hold(blocks, result_stream.held_bytes(params))
                    out = b"".join(held)
                    elapsed = int((time.perf_counter() - started) * 1e9)
                    summary = {k: str(v) for k, v in {**totals, "elapsed_ns": elapsed}.items()}
                    if not ended:
                        streamed = (held, blocks, summary)
                except QueryFailed as exc:
                    if not result_stream.streaming_refused(exc):
                        raise
                    out, summary = self.engine.execute(sql, fmt, *context)
                    out = self._native(out, version, statement, context, external)
            else:
                sql = statement
                collected = (  # a result in Native for a version: its blocks as the engine streams them
                    self._collected(statement, fmt, context)
                    if version and result_stream.streamable(statement, fmt) and not external
                    else None
                )
                if collected is not None:
                    out, summary = self._native(collected[0], version, statement, context, []), collected[1]
                else:
                    out, summary = self.engine.execute(
                        sql,
                        fmt,
                        *context,
                        before=[s for t in external for s in t.before()],
                        after=[s for t in external for s in t.after()],
                    )
                    out = self._native(out, version, statement, context, external)
        except QueryFailed as exc:
            self._error(exc)
            return
        except (ValueError, OSError) as exc:
            self._error(QueryFailed(1001, f"bad request: {exc}"))
            return
        finally:
            for t in external:
                os.unlink(t.path)
        if streamed is not None:
            held, rest, progress = streamed
            headers = {
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Timezone": tz,
            }
            self._send_stream(held, rest, {**headers, "X-ClickHouse-Summary": json.dumps(progress)})
            return
        headers = {
            "Content-Type": "application/octet-stream" if fmt == "Native" else "text/plain; charset=UTF-8",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": tz,
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        if not _NO_RESULT.match(sql):  # as a server: a format only for statements that return rows
            headers["X-ClickHouse-Format"] = fmt
        self._send(200, out, headers)

    def _version(self, params: dict[str, str], statement: str | _Insert, fmt: str) -> int:
        """The caller's ``client_protocol_version`` where its result is Native, else 0 (a server's
        other formats do not change with it). QueryFailed (400) for a version not written here."""
        native = (
            not isinstance(statement, _Insert) and result_stream.output_format(statement, fmt) == "Native"
        )
        try:
            return native_revision.revision(params.get("client_protocol_version"), native)
        except native_revision.UnsupportedRevision as exc:
            raise QueryFailed(36, f"{exc} (BAD_ARGUMENTS)") from None

    def _collected(
        self, statement: str, fmt: str, context: _Context
    ) -> tuple[list[bytes], dict[str, Any]] | None:
        """A SELECT's whole result as the engine's blocks (its stream, read to the end) and its
        summary; None where chdb does not stream the statement."""
        started, totals = time.perf_counter(), dict[str, int]()
        try:
            blocks = list(self.engine.stream(statement, fmt, *context, summary=totals))
        except QueryFailed as exc:
            if not result_stream.streaming_refused(exc):
                raise
            return None
        elapsed = int((time.perf_counter() - started) * 1e9)
        return blocks, {k: str(v) for k, v in {**totals, "elapsed_ns": elapsed}.items()}

    def _native(
        self,
        out: bytes | list[bytes],
        version: int,
        statement: str,
        context: _Context,
        external: list[external_tables.ExternalTable],
    ) -> bytes:
        """A version-0 Native result (whole, or as its blocks) as written for ``version``."""
        if not version:
            return out if isinstance(out, bytes) else b"".join(out)
        try:
            parts = out if isinstance(out, list) else native_revision.split(out)
        except ValueError as exc:
            raise QueryFailed(
                48,
                f"this result cannot be written for client_protocol_version {version}: {exc} (NOT_IMPLEMENTED)",
            ) from None
        zones = functools.partial(self._zones, statement, context, external)
        return b"".join(native_revision.blocks(iter(parts), version, zones))

    def _zones(
        self, statement: str, context: _Context, external: list[external_tables.ExternalTable] | None = None
    ) -> dict[int, str]:
        """The result's zoned DateTime columns (``native_revision.zoned_columns``), from the query's
        DESCRIBE in the same database, session and settings, beside its external tables (created
        empty); none where it cannot be described."""
        describe = f"DESCRIBE TABLE (\n{result_stream.without_format(statement)}\n)"
        tables = external or []
        try:
            out, _ = self.engine.execute(
                describe,
                "TabSeparated",
                *context,
                before=[t.before()[0] for t in tables],
                after=[s for t in tables for s in t.after()],
            )
        except QueryFailed as exc:
            log.info("no DateTime zones for a Native result: its DESCRIBE failed (%s)", str(exc)[:200])
            return {}
        return native_revision.zoned_columns(out)

    def _statement(self, query: str, body: Iterator[bytes]) -> str | _Insert:
        """The SQL to run, or the insert whose data is the rest of the body.

        An insert's statement is either the ``query`` parameter (body = data) or
        the body's first line up to ``FORMAT <name>`` and a newline (the rest =
        data). Data never passes through a SQL string: it streams into the engine
        (``_Insert``).
        """
        head = query.encode()
        first = b""
        if query and _INSERT_RE.match(head):
            m = _INSERT_RE.match(head)
        else:
            # Read until the first newline (or the whole body if it is a plain query).
            for piece in body:
                first += piece
                nl = first.find(b"\n")
                if nl >= 0 and _INSERT_RE.match((head + b"\n" + first[:nl]) if query else first[:nl]):
                    break
                if len(first) > (1 << 24) and nl >= 0:
                    break
            nl = first.find(b"\n")
            candidate = first[:nl] if nl >= 0 else first
            stmt = (head + b"\n" + candidate) if query else candidate
            m = _INSERT_RE.match(stmt) if nl >= 0 else None
            if m is None:
                rest = b"".join(body)
                full = (head + b"\n" + first + rest) if query and first else (head or first + rest)
                if not full.strip():
                    raise QueryFailed(62, "Empty query")
                return query_text(full)
            first = first[nl + 1 :]
        assert m is not None
        data = _non_empty(first, body)
        if data is None:
            raise QueryFailed(108, "No data to insert")  # NO_DATA_TO_INSERT
        return _Insert(query_text(m.group(1)), query_text(m.group(2) or b""), m.group(3).decode(), data)

    def _insert(
        self, ins: _Insert, params: dict[str, str], settings: dict[str, str]
    ) -> tuple[bytes, dict[str, Any]]:
        """Run an insert, its data streamed from the request body as it arrives: a plain ``INSERT INTO
        t`` through chdb's streaming inserter, one that reads ``input()`` through a named pipe
        (``body_pipe``). On failure the rest of the body is read (and dropped) before the answer."""
        database = params.get("database")
        session_id, timeout = params.get("session_id") or None, float(params.get("session_timeout") or 60)
        if not _INPUT_RE.search(ins.head):
            try:
                summary = self.engine.insert(
                    ins.head + ins.settings, ins.fmt, ins.data, database, settings, session_id, timeout
                )
            finally:
                for _ in ins.data:  # what the engine did not take (it failed): the connection stays in step
                    pass
            return b"", summary
        pipe = BodyPipe(self.engine.tmpdir, ins.data)
        source = f"file({quote_literal(pipe.path)}, {quote_literal(ins.fmt)}, "
        sql = _INPUT_RE.sub(lambda _m: source, ins.head, count=1) + ins.settings
        try:
            return self.engine.execute(sql, "TabSeparated", database, {}, settings, session_id, timeout)
        finally:
            pipe.close()
            if pipe.error is not None:
                raise pipe.error  # the body's own failure is the cause, whatever the engine said


@dataclass
class _Insert:
    """An insert whose data is the rest of the request body: ``INSERT INTO ... [SELECT ... input()]``
    (``head``), its ``SETTINGS`` clause, the data's format and the data's pieces."""

    head: str
    settings: str
    fmt: str
    data: Iterator[bytes]


def _non_empty(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes] | None:
    """The data's pieces (``first``, then ``rest``), or None when there is no byte of data."""
    while not first:
        piece = next(rest, None)
        if piece is None:
            return None
        first = piece

    def pieces() -> Iterator[bytes]:
        yield first
        yield from rest

    return pieces()


def serve(path: str, host: str, port: int, password: str = "") -> None:
    engine = Engine(path)
    handler = type("BoundHandler", (Handler,), {"engine": engine, "password": password})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("embedded ClickHouse %s serving %s on http://%s:%d", engine.version, path, host, port)
    print(f"ready http://{host}:{port} engine={engine.version}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        # said step by step: a stop that hangs (seen once in ~25 demo runs: killed after 30 s) then
        # shows in the log whether the sessions' close or the engine's own shutdown at exit took it
        started = time.monotonic()
        log.info("stopped serving; closing the engine's idle sessions")
        closed = engine.close()
        log.info(
            "closed %d session(s) in %.1f s; the engine shuts down at exit",
            closed,
            time.monotonic() - started,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", required=True, help="data directory (owned by this process)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if _status_reason(args.port):
        raise SystemExit(f"port {args.port} is already in use (RFTLOOP_LOCAL_CLICKHOUSE_PORT)")
    from infra.settings import ClickHouseSettings

    serve(args.path, args.host, args.port, ClickHouseSettings().password.get_secret_value())


def _status_reason(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()
