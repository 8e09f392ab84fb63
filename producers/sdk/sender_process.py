"""The SDK's sender in a child process: building, redaction, Avro encoding and delivery leave the
application's interpreter, so they never hold its GIL.

``EventSender`` (``sender.py``) does that work on a thread of the application. Where that thread
keeps up in the pauses between the application's calls, a ``log()`` call costs its own few µs. Where
it does not (a slower machine: 9-15k calls/s against the 20k/s that the benchmark's bursts need, see
``producers.sdk_log_call_us.sender_calls_per_s``), it encodes side by side with the calls and each
waits for the GIL: p99 0.24-1.2 ms. The SDK's loggers run that work here by default
(``process=False`` keeps the thread).
The application's side only queues a tuple per call, as before, and a feeder thread pickles the
queue in batches to the child's stdin once the calls pause. Pickling costs 0.8 µs a call (batches
of 500) against the ~80 µs the thread sender spends, so it keeps up. The price: one Python process
per logger (started with ``python -m producers.sdk.sender_child``, so an application's ``__main__``
is never re-imported) and ~1 s to start it. On the slower machine of 2026-12-07, in one benchmark
run: p99 27.7 µs in the calling thread this way, 1,037 µs with the thread sender
(``producers.sdk_log_call_us`` and ``.thread``). The child runs at niceness +10 (``NICE``): background work,
so where the cores are busy the scheduler runs the application first (before: 38.7-71.8 µs).

Why a hand-written pipe protocol and not ``multiprocessing``: its ``spawn`` start re-imports the
application's main module (a script that builds a logger at top level would recurse), and ``fork``
is unsafe in a process with threads. Frames are a 4-byte length and a pickle, both ways:

- to the child: ``("init", kafka, registry, topics, suffix, buffer, context)``, then
  ``("batch", [(build, args), ...])``, ``("flush", token, timeout_s)``;
- from the child: ``("ready",)`` or ``("error", exception class name, message)``, ``("stats", ...)``
  after every batch and every 0.2 s, ``("flushed", token, records left)``.

The child exits when its stdin closes (``close()``, or the application died), after delivering what
it holds. If it dies otherwise, the calls it held are counted in ``failed`` and logged, and the feeder
starts a new one with backoff; calls still queued here are kept.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from infra import serde as serde_mod
from infra.settings import KafkaSettings, RegistrySettings
from producers.sdk import forking
from producers.sdk.sender import (
    Build,
    SenderClosed,
    SenderStats,
    application_calling,
    count_dropped,
    encoded,
    sender_producer,
)
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
BATCH = 500  # calls per frame
START_TIMEOUT_S = 60.0
NICE = 10  # the child's niceness, added to the application's
IDLE_S = 0.02  # how often the idle feeder looks for queued calls


class SenderProcessFailed(RuntimeError):
    """The sender's child process could not start: its settings do not pickle, or it exited or did
    not answer in time."""


class _InChild:
    """Stands, in a queued call, for the build context that the child holds (the logger's name and
    redactor); pickled by reference to the module's one instance."""

    def __reduce__(self) -> str:
        return "IN_CHILD"


IN_CHILD = _InChild()


@dataclass
class BuildContext:
    """What a logger's build functions read from ``self``, rebuilt in the child."""

    producer_name: str
    redact: Any


def _write(out: IO[bytes], msg: Any) -> None:
    data = pickle.dumps(msg, protocol=5)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


