"""An insert's request body streamed to the engine through a named pipe, for ``input()``.

``INSERT ... SELECT ... FROM input('structure') FORMAT f`` reads the request body as a table (the
sink sends its framed Avro that way). chdb's streaming inserter (``Engine.insert``) takes plain
``INSERT INTO t`` statements only, so the front rewrites ``input(`` to ``file('<pipe>', 'f', ``: the
engine reads the pipe while this object's thread writes the body into it, chunk by chunk as it
arrives from the socket. Parsing overlaps the transfer, and nothing is copied to a temp file first
(the former path wrote the whole body to /dev/shm, then ran the query).

What a named pipe cannot say is *why* it ended. A body that ends early (the client died) reaches the
engine as an end of input: rows before the cut that parse whole are inserted, as rows before a cut
are on clickhouse-server for an insert of more than one block. The front then answers the error
(``request body ended early``). The sink, this path's user, inserts into ReplacingMergeTree tables
and resends a failed batch whole, so such rows collapse by ``event_id``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Iterator

_PIPE_BYTES = 1 << 20  # a bigger pipe buffer: fewer wake-ups per MB (the kernel caps it)


class BodyPipe:
    """Write ``chunks`` into a new named pipe in ``tmpdir`` (``path``) on a thread of its own, once the
    engine opens it. ``close()`` after the query: it releases a writer the engine never read from,
    drains what of the body is left (the HTTP connection stays in step) and removes the pipe."""

    def __init__(self, tmpdir: str, chunks: Iterator[bytes]) -> None:
        self.path = os.path.join(tmpdir, f"{uuid.uuid4().hex}.fifo")
        os.mkfifo(self.path, 0o600)
        self.written = 0
        self.error: Exception | None = None  # the body's own failure (ended early, too large)
        self._closed = False
        self._chunks = chunks
        self._thread = threading.Thread(target=self._pump, name="clickhouse-body-pipe", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY)  # returns once the engine (or close()) opens the read end
        except OSError as exc:
            self.error = exc
            self._drain()
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, 1031, _PIPE_BYTES)  # F_SETPIPE_SZ (Linux)
            for chunk in self._chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.written += len(chunk)
        except BrokenPipeError:
            self._drain()  # the engine stopped reading: the query failed; its error is the answer
        except Exception as exc:  # the body itself failed
            self.error = exc
        finally:
            os.close(fd)

    def _drain(self) -> None:
        try:
            for _ in self._chunks:
                pass
        except Exception as exc:
            self.error = self.error or exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The engine may never have opened the pipe (the query failed before reading): open and close
        # the read end until the writer's open returns; its writes then fail and it drains the body.
        while self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
            self._thread.join(0.05)
        os.unlink(self.path)
