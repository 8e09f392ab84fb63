"""The sink's offset-commit accounting (``consumers.clickhouse_sink.commits``), against a consumer
that records what it is asked to commit. The real consumer and coordinator are exercised by the
sink's integration tests (tests/integration/test_clickhouse_sink.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.clickhouse_sink.commits import OffsetCommits


class Consumer:
    """Positions as a consumer reports them; commits recorded, answered with ``answer``."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.sent: list[tuple[dict[tuple[str, int], int], bool]] = []
        self.answer: KafkaError | None = None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)])
            for tp in partitions
        ]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition] | None:
        self.sent.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous))
        if self.answer is not None and not asynchronous:
            raise KafkaException(self.answer)
        return None if asynchronous else offsets


def _setup() -> tuple[Consumer, OffsetCommits, list[int]]:
    confirmed: list[int] = []
    return Consumer(), OffsetCommits(confirmed.append), confirmed


def _answer(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def test_a_batch_counts_as_committed_only_once_the_coordinator_confirms_it() -> None:
    c, commits, confirmed = _setup()
    c.positions = {("t", 0): 10, ("t", 1): -1001}  # partition 1 not read since it was assigned
    commits.batch_in(c, 10)
    commits.send(c, lambda: None)
    assert c.sent == [({("t", 0): 10}, True)]  # sent without waiting, the unread partition left out
    assert confirmed == []
    commits.on_commit(None, _answer({("t", 0): 10}))
    assert confirmed == [10]
    commits.on_commit(None, _answer({("t", 0): 10}))  # the same answer again counts nothing
    assert confirmed == [10]


def test_a_later_commit_confirms_the_batches_before_it_once_each() -> None:
    c, commits, confirmed = _setup()
    c.positions = {("t", 0): 10, ("t", 1): 4}
    commits.batch_in(c, 14)
    c.positions = {("t", 0): 25, ("t", 1): 4}
    commits.batch_in(c, 15)
    commits.on_commit(None, _answer({("t", 0): 25, ("t", 1): 4}))  # the second answer came first
    assert confirmed == [14, 15]
    commits.on_commit(None, _answer({("t", 0): 10, ("t", 1): 4}))
    assert confirmed == [14, 15]


def test_what_is_committed_is_where_the_inserted_rows_end_not_where_reading_got_to() -> None:
    c, commits, _ = _setup()
    c.positions = {("t", 0): 10}
    commits.batch_in(c, 10)
    c.positions = {("t", 0): 30}  # the next batch read meanwhile, not inserted
    commits.on_commit(KafkaError(KafkaError.REQUEST_TIMED_OUT), [])
    assert commits.retry_needed
    commits.commit_sync(c)
    assert c.sent == [({("t", 0): 10}, False)]
    assert not commits.retry_needed


def test_a_failed_asynchronous_commit_is_retried_but_a_moved_group_is_not() -> None:
    c, commits, confirmed = _setup()
    c.positions = {("t", 0): 10}
    commits.batch_in(c, 10)
    commits.on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [])
    assert not commits.retry_needed and confirmed == []
    failed = SimpleNamespace(
        topic="t", partition=0, offset=10, error=KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    )
    commits.on_commit(None, [failed])  # type: ignore[list-item]  # a partition's own error: a failure
    assert commits.retry_needed and confirmed == []
    c.answer = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    commits.commit_sync(c)  # given up: the next owner re-reads
    assert confirmed == [] and not commits.retry_needed


def test_revoked_partitions_leave_the_target() -> None:
    c, commits, confirmed = _setup()
    c.positions = {("t", 0): 10, ("t", 1): 7}
    commits.batch_in(c, 17)
    commits.commit_sync(c)
    assert confirmed == [17]
    commits.revoked([TopicPartition("t", 1)])
    c.positions = {("t", 0): 12}
    commits.batch_in(c, 2)
    commits.send(c, lambda: None)
    assert c.sent[-1] == ({("t", 0): 12}, True)


def test_a_send_that_fails_at_once_falls_back_to_a_synchronous_commit() -> None:
    c, commits, _ = _setup()
    c.positions = {("t", 0): 3}
    commits.batch_in(c, 3)
    fallback: list[bool] = []

    class Refusing(Consumer):
        def commit(self, offsets: Any, asynchronous: bool) -> None:
            raise KafkaException(KafkaError(KafkaError._STATE))

    commits.send(Refusing(), lambda: fallback.append(True))
    assert fallback == [True]
