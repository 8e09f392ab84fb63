"""The sink's offset commits: sent without waiting after each batch, confirmed by the consumer's
``on_commit`` callback, and made synchronous where they must have landed before the sink goes on.

Why not wait. A synchronous commit is a round trip to the group coordinator after every batch (7-22
ms here for a batch of 20,000 rows), during which the sink neither reads nor inserts. The next batch
does not depend on it: a commit only has to follow its own batch's insert, and it does. So the
commit is sent and the sink reads on; librdkafka answers it through ``on_commit``, which runs on the
consuming thread inside ``consume``/``poll``.

What is committed is the consumer's position when the batch is in (``target``), never the position
at the time a later retry runs (by then the next batch may be read but not inserted). A commit
covers every earlier one, as each commits the whole ``target``.

Synchronous, with retries until it lands or the sink stops (``commit_sync``):
- before partitions are revoked, so the next owner starts after what is in;
- when the sink stops;
- when an asynchronous commit failed: retried at once from the consuming thread, not left to the
  next batch, which may never come if the sink goes idle.

``confirmed`` is told the records whose offsets the coordinator confirmed; a commit given up because
the group moved on (a rebalance, this member dropped) confirms nothing: the new owner re-reads
those records and their rows collapse by ``event_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to read

# The group moved on (a rebalance, or this member was dropped): the partitions' new owner re-reads
# from the last commit and the rows collapse by event_id, so the commit is given up, not retried.
GROUP_MOVED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._NO_OFFSET,  # nothing of the batch is still assigned
}


def _partitions(offsets: Offsets) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


class OffsetCommits:
    """The offsets of inserted batches, and which of them the coordinator has confirmed."""

    def __init__(self, confirmed: Callable[[int], None]) -> None:
        self.target: Offsets = {}  # where each partition's inserted rows end
        self._confirmed = confirmed  # called with the records of each batch once its offsets are committed
        self.retry_needed = False  # an asynchronous commit failed: commit ``target`` synchronously
        self._inflight: list[tuple[Offsets, int]] = []  # (offsets, records) sent, not yet confirmed

    def batch_in(self, c: Any, records: int) -> None:
        """A batch of ``records`` is inserted: the consumer's positions become the target."""
        for tp in c.position(c.assignment()):
            if tp.offset >= 0:  # a partition read from since it was assigned
                self.target[(tp.topic, tp.partition)] = tp.offset
        self._inflight.append((dict(self.target), records))

    def send(self, c: Any, sync: Callable[[], None]) -> None:
        """Commit ``target`` without waiting; ``sync()`` instead when the send itself fails."""
        if not self.target:
            return
        try:
            c.commit(offsets=_partitions(self.target), asynchronous=True)
        except KafkaException as exc:
            log.warning("sink: asynchronous commit not sent (%s); committing synchronously", exc)
            sync()

    def commit_sync(self, c: Any) -> None:
        """Commit ``target`` and wait (raises KafkaException; the caller retries). A group that moved on
        is logged and given up."""
        self.retry_needed = False
        if not self.target:
            self._inflight.clear()
            return
        try:
            done = c.commit(offsets=_partitions(self.target), asynchronous=False) or []
        except KafkaException as exc:
            if exc.args[0].code() not in GROUP_MOVED:
                raise
            log.warning("sink: commit skipped (%s); the next owner re-reads those rows", exc.args[0].name())
            self._inflight.clear()
            return
        failed = [tp.error for tp in done if tp.error is not None]
        if failed:
            raise KafkaException(failed[0])
        self._confirm({(tp.topic, tp.partition): tp.offset for tp in done})

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback (asynchronous and synchronous commits alike)."""
        failed = err or next((tp.error for tp in partitions if tp.error is not None), None)
        if failed is None:
            self._confirm({(tp.topic, tp.partition): tp.offset for tp in partitions})
        elif failed.code() in GROUP_MOVED:
            log.warning("sink: commit answered %s; the next owner re-reads those rows", failed.name())
        else:
            log.warning("sink: asynchronous commit failed (%s); committing again synchronously", failed)
            self.retry_needed = True

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget revoked partitions: their next owner commits them from now on."""
        for tp in partitions:
            self.target.pop((tp.topic, tp.partition), None)

    def _confirm(self, done: Offsets) -> None:
        """Count every batch whose offsets ``done`` covers (each once, whichever answer comes first)."""
        keep: list[tuple[Offsets, int]] = []
        for offsets, records in self._inflight:
            if all(done.get(key, -1) >= o for key, o in offsets.items()):
                self._confirmed(records)
            else:
                keep.append((offsets, records))
        self._inflight = keep
