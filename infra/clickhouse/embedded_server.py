"""ClickHouse's HTTP interface in front of the embedded chdb engine.

chdb is the real ClickHouse engine as a library, but it cannot open ClickHouse's
own HTTP listener ("start_servers_callback is not set"), and it holds its data
dir exclusively. So one process of ours owns the engine and speaks the HTTP
protocol that clickhouse-connect, curl, Grafana and every other ClickHouse HTTP
client speak: GET/POST with ``query=``, ``database=``, ``default_format=``,
``param_<name>`` query parameters, settings as URL parameters, request bodies
(chunked and/or lz4/zstd/gzip compressed), inserts with binary bodies (passed
through a temp file, never through a decoded SQL string), ``/ping``, and errors
as ``Code: N. DB::Exception: ...`` with ``X-ClickHouse-Exception-Code``.

One table must not brick the engine. chdb cannot run the Kafka table engine (it has no server
to run the engine's background consumers: ``CREATE`` fails with ``Shutdown was called`` but leaves
the table's metadata behind, and every later start fails). So the front refuses that DDL before it
reaches the engine, and a table that fails to load at startup is detached the way ClickHouse's own
``DETACH TABLE ... PERMANENTLY`` does (its metadata file renamed to ``.sql.detached``), recorded in
``detached_tables.json`` in the data dir (``rftloop status`` shows it) and the engine started again.

Run it with ``python -m infra.clickhouse.embedded_server --path DIR --port N``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    "client_protocol_version",
}
# INSERT INTO t [(cols)] [SETTINGS ...] FORMAT f: the SETTINGS clause goes after FROM INFILE in the
# rewrite (ClickHouse's grammar: INSERT INTO t FROM INFILE 'f' [SETTINGS ...] FORMAT f)
_INSERT_RE = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)(\s+SETTINGS\s+.+?)?\s+FORMAT\s+([A-Za-z0-9_]+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# ClickHouse returns 4xx for errors that are the caller's fault.
_STATUS_BY_CODE = {
    62: 400,  # SYNTAX_ERROR
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    47: 400,  # UNKNOWN_IDENTIFIER
    53: 400,  # TYPE_MISMATCH
    115: 400,  # UNKNOWN_SETTING
    456: 400,  # UNKNOWN_QUERY_PARAMETER
    60: 404,  # UNKNOWN_TABLE
    81: 404,  # UNKNOWN_DATABASE
    516: 401,  # AUTHENTICATION_FAILED
}
_MAX_BODY = 1 << 31
# CREATE / ATTACH of a table on an engine chdb cannot run (see the module doc)
_UNRUNNABLE_ENGINE = re.compile(
    r"^\s*(?:CREATE|ATTACH)\b[^;]*?\bTABLE\b[^;]*?\bENGINE\s*=\s*(Kafka)\b", re.IGNORECASE | re.DOTALL
)
# what chdb prints (to stderr, not in the exception) when a table fails to load at startup
_LOAD_FAILED = re.compile(r"Load job 'startup table ([^'.]+)\.([^']+)' failed: (.+?)(?:,\. \(ASYNC_LOAD|\n|$)")
DETACHED_REPORT = "detached_tables.json"
_MAX_DETACHED = 20


class QueryFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Engine:
    """One chdb session; queries are serialized (chdb is one engine per process)."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self._session = _open_session(path)
        self._lock = threading.Lock()
        self.version = self._run("SELECT version()", "TabSeparated").decode().strip()
        self.tmpdir = tempfile.mkdtemp(prefix="rftloop-ch-", dir=_fast_tmp())

    def _run(self, sql: str, fmt: str, params: dict[str, str] | None = None) -> bytes:
        try:
            res = self._session.query(sql, fmt, params=params or None)
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with the ClickHouse text
            msg = str(exc)
            m = _CODE_RE.search(msg)
            raise QueryFailed(int(m.group(1)) if m else 1001, msg) from exc
        if res is None:
            return b""
        if res.has_error():
            msg = res.error_message()
            m = _CODE_RE.search(msg)
            raise QueryFailed(int(m.group(1)) if m else 1001, msg)
        return res.bytes()

    def execute(
        self,
        sql: str,
        fmt: str,
        database: str | None,
        params: dict[str, str],
        settings: dict[str, str],
    ) -> tuple[bytes, dict[str, Any]]:
        refused = _UNRUNNABLE_ENGINE.match(sql)
        if refused:
            raise QueryFailed(
                48,  # NOT_IMPLEMENTED
                f"Code: 48. DB::Exception: the {refused.group(1)} table engine cannot run in the embedded "
                "ClickHouse (chdb runs no background consumers; the table would stop the next start). "
                "Ingest with `rftloop sink`, or point RFTLOOP_CLICKHOUSE_URL at a ClickHouse server. "
                "(NOT_IMPLEMENTED)",
            )
        with self._lock:
            started = time.perf_counter()
            if database:
                self._run(f"USE {_quote_ident(database)}", "TabSeparated")
            applied = []
            try:
                for name, value in settings.items():
                    self._run(f"SET {name} = {_quote_literal(value)}", "TabSeparated")
                    applied.append(name)
                out = self._run(sql, fmt, params)
            finally:
                for name in applied:
                    try:
                        self._run(f"SET {name} = DEFAULT", "TabSeparated")
                    except QueryFailed:
                        log.warning("could not reset setting %s", name)
                if database:
                    self._run("USE default", "TabSeparated")
            elapsed = time.perf_counter() - started
        return out, {"elapsed_ns": str(int(elapsed * 1e9))}