def _read(inp: IO[bytes]) -> Any:
    head = inp.read(4)
    if len(head) < 4:
        raise EOFError
    (size,) = _LEN.unpack(head)
    data = inp.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class ProcessSender:
    """``EventSender``'s interface (``submit``, ``flush``, ``health``, ``close``, ``stats``) with
    the work in a child process. ``context`` must pickle (a ``Redactor`` with only built-in
    detectors and regexes does; custom detector functions must be module-level)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        topics: list[TopicSpec],
        *,
        context: BuildContext,
        buffer: int = 100_000,
        topic_suffix: str = "",
    ) -> None:
        self._init = ("init", kafka, registry, topics, topic_suffix, buffer, context)
        try:
            pickle.dumps(self._init, protocol=5)
        except Exception as exc:  # PicklingError, AttributeError (a lambda), TypeError (a lock ...)
            raise SenderProcessFailed(
                f"the logger's settings cannot travel to the sender process ({type(exc).__name__}: {exc}); "
                "give custom redaction detectors module-level functions, or use process=False"
            ) from exc
        self._buffer = buffer
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()  # (queued at, build, *args)
        self._last_submit = 0.0
        self._closed = False
        self._lock = threading.Lock()  # the child's stdin: the feeder and flush() both write
        self._cv = threading.Condition()  # close() wakes the idle feeder
        self.stats = SenderStats()
        self._handed = 0  # calls written to the current child
        self._child: dict[str, Any] = {}  # its latest stats frame
        self._flushed: dict[int, int] = {}
        self._flush_cv = threading.Condition()
        self._token = 0
        self._base = SenderStats()  # what earlier children delivered, failed, ...
        self._proc = self._start()
        self._feeder = threading.Thread(target=self._feed, name="rftloop-sender-feeder", daemon=True)
        self._feeder.start()

    # -- the child ------------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[bytes]:
        root = str(Path(__file__).resolve().parents[2])  # the directory holding producers/, infra/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "producers.sdk.sender_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError, OSError):  # a child gone already: said below
            _write(proc.stdin, self._init)
        answer: list[Any] = []
        reader = threading.Thread(target=lambda: answer.append(_safe_read(proc.stdout)), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        first = answer[0] if answer else None
        if not first or first[0] != "ready":
            proc.kill()
            proc.wait(5)
            if first and first[0] == "error":
                cls = getattr(serde_mod, first[1], None)
                if isinstance(cls, type) and issubclass(cls, Exception):
                    raise cls(first[2])
                raise SenderProcessFailed(f"the sender process failed to start: {first[1]}: {first[2]}")
            code = proc.poll()
            how = (
                f"exited at start (code {code}; its stderr is this process's)"
                if answer
                else f"did not answer in {START_TIMEOUT_S:.0f} s"
            )
            raise SenderProcessFailed(
                f"the sender process ({sys.executable} -m producers.sdk.sender_child) {how}; "
                "process=False runs the sender as a thread of this process instead"
            )
        self._handed = 0
        self._child = {}
        threading.Thread(
            target=self._receive, args=(proc,), name="rftloop-sender-receiver", daemon=True
        ).start()
        return proc

    def _receive(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            msg = _safe_read(proc.stdout)
            if msg is None:
                return
            if msg[0] == "stats":
                self._child = msg[1]
                for name in ("sent", "delivered", "failed", "encode_errors"):
                    setattr(self.stats, name, getattr(self._base, name) + self._child[name])
                if self._child["last_error"]:
                    self.stats.last_error = self._child["last_error"]
            elif msg[0] == "flushed":
                with self._flush_cv:
                    self._flushed[msg[1]] = msg[2]
                    self._flush_cv.notify_all()

    def _restart(self) -> None:
        """The child died: count what it held as failed, and start another (with backoff)."""
        code = self._proc.poll()
        lost = self._handed - int(self._child.get("processed", 0))
        lost_events = int(self._child.get("pending", 0))
        self._base = replace(self.stats)
        self._base.failed += lost_events + max(0, lost)  # records in its producer, calls not encoded
        self.stats.failed = self._base.failed
        self.stats.last_error = f"the sender process exited (code {code}); {max(0, lost)} call(s) lost"
        log.error("%s; starting another", self.stats.last_error)
        delay = 1.0
        while not self._closed:
            try:
                self._proc = self._start()
                return
            except Exception as exc:  # registry or broker down: keep trying, say so
                self.stats.last_error = f"sender process restart failed: {type(exc).__name__}: {exc}"
                log.error("%s; retrying in %.0f s", self.stats.last_error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- the application's side -----------------------------------------------------------------
    def submit(self, build: Build, *args: Any) -> bool:
        """Queue ``build(*args)`` (called in the child; ``IN_CHILD`` as the first argument stands
        for the logger); False (and counted) when the buffer is full."""
        if self._closed:
            raise SenderClosed("this logger is closed; create a new one")
        if len(self._queue) + self._in_child() >= self._buffer:
            count_dropped(self.stats, self._buffer)
            return False
        self._last_submit = now = time.monotonic()
        self._queue.append((now, build, *args))
        self.stats.queued += 1
        return True

    def _in_child(self) -> int:
        """Calls handed to the child and not yet encoded, plus records in its producer."""
        child = self._child
        return self._handed - int(child.get("processed", 0)) + int(child.get("pending", 0))

    def pending_in_kafka(self) -> int:
        return int(self._child.get("pending", 0))

    def _feed(self) -> None:
        while True:
            if self._proc.poll() is not None:
                if self._closed:  # closed while no child runs: what is still queued cannot go
                    if self._queue:
                        self.stats.failed += len(self._queue)
                        log.error(
                            "%d call(s) not sent: the logger closed with no sender process", len(self._queue)
                        )
                        self._queue.clear()
                    return
                self._restart()
                continue
            if not self._queue:
                if self._closed:
                    return
                # Not woken by a call: it would only take the GIL at the start of a burst to find the
                # application calling; the calls wait for a pause anyway (at most IDLE_S more).
                with self._cv:
                    if not self._queue and not self._closed:
                        self._cv.wait(IDLE_S)  # close() wakes it
                continue
            now = time.monotonic()
            if not self._closed and application_calling(
                now, self._last_submit, self._queue[0][0], len(self._queue), self._buffer
            ):
                time.sleep(0.002)  # the application is calling: pickle in its pause
                continue
            # Popped, pickled and written under the lock: a flush() written after it follows it.
            with self._lock:
                batch: list[tuple[Any, tuple[Any, ...]]] = []
                while self._queue and len(batch) < BATCH:
                    item = self._queue.popleft()
                    batch.append((item[1], item[2:]))
                batch, frame = self._frame(batch)
                try:
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(frame)
                    self._proc.stdin.flush()
                    self._handed += len(batch)
                except (BrokenPipeError, OSError, ValueError):
                    self._queue.extendleft(
                        (0.0, build, *args) for build, args in reversed(batch)
                    )  # not delivered to the child: kept for the next one
                    time.sleep(0.05)

    def _frame(
        self, batch: list[tuple[Any, tuple[Any, ...]]]
    ) -> tuple[list[tuple[Any, tuple[Any, ...]]], bytes]:
        """The frame of ``batch``, without the calls that cannot travel to the child (counted and
        logged), and the calls it holds."""
        try:
            data = pickle.dumps(("batch", batch), protocol=5)
        except Exception:  # PicklingError, TypeError, AttributeError (a lambda, a lock ...)
            kept = []
            for call in batch:
                try:
                    pickle.dumps(call, protocol=5)
                    kept.append(call)
                except Exception as exc:
                    self._base.encode_errors += 1
                    self.stats.encode_errors += 1
                    self.stats.last_error = (
                        f"not picklable for the sender process: {type(exc).__name__}: {exc}"
                    )
                    log.error("event not sent: %s", self.stats.last_error)
            batch = kept
            data = pickle.dumps(("batch", batch), protocol=5)
        return batch, _LEN.pack(len(data)) + data

    def flush(self, timeout_s: float = 30) -> bool:
        """Wait until every queued call is delivered (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._queue:
            return False
        with self._flush_cv:
            self._token += 1
            token = self._token
        try:
            with self._lock:
                assert self._proc.stdin is not None
                _write(self._proc.stdin, ("flush", token, max(0.0, deadline - time.monotonic())))
        except (BrokenPipeError, OSError, ValueError):
            return False
        with self._flush_cv:
            self._flush_cv.wait_for(lambda: token in self._flushed, max(0.0, deadline - time.monotonic()) + 1)
            left = self._flushed.pop(token, None)
        return left == 0 and not self._queue

    def health(self) -> dict[str, Any]:
        child = self._child
        waiting = len(self._queue) + self._in_child()
        alive = self._proc.poll() is None
        stalled = bool(child.get("stalled"))
        degraded = bool(
            not alive or self.stats.dropped or self.stats.failed or stalled or waiting > self._buffer // 10
        )
        return {
            "status": "degraded" if degraded else "ok",
            "waiting": waiting,
            "buffer": self._buffer,
            "delivered": self.stats.delivered,
            "failed": self.stats.failed,
            "dropped": self.stats.dropped,
            "kafka": f"unreachable: {child.get('broker_error')}" if stalled else "ok",
            "sender": "process" if alive else f"process exited (code {self._proc.poll()}), restarting",
            "last_error": self.stats.last_error,
        }

    def _forked_away(self) -> None:
        """In a forked child: let go of the parent's sender process (``forking``); the parent still
        delivers what this copy of the queue holds."""
        forking.abandon_process(self._proc)
        self._closed = True
        self._queue.clear()

    def close(self, timeout_s: float = 30) -> bool:
        ok = self.flush(timeout_s)
        self._closed = True
        with self._cv:
            self._cv.notify()
        self._feeder.join(5)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # the child delivers what it holds and exits
        except OSError:
            pass
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return False
        return ok


def _safe_read(inp: IO[bytes] | None) -> Any:
    try:
        return _read(inp) if inp is not None else None
    except (EOFError, OSError, pickle.UnpicklingError):
        return None


# -- the child's side -------------------------------------------------------------------------------
def main() -> None:
    """The child: ``python -m producers.sdk.sender_child`` (tests/integration/test_sdk.py runs it)."""
    import queue

    from infra import registry as registry_mod
    from infra.serde import TopicSerde

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the frames
    with contextlib.suppress(OSError):
        # Background work: where the cores are busy, the scheduler runs the application's thread first.
        os.nice(NICE)
    _, kafka, registry, topics, suffix, buffer, context = _read(inp)
    try:
        reg = registry_mod.client(registry)
        serdes = {t.name: TopicSerde(reg, replace(t, name=t.name + suffix)) for t in topics}
        for s in serdes.values():
            s.schema_id  # noqa: B018 - a registry that is down is a clear error at start
        prod = sender_producer(kafka, buffer)
    except Exception as exc:
        _write(out, ("error", type(exc).__name__, str(exc)))
        return
    _write(out, ("ready",))
    names = {t.name: t.name + suffix for t in topics}
    inbox: queue.Queue[Any] = queue.Queue()

    def reader() -> None:
        while True:
            try:
                inbox.put(_read(inp))
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=reader, daemon=True).start()
    processed = sent = encode_errors = 0
    last_error: str | None = None

    def report() -> None:
        # a gone application closes the pipe; what it logged is still delivered (flush below)
        with contextlib.suppress(BrokenPipeError, OSError):
            _write(out, ("stats", stats()))

    def stats() -> dict[str, Any]:
        return {
            "processed": processed,
            "sent": sent,
            "delivered": prod.delivered,
            "failed": prod.failed,
            "encode_errors": encode_errors,
            "last_error": str(prod.last_error or last_error or "") or None,
            "pending": len(prod),
            "stalled": prod.stalled(),
            "broker_error": prod.broker_error,
        }

    while True:
        try:
            msg = inbox.get(timeout=0.2)
        except queue.Empty:
            prod.poll(0)
            report()
            continue
        if msg is None:  # stdin closed: deliver what is held, then go
            prod.flush(30)
            report()
            return
        if msg[0] == "batch":
            for build, args in msg[1]:
                try:
                    if args and args[0] is IN_CHILD:
                        args = (context, *args[1:])
                    for topic, event in build(*args):
                        data, key = encoded(serdes[topic.name], topic, event)
                        prod.produce(names[topic.name], data, key)
                        sent += 1
                except Exception as exc:  # one bad call must not stop the child
                    encode_errors += 1
                    last_error = f"{type(exc).__name__}: {exc}"
                    log.error("event not sent: %s", last_error)
                processed += 1
            report()
        elif msg[0] == "flush":
            left = prod.flush(msg[2])
            report()
            with contextlib.suppress(BrokenPipeError, OSError):
                _write(out, ("flushed", msg[1], left))
