"""A 3-broker KRaft cluster (`rftloop up --brokers 3`): one broker killed while the SDK produces and the
ClickHouse sink and a stream worker consume. Nothing is lost or duplicated (ClickHouse rows, window
counts), the partitions and the sink's group move to the survivors, and the killed broker rejoins
every ISR when it is back.

On a stack of its own (three brokers, replication factor 3, min.insync.replicas 2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from infra import registry as registry_mod
from infra.clickhouse.client import connect
from infra.kafka import admin, consumer, ensure_topics
from infra.local import services
from infra.local.process import free_port
from infra.serde import TopicSerde
from producers.sdk import InferenceLogger
from schemas.topics import COMPLETED, METRICS
from tests.conftest import Stack, running_stack
from tests.integration.streams_support import read_topic, wait_ready, worker

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
GROUP = "cluster-sink"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("cluster"), brokers=3) as s:
        ensure_topics(s.kafka)
        registry_mod.register_all(registry_mod.client(s.registry))
        yield s


def _partitions(stack: Stack, topic: str, within_s: float = 60) -> dict[int, Any]:
    """The topic's partitions (leader, replicas, ISR) as the cluster reports them now. A fresh admin
    client per try, retried while a metadata request times out: one that still waits on the killed
    broker failed with _TIMED_OUT on a loaded CI machine (the cluster itself was fine)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return dict(admin(stack.kafka).list_topics(topic, timeout=10).topics[topic].partitions)
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _coordinator(stack: Stack, group: str, timeout_s: float = 60) -> int | None:
    """The broker coordinating the consumer group, once it has members (None after ``timeout_s``).
    A fresh admin client per try: one that knew the killed coordinator kept timing out on group calls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = admin(stack.kafka)
        try:
            desc = a.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException:  # NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE while it moves
            desc = None
        if desc is not None and desc.members:
            return int(desc.coordinator.id)
        time.sleep(0.2)
    return None


def _committed_lag(stack: Stack, group: str, topic: str) -> int | None:
    """Records of ``topic`` the group has not committed yet (None: the cluster did not answer in time)."""
    try:
        return _lag(stack, group, topic)
    except KafkaException:
        return None


def _lag(stack: Stack, group: str, topic: str) -> int:
    a = admin(stack.kafka)
    parts = [TopicPartition(topic, p) for p in _partitions(stack, topic)]
    committed = a.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, parts)], request_timeout=10
    )[group].result()
    c = consumer(stack.kafka, f"lag-{time.time_ns()}")
    try:
        lag = 0
        for tp in committed.topic_partitions:
            _, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        c.close()


@pytest.mark.slow
def test_broker_killed_in_a_three_broker_cluster_loses_and_duplicates_nothing(
    cluster: Stack, tmp_path: Path, record_figures: Any, request: pytest.FixtureRequest
) -> None:
    topic = COMPLETED.name
    for p in _partitions(cluster, topic).values():
        assert len(p.replicas) == 3 and len(p.isrs) == 3, p
    env = {**os.environ, **cluster.env(), "RFTLOOP_CLICKHOUSE_DATABASE": "cluster"}
    sink_cmd = [sys.executable, "-m", "cli.main", "sink", "--group", GROUP, "--batch-seconds", "0.5"]
    log = open(tmp_path / "sink.log", "wb")  # noqa: SIM115
    sink = subprocess.Popen(
        sink_cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop_sink() -> None:  # at the end, or whenever the test fails before it
        if sink.poll() is None:
            sink.send_signal(signal.SIGTERM)
            try:
                sink.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(sink.pid, signal.SIGKILL)
                sink.wait(10)
        log.close()

    request.addfinalizer(stop_sink)
    # a stream worker (metrics windows) on the same topics: its changelogs and partials are RF 3 too
    streams_env = {
        **cluster.env(),
        "RFTLOOP_STREAMS_APP_ID": "cluster-streams",
        "RFTLOOP_STREAMS_WINDOWS": "tumbling:2",
        # the failover pauses partitions and a loaded CI machine falls behind: nothing may be late
        "RFTLOOP_STREAMS_LATENESS_S": "300",
        "RFTLOOP_STREAMS_DATA_DIR": str(tmp_path / "faust"),
    }
    streams_log = tmp_path / "streams.log"
    web_port = free_port()
    streams_cm = worker(streams_env, streams_log, web_port=web_port)
    streams_proc = streams_cm.__enter__()
    request.addfinalizer(lambda: streams_cm.__exit__(None, None, None))
    wait_ready(streams_log, streams_proc)
    logger = InferenceLogger(producer="sdk:cluster", kafka=cluster.kafka, registry=cluster.registry)
    ids: list[str] = []
    delivered_at: list[tuple[float, int]] = []  # (time, events delivered so far)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            ids.append(logger.log(model="app-model", prompt=f"q{len(ids)}", completion="a", latency_ms=9.0))
            if len(ids) % 50 == 0:
                delivered_at.append((time.time(), logger.stats.delivered))
            time.sleep(0.002)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        victim = _coordinator(cluster, GROUP)  # the sink group's coordinator: its leaders and the group move
        assert victim is not None, (tmp_path / "sink.log").read_text(errors="replace")[-3000:]
        led = [p.id for p in _partitions(cluster, topic).values() if p.leader == victim]
        broker = services.kafka(cluster.local, victim)
        time.sleep(3)
        broker.kill()
        down_at = time.time()
        moved_s = None
        while time.time() - down_at < 30:
            parts = _partitions(cluster, topic)
            if all(p.leader not in (victim, -1) for p in parts.values()):
                moved_s = time.time() - down_at
                break
            time.sleep(0.1)
        time.sleep(8)  # the SDK keeps producing to the two brokers left (acks=all, min.insync 2)
        up_at = time.time()
        broker.start()  # returns when the broker answers and is registered again
        caught_up_s = None
        while time.time() - up_at < 90:
            if all(len(p.isrs) == 3 for p in _partitions(cluster, topic).values()):
                caught_up_s = time.time() - up_at
                break
            time.sleep(0.2)
        time.sleep(2)
    finally:
        stop.set()
        loader.join(60)
    assert logger.flush(120), logger.health()
    logger.close()
    during = [n for t, n in delivered_at if down_at + 2 <= t < up_at]
    try:
        client = connect(cluster.clickhouse, database="cluster")
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline:
            assert sink.poll() is None, (tmp_path / "sink.log").read_text(errors="replace")[-3000:]
            stored = int(
                client.query("SELECT uniqExact(request_id) FROM inference_completed").result_rows[0][0]
            )
            if stored >= len(ids) and _committed_lag(cluster, GROUP, topic) == 0:
                break
            time.sleep(0.5)
        new_coordinator = _coordinator(cluster, GROUP, timeout_s=10)  # where the group lives now (a figure)
    finally:
        stop_sink()
    # every request counted once in the 2 s windows: closed ones (on the topic) + open ones (the
    # worker's /windows/ page), read in that order so a window closing in between is missed (and
    # the loop reads again), never counted twice
    windows_serde = TopicSerde(registry_mod.client(cluster.registry), METRICS)
    counted = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert streams_proc.poll() is None, streams_log.read_text(errors="replace")[-3000:]
        closed = read_topic(cluster.kafka, METRICS.name, windows_serde, idle_s=1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/windows/", timeout=10) as r:
            still_open = json.loads(r.read())
        counted = sum(w.requests for w in closed if w.window_kind == "tumbling") + sum(
            w["requests"] for w in still_open if w["window_kind"] == "tumbling"
        )
        if counted == len(ids):
            break
        time.sleep(2)
    assert counted == len(ids), f"windows counted {counted} requests of {len(ids)} logged"
    assert moved_s is not None, f"partitions {led} still led by the killed broker {victim} after 30 s"
    assert caught_up_s is not None, "the restarted broker did not rejoin every ISR within 90 s"
    assert len(during) >= 2 and during[-1] > during[0], "no event was delivered while the broker was down"
    for table in ("inference_requested", "inference_completed"):
        rows = client.query(f"SELECT request_id, count() FROM {table} FINAL GROUP BY request_id").result_rows
        counts = dict(rows)
        missing = [r for r in ids if counts.get(r) != 1]
        assert not missing, f"{table}: {len(missing)} of {len(ids)} not exactly once: {missing[:5]}"
        assert len(counts) == len(ids), f"{table}: {len(counts) - len(ids)} rows nobody logged"
    dup_events = client.query(
        "SELECT count() - uniqExact(event_id) FROM inference_completed FINAL"
    ).result_rows[0][0]
    assert dup_events == 0
    record_figures(
        "3-broker cluster: kill -9 one broker (the sink group's coordinator) while the SDK produces "
        "and the sink and a stream worker consume, restart it",
        brokers=3,
        replication_factor=3,
        min_insync_replicas=2,
        killed_broker=victim,
        partitions_it_led=len(led),
        leaders_moved_s=round(moved_s, 1),
        coordinator_after=new_coordinator,
        outage_s=round(up_at - down_at, 1),
        delivered_during_outage=during[-1] - during[0],
        restart_to_all_isr_s=round(caught_up_s, 1),
        sdk_calls=len(ids),
        window_requests_counted=counted,
        events=2 * len(ids),
        stored=2 * len(ids),
        lost=0,
        duplicated=0,
    )
