"""A logger made before ``fork()`` keeps working in the child (gunicorn ``--preload``, uWSGI, Celery's
prefork pool, ``multiprocessing`` with ``fork``).

What a forked child inherits from a logger is its parent's: the pipe to the parent's sender process
(the default sender) or a librdkafka producer whose threads did not survive the fork (the thread
sender), and the parent's queued calls, which the parent still delivers. Left alone, the child's
calls would queue where no thread feeds them, and a write of the child's into the parent's pipe
would interleave with the parent's frames.

So after a fork, in the child (``os.register_at_fork``), every logger made before it gives up what it
inherited without touching it, and makes its own sender on first use: the child's first call starts
it (~1 s for the sender process), its later calls cost what they cost in any process. Nothing the
parent queued is sent twice: the child's copy of the queue goes with the inherited sender. A child
that never logs starts nothing.

- The inherited pipe's ends are pointed at ``/dev/null`` (``dup2``), so the parent's sender process
  sees its input end when the parent closes it, not when the last child exits, and no buffered byte
  of the parent's can reach it from here.
- An inherited librdkafka producer is never destroyed in the child: destroying it waits for threads
  that exist only in the parent (a hang at exit). It is kept alive for the child's lifetime.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from producers.sdk.sender import Build, SenderClosed, SenderStats

_clients: weakref.WeakSet[Any] = weakref.WeakSet()


class Forkable(Protocol):
    def _forked(self) -> None: ...


def track(client: Forkable) -> None:
    """Call ``client._forked()`` in the child after every fork of this process."""
    _clients.add(client)


def _after_fork() -> None:
    for client in list(_clients):
        client._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)


def abandon_process(proc: subprocess.Popen[bytes]) -> None:
    """Let go of the parent's sender process without a byte to it: its pipe ends here become
    ``/dev/null``."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(null, stream.fileno())
    finally:
        os.close(null)
    proc.returncode = 0  # not this process's child: never waited for or signalled from here


def keep_alive(obj: Any) -> None:
    """Never free ``obj`` in this process (an inherited librdkafka handle: freeing it would wait for
    threads that are not here)."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


class Unstarted:
    """A logger's sender in a forked child until its first call, which makes the child's own
    (``start``) and hands it to the logger (``swap``) for the calls after it."""

    def __init__(self, start: Callable[[], Any], swap: Callable[[Any], None]) -> None:
        self._start, self._swap = start, swap
        self._lock = threading.Lock()
        self._sender: Any = None
        self._closed = False
        self.stats = SenderStats()

    def submit(self, build: Build, *args: Any) -> bool:
        with self._lock:
            if self._closed:
                raise SenderClosed("this logger is closed; create a new one")
            if self._sender is None:
                self._sender = self._start()
                self._swap(self._sender)
        return bool(self._sender.submit(build, *args))

    def flush(self, timeout_s: float = 30) -> bool:
        return True if self._sender is None else bool(self._sender.flush(timeout_s))

    def close(self, timeout_s: float = 30) -> bool:
        with self._lock:
            self._closed = True
            return True if self._sender is None else bool(self._sender.close(timeout_s))

    def health(self) -> dict[str, Any]:
        if self._sender is not None:
            return dict(self._sender.health())
        return {
            "status": "ok",
            "waiting": 0,
            "sender": "not started in this process yet (forked after the logger was made; its first call starts it)",
        }

    def _forked_away(self) -> None:
        """Forked again before its first call: nothing inherited to let go of."""
