"""The judge process decides nothing before it has replayed both topics to where they ended at its
start (streams/judge.py): after a restart the old judge decided as soon as model.versions was read,
on the few windows read by then."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from infra.settings import JudgeSettings, KafkaSettings, RegistrySettings
from streams import judge as judge_mod
from tests.unit.test_canary_book import published, window

VERSIONS_T, METRICS_T = "model.versions", "llm.metrics.window"


class Msg:
    def __init__(self, topic: str, offset: int, event: Any) -> None:
        self._topic, self._offset, self.event = topic, offset, event

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> Any:
        return self.event


def test_no_decision_until_both_topics_are_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    windows = [w for k in range(6) for w in (window("v1", 5, 5, k), window("base", 5, 5, k))]
    batches = [
        [Msg(VERSIONS_T, 0, published("v1")), *[Msg(METRICS_T, i, w) for i, w in enumerate(windows[:4])]],
        [Msg(METRICS_T, i, w) for i, w in enumerate(windows[4:], start=4)],
    ]
    judge = judge_mod.Judge(KafkaSettings(), RegistrySettings(), JudgeSettings())

    class Consumer:
        def consume(self, n: int, timeout: float) -> list[Msg]:
            if batches:
                return batches.pop(0)
            judge.stop()
            return []

        def close(self) -> None:
            pass

    class Serde:
        @staticmethod
        def decode_event(value: Any) -> Any:
            return value

    monkeypatch.setattr(judge_mod, "consumer", lambda *a, **k: Consumer())
    ends = {(VERSIONS_T, 0): 1, (METRICS_T, 0): len(windows)}
    monkeypatch.setattr(judge_mod, "assign_from_start", lambda c, topics, retry: dict(ends))
    judge.versions_topic = replace(judge.versions_topic, name=VERSIONS_T)
    judge.metrics_topic = replace(judge.metrics_topic, name=METRICS_T)
    judge.serde = {k: Serde() for k in judge.serde}  # type: ignore[misc]

    class Publisher:  # no Kafka here: nothing is published (evaluate is replaced below)
        def warm(self, *specs: Any) -> None:
            pass

        def close(self) -> None:
            pass

    judge.publisher = Publisher()  # type: ignore[assignment]
    seen: list[int] = []
    monkeypatch.setattr(
        judge, "evaluate", lambda now=None: seen.append(sum(map(len, judge.book.windows.values())))
    )
    judge.run(max_seconds=10)
    assert judge.caught_up and seen, "the judge never evaluated"
    assert seen[0] == len(windows), f"decided after {seen[0]} of {len(windows)} windows were replayed"
