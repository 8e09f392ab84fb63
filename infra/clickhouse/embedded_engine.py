"""The embedded ClickHouse engine (chdb) behind ``embedded_server``'s HTTP front.

chdb is the real ClickHouse engine as a library. One process owns the data dir; requests borrow
sessions from a pool, so concurrent reads never queue behind an insert.

One table must not brick the engine. chdb cannot run the Kafka table engine (it has no server
to run the engine's background consumers: ``CREATE`` fails with ``Shutdown was called`` but leaves
the table's metadata behind, and every later start fails). So ``Engine.execute`` refuses that DDL
before it reaches the engine, and a table that fails to load at startup is detached the way
ClickHouse's own ``DETACH TABLE ... PERMANENTLY`` does (its metadata file renamed to
``.sql.detached``), recorded in ``detached_tables.json`` in the data dir (``rftloop status`` shows
it) and the engine opened again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

from infra.clickhouse import sql_text

log = logging.getLogger(__name__)

CODE_RE = re.compile(r"Code:\s*(\d+)")
# CREATE / ATTACH of a table on an engine chdb cannot run (see the module doc)
_UNRUNNABLE_ENGINE = re.compile(
    r"^\s*(?:CREATE|ATTACH)\b[^;]*?\bTABLE\b[^;]*?\bENGINE\s*=\s*(Kafka)\b", re.IGNORECASE | re.DOTALL
)
# what chdb prints (to stderr, not in the exception) when a table fails to load at startup
_LOAD_FAILED = re.compile(
    r"Load job 'startup table ([^'.]+)\.([^']+)' failed: (.+?)(?:,\. \(ASYNC_LOAD|\n|$)"
)
DETACHED_REPORT = "detached_tables.json"
_MAX_DETACHED = 20
_MAX_NAMED = 64  # ClickHouse session_ids held at once; the least recently used idle one goes first


class QueryFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Engine:
    """The chdb engine, used through a pool of sessions: each request borrows one for its ``USE``,
    ``SET`` and query, so concurrent reads never wait behind an insert (chdb sessions on one data
    dir share the engine and keep their own database and settings; its docs call them thread-safe
    and suggest one per thread). ``sessions`` caps the pool; a request past it waits for a session.
    """

    def __init__(self, path: str, sessions: int = 4) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        first = _open_session(path)  # detaches what fails to load; later sessions find it gone
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._idle.put(first)
        self._opened, self._max = 1, max(1, sessions)
        self._grow = threading.Lock()
        self._sessions: dict[str, tuple[Any, threading.Lock, float]] = {}  # ClickHouse session_id
        self._timeouts: dict[str, float] = {}
        self.version = self._run(first, "SELECT version()", "TabSeparated").decode().strip()
        self.timezone = self._run(first, "SELECT serverTimezone()", "TabSeparated").decode().strip()
        self.tmpdir = tempfile.mkdtemp(prefix="rftloop-ch-", dir=_fast_tmp())

    def close(self) -> int:
        """Close the sessions no request holds (the pool's idle ones, every ClickHouse session_id's)
        and remove the temp dir; returns how many were closed. A request still running keeps its
        session until the process ends."""
        closed = 0
        with self._grow:
            named = [s for s, lock, _ in self._sessions.values() if not lock.locked()]
            self._sessions.clear()
        while True:
            try:
                named.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for s in named:
            try:
                s.close()
                closed += 1
            except Exception as exc:
                log.warning("could not close a chdb session: %s", exc)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return closed

    @contextmanager
    def session(self, session_id: str | None = None, timeout_s: float = 60) -> Iterator[Any]:
        """A session of the pool for one request (a new one while fewer than ``sessions`` exist);
        with a ClickHouse ``session_id``, that session's own chdb session, kept while it is used
        within ``timeout_s`` (temporary tables and settings live on), and never two requests at once
        (ClickHouse's SESSION_IS_LOCKED)."""
        if session_id:
            with self._named(session_id, timeout_s) as s:
                yield s
            return
        try:
            s = self._idle.get_nowait()
        except queue.Empty:
            with self._grow:
                opened = self._opened < self._max
                if opened:
                    self._opened += 1
            if opened:
                from chdb import session

                s = session.Session(self.path)
            else:
                s = self._idle.get()
        try:
            yield s
        finally:
            self._idle.put(s)

    @contextmanager
    def _named(self, session_id: str, timeout_s: float) -> Iterator[Any]:
        now = time.monotonic()
        with self._grow:
            for sid, (_s, lock, used) in list(self._sessions.items()):
                if now - used > self._timeouts.get(sid, 60) and not lock.locked():
                    del self._sessions[sid]  # expired: its temporary tables go with it
            entry = self._sessions.get(session_id)
            if entry is None and len(self._sessions) >= _MAX_NAMED:
                idle = [(used, sid) for sid, (_s, lock, used) in self._sessions.items() if not lock.locked()]
                if not idle:
                    raise QueryFailed(202, f"{_MAX_NAMED} sessions in use (TOO_MANY_SIMULTANEOUS_QUERIES)")
                del self._sessions[min(idle)[1]]  # the least recently used one goes
            if entry is None:
                from chdb import session

                entry = (session.Session(self.path), threading.Lock(), now)
            self._sessions[session_id] = (entry[0], entry[1], now)
            self._timeouts[session_id] = timeout_s
        s, lock, _ = entry
        if not lock.acquire(blocking=False):
            raise QueryFailed(
                373, f"Session {session_id} is locked by a concurrent client. (SESSION_IS_LOCKED)"
            )
        try:
            yield s
        finally:
            lock.release()
            with self._grow:
                if session_id in self._sessions:
                    self._sessions[session_id] = (s, lock, time.monotonic())

    @staticmethod
    def _run(session: Any, sql: str, fmt: str, params: dict[str, str] | None = None) -> bytes:
        return Engine._query(session, sql, fmt, params)[0]

    @staticmethod
    def _query(
        session: Any, sql: str, fmt: str, params: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The result's bytes and ClickHouse's query summary (``X-ClickHouse-Summary``) of it."""
        try:
            res = session.query(sql, fmt, params=params or None)
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with the ClickHouse text
            raise _failed(exc) from exc
        if res is None:
            return b"", {}
        if res.has_error():
            msg = res.error_message()
            m = CODE_RE.search(msg)
            raise QueryFailed(int(m.group(1)) if m else 1001, msg)
        return res.bytes(), {k: str(v) for k, v in _summary(res).items()}

    @contextmanager
    def _context(self, session: Any, database: str | None, settings: dict[str, str]) -> Iterator[None]:
        """``USE database`` and ``SET`` each setting in ``session`` for one request, undone after it."""
        if database:
            self._run(session, f"USE {quote_ident(database)}", "TabSeparated")
        applied = []
        try:
            for name, value in settings.items():
                self._run(session, f"SET {name} = {quote_literal(value)}", "TabSeparated")
                applied.append(name)
            yield
        finally:
            for name in applied:
                try:
                    self._run(session, f"SET {name} = DEFAULT", "TabSeparated")
                except QueryFailed:
                    log.warning("could not reset setting %s", name)
            if database:
                self._run(session, "USE default", "TabSeparated")

    def insert(
        self,
        statement: str,
        fmt: str,
        chunks: Iterator[bytes],
        database: str | None,
        settings: dict[str, str],
        session_id: str | None = None,
        session_timeout_s: float = 60,
    ) -> dict[str, Any]:
        """Stream ``chunks`` (data in format ``fmt``) into ``statement`` (``INSERT INTO t [(cols)]
        [SETTINGS ...]``, no FORMAT) with chdb's streaming inserter: the engine parses each chunk as it
        comes, with no temp file. If ``chunks`` fails (the body ended early), the insert is cancelled
        and the failure raised; if the engine refuses the data, QueryFailed with its code."""
        with (
            self.session(session_id, session_timeout_s) as session,
            self._context(session, database, settings),
        ):
            started = time.perf_counter()
            try:
                inserter = session.send_insert(statement, fmt)
            except Exception as exc:
                raise _failed(exc) from exc
            finishing = False
            try:
                for chunk in chunks:
                    inserter.append(chunk)
                finishing = True
                result = inserter.finish()
            except BaseException as exc:
                if not finishing:
                    try:
                        inserter.cancel()  # nothing of it is committed (the rows wait for finish())
                    except Exception as cancel_exc:
                        log.warning("could not cancel a streaming insert: %s", cancel_exc)
                if isinstance(exc, RuntimeError) and "Streaming insert" in str(exc):
                    raise _failed(exc) from exc
                raise
            elapsed = time.perf_counter() - started
        summary = {
            "read_rows": result.rows_written,
            "read_bytes": result.bytes_written,
            "written_rows": result.rows_written,
            "written_bytes": result.bytes_written,
            "total_rows_to_read": 0,
            "result_rows": 0,
            "result_bytes": 0,
            "elapsed_ns": int(elapsed * 1e9),
        }
        return {k: str(v) for k, v in summary.items()}

    def execute(
        self,
        sql: str,
        fmt: str,
        database: str | None,
        params: dict[str, str],
        settings: dict[str, str],
        session_id: str | None = None,
        session_timeout_s: float = 60,
        before: list[str] | None = None,
        after: list[str] | None = None,
    ) -> tuple[bytes, dict[str, Any]]:
        """Run ``sql`` in a session of the pool (or the named one) with ``database`` and ``settings``
        for it alone; ``before`` / ``after``: statements run in the same session around it (the
        external tables' create and load / drop), ``after`` even when the query fails."""
        refused = _UNRUNNABLE_ENGINE.match(sql)
        if refused:
            raise QueryFailed(
                48,  # NOT_IMPLEMENTED
                f"Code: 48. DB::Exception: the {refused.group(1)} table engine cannot run in the embedded "
                "ClickHouse (chdb runs no background consumers; the table would stop the next start). "
                "Ingest with `rftloop sink`, or point RFTLOOP_CLICKHOUSE_URL at a ClickHouse server. "
                "(NOT_IMPLEMENTED)",
            )
        with (
            self.session(session_id, session_timeout_s) as session,
            self._context(session, database, settings),
        ):
            started = time.perf_counter()
            try:
                for statement in before or []:
                    self._run(session, statement, "TabSeparated")
                try:
                    out, summary = self._query(session, sql, fmt, params)
                except QueryFailed as exc:
                    system = sql_text.system_table(sql) if sql_text.NO_METADATA in str(exc) else None
                    exists = f"EXISTS TABLE system.{quote_ident(system[0])}" if system else ""
                    if system is None or self._run(session, exists, "TabSeparated").strip() != b"1":
                        raise  # chdb says the same of a system table that does not exist
                    # chdb keeps no metadata of system tables: their statement as a server prints it
                    out, summary = self._query(session, sql_text.show_create_system(*system), fmt, params)
            finally:
                for statement in after or []:
                    try:
                        self._run(session, statement, "TabSeparated")
                    except QueryFailed as exc:
                        log.warning("could not clean up after a query (%s): %s", statement, exc)
            elapsed = time.perf_counter() - started
        return out, {**summary, "elapsed_ns": str(int(elapsed * 1e9))}

    def stream(
        self,
        sql: str,
        fmt: str,
        database: str | None,
        params: dict[str, str],
        settings: dict[str, str],
        session_id: str | None = None,
        session_timeout_s: float = 60,
        summary: dict[str, int] | None = None,
    ) -> Generator[bytes, None, None]:
        """``sql``'s result in ``fmt`` block by block as the engine produces it (chdb's streaming
        query), the session borrowed until the last block or ``close()``. QueryFailed from whichever
        ``next()`` meets the failure: the first (nothing produced yet) or a later one (mid-stream).
        chdb formats each streamed block as a whole output, so only formats without a prefix or
        suffix concatenate into one valid result (the caller's ``STREAMABLE_FORMATS``). ``summary``
        gathers the query summary (``X-ClickHouse-Summary``) of the blocks produced so far."""
        totals = summary if summary is not None else {}
        totals.update(dict.fromkeys(_SUMMARY_KEYS, 0))
        with (
            self.session(session_id, session_timeout_s) as session,
            self._context(session, database, settings),
        ):
            try:
                result = session.send_query(sql, fmt, params=params or None)
            except Exception as exc:
                raise _failed(exc) from exc
            done = False
            try:
                while True:
                    try:
                        block = result.fetch()
                    except Exception as exc:
                        done = True  # chdb ends a failed stream itself
                        raise _failed(exc) from exc
                    if block is None:
                        done = True
                        return
                    for key, value in _summary(block).items():
                        totals[key] += value
                    data = block.bytes()
                    if data:
                        yield data
            finally:
                if not done:  # the caller stopped reading (its client went away): stop the query
                    try:
                        result.cancel()
                    except Exception as exc:
                        log.warning("could not cancel a streamed query: %s", exc)


_SUMMARY_KEYS = (
    "read_rows",
    "read_bytes",
    "written_rows",
    "written_bytes",
    "total_rows_to_read",
    "result_rows",
    "result_bytes",
)


def _summary(res: Any) -> dict[str, int]:
    """ClickHouse's query summary (``X-ClickHouse-Summary``) of a chdb result or streamed block."""
    counts = (
        res.storage_rows_read(),
        res.storage_bytes_read(),
        res.rows_written(),
        res.bytes_written(),
        res.storage_rows_read(),
        res.rows_read(),
        res.bytes_read(),
    )
    return dict(zip(_SUMMARY_KEYS, counts, strict=True))


def _failed(exc: Exception) -> QueryFailed:
    """chdb's exception (ChdbError / RuntimeError with ClickHouse's text) as QueryFailed with its code."""
    # chdb's prefix, not ClickHouse's text
    msg = re.sub(r"^Streaming (?:insert \w+|query) failed: ", "", str(exc))
    m = CODE_RE.search(msg)
    return QueryFailed(int(m.group(1)) if m else 1001, msg)


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


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