def _open_session(path: str) -> Any:
    """A chdb session on ``path``; a table that fails to load is detached (and recorded) and the
    session opened again, so one broken table never keeps the engine from starting."""
    from chdb import session

    for _ in range(_MAX_DETACHED):
        with tempfile.TemporaryFile() as captured:
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)  # chdb names the failing table on stderr only
            try:
                return session.Session(path)
            except Exception as exc:
                failure = exc
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                printed = captured.read().decode(errors="replace")
                if printed:
                    os.write(2, printed.encode())
        m = _LOAD_FAILED.search(printed)
        if m is None:
            raise RuntimeError(f"{failure}; {printed.strip()[-500:]}") from failure
        detach_broken(path, m.group(1), m.group(2), m.group(3).strip())
    raise RuntimeError(f"more than {_MAX_DETACHED} tables failed to load from {path}")


def _file_name(name: str) -> str:
    """ClickHouse's escapeForFileName: every byte but [A-Za-z0-9_] as %XX."""
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 0x5F) else f"%{b:02X}" for b in name.encode()
    )


def detach_broken(path: str, database: str, table: str, reason: str) -> None:
    """Detach ``database.table`` permanently (ClickHouse's ``.sql.detached``) and record why."""
    meta = os.path.join(path, "metadata", _file_name(database), f"{_file_name(table)}.sql")
    if not os.path.exists(meta):
        raise RuntimeError(f"table {database}.{table} failed to load ({reason}), and {meta} is not there")
    os.replace(meta, meta + ".detached")
    report = os.path.join(path, DETACHED_REPORT)
    entries = detached_tables(path)
    entries.append(
        {
            "table": f"{database}.{table}",
            "reason": reason,
            "detached_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": meta + ".detached",
        }
    )
    with open(report + ".tmp", "w") as f:
        json.dump(entries, f, indent=1)
    os.replace(report + ".tmp", report)
    log.error(
        "table %s.%s failed to load (%s): detached (its metadata is now %s.detached; fix the cause, "
        "then ATTACH TABLE %s.%s)",
        database,
        table,
        reason,
        meta,
        database,
        table,
    )


