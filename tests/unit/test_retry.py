"""The Kafka retry policy (infra/retry.py) and the stream stages' loop that uses it: a retriable
error that outlasts the old 5 attempts is ridden through; a fatal one stops with its cause."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra.kafka import DeliveryFailed
from infra.retry import FatalKafkaError, Retrier, Stopped, is_retriable, kafka_error
from infra.settings import KafkaSettings, StreamsSettings
from streams import transactional
from streams.stats import StreamStats


def _loading() -> KafkaException:
    # as the broker sends it: librdkafka flags it retriable on a commit
    return KafkaException(
        KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "Coordinator load in progress", retriable=True)
    )


def test_a_retriable_error_longer_than_five_attempts_is_ridden_through() -> None:
    calls, seen = 0, []
    r = Retrier("sink", base_s=0.001, cap_s=0.002)

    def commit() -> str:
        nonlocal calls
        calls += 1
        if calls <= 12:
            seen.append(r.health())
            raise _loading()
        return "committed"

    assert r.call("offset commit", commit) == "committed"
    assert calls == 13 and r.retries == 12
    assert seen[-1]["kafka"] == "retrying" and seen[-1]["kafka_step"] == "offset commit"
    assert "COORDINATOR_LOAD_IN_PROGRESS" in seen[-1]["kafka_error"]
    assert r.health() == {"kafka": "ok", "kafka_retries": 12}


def test_transient_codes_count_as_retriable_even_unflagged() -> None:
    assert is_retriable(KafkaError(KafkaError.NOT_COORDINATOR))
    assert is_retriable(KafkaError(KafkaError._TRANSPORT))
    assert is_retriable(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, retriable=True))
    assert not is_retriable(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_retriable(KafkaError(KafkaError._UNKNOWN_TOPIC))


def test_a_fatal_error_stops_at_once_naming_its_cause() -> None:
    calls = 0

    def commit() -> None:
        nonlocal calls
        calls += 1
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed"))

    with pytest.raises(FatalKafkaError, match=r"sink: offset commit: TOPIC_AUTHORIZATION_FAILED") as info:
        Retrier("sink", base_s=0.001).call("offset commit", commit)
    assert calls == 1
    assert isinstance(info.value.error, KafkaError)


def test_delivery_failed_carries_the_error_that_caused_it() -> None:
    cause = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert kafka_error(DeliveryFailed("1 record(s) failed", cause)) is cause
    assert kafka_error(KafkaException("topics not visible after 30s")) == "topics not visible after 30s"


def test_stop_ends_a_retry_that_would_go_on() -> None:
    stop = threading.Event()
    r = Retrier("judge", stop, base_s=0.001, cap_s=0.002)
    calls = 0

    def publish() -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            stop.set()
        raise _loading()

    with pytest.raises(Stopped, match="judge: stopped while retrying publishing"):
        r.call("publishing", publish)
    assert calls == 4


def test_backoff_is_capped() -> None:
    waits: list[float] = []

    class Clocked(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(float(timeout or 0))
            return False

    r = Retrier("x", Clocked(), base_s=0.2, cap_s=5.0)
    for _ in range(10):
        r.failed("step", _loading())
    assert waits[:3] == [0.2, 0.4, 0.8] and max(waits) == 5.0 and waits[-1] == 5.0


class _Stage(transactional.TransactionalStage):
    name = "test"

    def transform(self, p: Any, batch: list[Any]) -> Counter[str]:
        return Counter()


def _stage() -> _Stage:
    settings = StreamsSettings(instance_id="unit", transaction_timeout_s=1)
    stage = _Stage(KafkaSettings(), settings, StreamStats(), ["t"])
    stage.kafka_retry.base_s = stage.kafka_retry.cap_s = 0.001
    return stage


def test_stage_rides_through_a_coordinator_that_loads_for_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old loop gave up after 5 restarts in a row; this error lasts 20 and the stage stays up."""
    stop = threading.Event()
    attempts = 0

    def producer(*_a: Any, **_k: Any) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 21:
            stop.set()
        raise _loading()

    monkeypatch.setattr(transactional, "transactional_producer", producer)
    stage = _stage()
    stage.run(stop)  # returns when stopped, never raises while the error stays retriable
    assert attempts == 21
    assert stage.stats.aborted_batches == 21


def test_stage_stops_on_a_fatal_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def producer(*_a: Any, **_k: Any) -> Any:
        raise KafkaException(KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "not allowed"))

    monkeypatch.setattr(transactional, "transactional_producer", producer)
    with pytest.raises(
        FatalKafkaError, match="streams test: transaction: TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
    ):
        _stage().run(threading.Event())


def test_the_sink_gives_up_a_commit_only_when_the_group_moved_on() -> None:
    """A rebalance or a dropped member: the next owner re-reads (rows collapse by event_id), so the
    commit is skipped; a loading coordinator is raised for the Retrier to ride through."""
    from consumers.clickhouse_sink.commits import OffsetCommits

    class Consumer:
        def __init__(self, code: int) -> None:
            self.code = code

        def commit(self, offsets: Any, asynchronous: bool) -> None:
            raise KafkaException(KafkaError(self.code))

    commits = OffsetCommits(lambda n: None)
    commits.target[("t", 0)] = 5
    commits.commit_sync(Consumer(KafkaError.ILLEGAL_GENERATION))
    commits.commit_sync(Consumer(KafkaError._NO_OFFSET))
    with pytest.raises(KafkaException):
        commits.commit_sync(Consumer(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))
    r = Retrier("sink", base_s=0.001, cap_s=0.001)
    loading = Consumer(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    attempts = 0

    def commit() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 10:
            commits.commit_sync(loading)

    r.call("offset commit", commit)
    assert attempts == 10
