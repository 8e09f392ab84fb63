"""When a transactional stage takes a fence as its own doing (a retry during a broker failover) and
replaces its producer, and when it stops as a worker whose id another worker took."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import KafkaError

from infra.settings import KafkaSettings, StreamsSettings
from streams import transactional
from streams.stats import StreamStats
from streams.transactional import SELF_FENCE_WINDOW_S, TransactionalStage


class _Stage(TransactionalStage):
    name = "probe"


def _stage(tmp_path: Path) -> TransactionalStage:
    settings = StreamsSettings(data_dir=tmp_path, instance_id="probe")
    return _Stage(KafkaSettings(bootstrap_servers="127.0.0.1:1"), settings, StreamStats(), ["t"])


FENCE = KafkaError(KafkaError._FENCED)


def test_a_fence_with_no_trouble_before_it_stops_the_worker(tmp_path: Path) -> None:
    assert not _stage(tmp_path)._forgive_fence(FENCE)


def test_a_fence_soon_after_a_failed_batch_is_forgiven_once_until_a_commit(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    stage._trouble_at = time.monotonic() - 8
    assert stage._forgive_fence(FENCE)
    assert not stage._forgive_fence(FENCE)  # fenced again before any batch committed: another worker
    stage._fence_forgiven = False  # what a committed batch does (``_process``)
    assert stage._forgive_fence(FENCE)


def test_a_fence_long_after_the_last_failure_stops_the_worker(tmp_path: Path, monkeypatch) -> None:
    stage = _stage(tmp_path)
    stage._trouble_at = time.monotonic() - SELF_FENCE_WINDOW_S - 1
    assert not stage._forgive_fence(FENCE)
    monkeypatch.setattr(transactional, "SELF_FENCE_WINDOW_S", SELF_FENCE_WINDOW_S + 10)
    assert stage._forgive_fence(FENCE)