def detached_tables(path: str) -> list[dict[str, str]]:
    """What the engine detached at startup in data dir ``path`` (still detached ones only)."""
    try:
        with open(os.path.join(path, DETACHED_REPORT)) as f:
            entries: list[dict[str, str]] = json.load(f)
    except (OSError, ValueError):
        return []
    return [e for e in entries if os.path.exists(e.get("metadata", ""))]


def _fast_tmp() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decompress(data: bytes, encoding: str) -> bytes:
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rftloop-chdb"
    engine: Engine
    password: str = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------
    def _body_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The raw request body in pieces (Content-Length or chunked transfer encoding)."""
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537).strip()
                n = int(line.split(b";", 1)[0], 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                total += n
                if total > _MAX_BODY:
                    raise QueryFailed(1001, "request body too large")
                while n:
                    piece = self.rfile.read(min(n, size))
                    if not piece:
                        raise QueryFailed(1001, "request body ended early")
                    n -= len(piece)
                    yield piece
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            if left > _MAX_BODY:
                raise QueryFailed(1001, "request body too large")
            while left:
                piece = self.rfile.read(min(left, size))
                if not piece:
                    raise QueryFailed(1001, "request body ended early")
                left -= len(piece)
                yield piece

    def _body(self) -> Iterator[bytes]:
        """The decoded body in pieces: streamed when uncompressed, decompressed whole otherwise."""
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return self._body_chunks()
        return iter([_decompress(b"".join(self._body_chunks()), encoding)])

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", "rftloop-embedded")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, exc: QueryFailed) -> None:
        text = str(exc)
        if not text.startswith("Code:"):
            text = f"Code: {exc.code}. DB::Exception: {text}"
        body = f"{text} (version {self.engine.version})\n".encode()
        self._send(
            _STATUS_BY_CODE.get(exc.code, 500),
            body,
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
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            if not self._authorized(params):
                raise QueryFailed(516, "default: Authentication failed: password is incorrect")
            body = self._body() if read_body else iter(())
            sql, infile = self._statement(params.get("query", ""), body)
            fmt = params.get("default_format", "TabSeparated")
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {
                k: v
                for k, v in params.items()
                if k not in _PROTOCOL_PARAMS and not k.startswith("param_") and _SETTING_NAME.match(k)
            }
            try:
                out, summary = self.engine.execute(sql, fmt, params.get("database"), qparams, settings)
            finally:
                if infile:
                    os.unlink(infile)
        except QueryFailed as exc:
            self._error(exc)
            return
        except (ValueError, OSError) as exc:
            self._error(QueryFailed(1001, f"bad request: {exc}"))
            return
        self._send(
            200,
            out,
            {
                "Content-Type": "application/octet-stream"
                if fmt == "Native"
                else "text/plain; charset=UTF-8",
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Summary": json.dumps(summary),
            },
        )

    def _statement(self, query: str, body: Iterator[bytes]) -> tuple[str, str | None]:
        """The SQL to run, and the temp file holding insert data (if any).

        An insert's statement is either the ``query`` parameter (body = data) or
        the body's first line up to ``FORMAT <name>`` and a newline (the rest =
        data). Data never passes through a SQL string: it streams into a temp
        file that ClickHouse reads with ``FROM INFILE``.
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
                return full.decode(), None
            first = first[nl + 1 :]
        assert m is not None
        fd, path = tempfile.mkstemp(dir=self.engine.tmpdir, suffix=".bin")
        written = 0
        with os.fdopen(fd, "wb") as f:
            if first:
                written += f.write(first)
            for piece in body:
                written += f.write(piece)
        if not written:
            os.unlink(path)
            raise QueryFailed(108, "No data to insert")  # NO_DATA_TO_INSERT
        settings = (m.group(2) or b"").decode()
        stmt_sql = (
            f"{m.group(1).decode()} FROM INFILE {_quote_literal(path)}{settings} FORMAT {m.group(3).decode()}"
        )
        return stmt_sql, path


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
