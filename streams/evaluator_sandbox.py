"""Evaluators run in a child process, each response under a deadline (the evaluate stage's runner).

An evaluator is user code (``RFTLOOP_STREAMS_EVALUATOR_MODULES``): it can loop, block or take the
interpreter down, and a Python thread cannot be stopped from outside. So the evaluators run in one
spawned child process (a fresh interpreter: no fork of the worker's Kafka and asyncio threads) that
imports the same modules, and a batch goes to it in one message; it answers response by response.

When a response is not scored within ``timeout_s`` (or the child dies), the child is killed and a
new one started; that response is then scored evaluator by evaluator, each under the same
deadline, so the evaluators that answer still score it and only the ones that did not are reported
(the stage dead-letters the record naming them). The rest of the batch goes on in the new child.
Why not a ``concurrent.futures`` pool: it cannot kill one task, and a hung task keeps its worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from infra import rewards

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a cold, loaded machine imports torch-free modules in seconds; be generous


class EvaluatorStartFailed(RuntimeError):
    """The evaluators' process could not start (an evaluator module fails to import, an unknown name)."""


@dataclass
class Outcome:
    """One response's scores, and the evaluators that did not answer within the deadline."""

    scores: dict[str, float] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)


def _child(conn: Connection, names: list[str], modules: list[str]) -> None:
    try:
        rewards.load_modules(modules)
        evaluators = rewards.resolve(names)
    except BaseException as exc:  # reported to the parent, which stops with it
        conn.send(("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
        return
    conn.send(("ready", sorted(evaluators)))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        items, only = msg
        chosen = evaluators if only is None else {n: evaluators[n] for n in only}
        for item in items:
            conn.send(rewards.run(chosen, item))


class EvaluatorSandbox:
    def __init__(self, names: Sequence[str], modules: Sequence[str], timeout_s: float) -> None:
        self.names = list(names)
        self.modules = [m for m in modules if m]
        self.timeout_s = timeout_s
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None

    # -- the child ------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._conn is not None

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child, args=(child, self.names, self.modules), name="rftloop-evaluators", daemon=True
        )
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise EvaluatorStartFailed(f"the evaluators' process did not start in {START_TIMEOUT_S:.0f} s")
        try:
            status, detail = parent.recv()
        except EOFError:
            raise EvaluatorStartFailed(
                f"the evaluators' process exited at start (exit code {proc.exitcode})"
            ) from None
        if status != "ready":
            proc.join(5)
            raise EvaluatorStartFailed(f"evaluators {self.names} from modules {self.modules}: {detail}")
        self._proc, self._conn = proc, parent

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._conn.close()
        if self._proc is not None:
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = self._conn = None

    def _restart(self, why: str) -> None:
        self.restarts += 1
        log.warning(
            "evaluators: %s; killing their process and starting another (restart %d)", why, self.restarts
        )
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None
        self.start()

    def _answer(self) -> dict[str, float] | None:
        """The next response's scores; None when the child took longer than the deadline or died."""
        assert self._conn is not None
        try:
            if not self._conn.poll(self.timeout_s):
                return None
            scores: dict[str, float] = self._conn.recv()
            return scores
        except (EOFError, OSError):
            return None

    # -- scoring --------------------------------------------------------------------
    def run(self, items: Sequence[rewards.EvalInput]) -> list[Outcome]:
        """Every item's outcome, in order; a stuck or crashing evaluator costs its item(s) a restart."""
        if self._conn is None:
            self.start()
        out: list[Outcome] = []
        pending = list(items)
        while pending:
            assert self._conn is not None
            self._conn.send((pending, None))
            done = 0
            for _ in pending:
                scores = self._answer()
                if scores is None:
                    break
                out.append(Outcome(scores))
                done += 1
            if done == len(pending):
                return out
            stuck = pending[done]
            self._restart(f"a response was not scored within {self.timeout_s:g} s")
            out.append(self._one_by_one(stuck))
            pending = pending[done + 1 :]
        return out

    def _one_by_one(self, item: rewards.EvalInput) -> Outcome:
        """Score ``item`` with each evaluator alone: keep the answers, name the ones that hang."""
        outcome = Outcome()
        for name in self.names:
            assert self._conn is not None
            started = time.monotonic()
            self._conn.send(([item], [name]))
            scores = self._answer()
            if scores is None:
                outcome.timed_out.append(name)
                self._restart(f"evaluator {name!r} did not answer in {time.monotonic() - started:.1f} s")
            else:
                outcome.scores.update(scores)
        return outcome
