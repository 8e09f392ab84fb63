"""What stands for a logger's sender in a forked child until its first call (``producers.sdk.forking``);
the fork itself, with real Kafka, is in tests/integration/test_sdk.py."""

from __future__ import annotations

from typing import Any

import pytest

from producers.sdk.forking import Unstarted
from producers.sdk.sender import SenderClosed


class Sender:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def submit(self, build: Any, *args: Any) -> bool:
        self.calls.append((build, *args))
        return True

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "sender": "process"}


def _starter() -> tuple[list[Sender], Any]:
    """A ``start`` for Unstarted, and the senders it started."""
    started: list[Sender] = []

    def start() -> Sender:
        started.append(Sender())
        return started[-1]

    return started, start


def test_the_first_call_starts_one_sender_and_hands_it_over() -> None:
    started, start = _starter()
    swapped: list[Any] = []
    u = Unstarted(start, swapped.append)
    assert u.flush() and "not started" in u.health()["sender"]  # nothing to send yet, nothing started
    assert started == []
    assert u.submit(list, "a") and u.submit(list, "b")
    assert len(started) == 1 and swapped == started and started[0].calls == [(list, "a"), (list, "b")]


def test_closed_before_its_first_call_it_starts_nothing_and_refuses_calls() -> None:
    started, start = _starter()
    u = Unstarted(start, lambda s: None)
    assert u.close()
    with pytest.raises(SenderClosed):
        u.submit(list, "late")
    assert started == []
