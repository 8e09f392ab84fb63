"""A streams worker: the join, the windows' two stages, one process (``rftloop streams``).

- the join (streams/join_stage.py, a thread, its own group ``<app_id>-join``):
  InferenceRequested + InferenceCompleted + FeedbackSubmitted keyed by request_id into a
  changelogged state (expiry after the feedback horizon); publishes an EvaluationRequested per
  joined response and a RewardedSample whenever a response's reward sources grow
  (streams/join.py). One Kafka transaction per batch: exact through a kill -9.
- the evaluate stage (streams/evaluate_stage.py, a thread, group ``<app_id>-evaluate``): scores
  each EvaluationRequested in the evaluators' own process, under a deadline per response, and
  publishes the scores as FeedbackSubmitted (back to the join); one transaction per batch.
- stage 1 of the windows (streams/buckets.py, a thread, its own group
  ``<app_id>-buckets``): InferenceCompleted + FeedbackSubmitted folded into
  base-width buckets per (model, version), published as partial accumulators keyed
  ``model|version`` in one Kafka transaction per batch with the input offsets.
- ``windows`` (the faust agent of this app, group ``<app_id>``): reads the partials
  ``read_committed`` and merges them into every window (changelogged table keyed
  ``model|version``; a partial already merged — same offset — is skipped) and, on a tick,
  publishes a MetricsWindow for each window that closed, before it records the close.

faust commits the windows agent's input offsets after its producer's flush, and here only once
every table write queued before has reached its changelog (``_DurableProducer``; else the
commit is postponed). Closed
windows are at-least-once with derived event ids (a re-close publishes the same id; ClickHouse
keeps one row per id); their counts are exact through a kill -9: every event is in exactly one
committed partial, every partial merged once. Records that do not decode, or carry absurd
values, go to ``<topic>.dlq`` with headers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Any, cast

import faust
import mode
from faust.transport.drivers import aiokafka as faust_kafka
from faust.web import Request, Response, View

from infra import failpoints
from infra import registry as registry_mod
from infra.kafka import TrackedProducer, ensure_plain_topic, producer
from infra.serde import TopicSerde
from infra.settings import KafkaSettings, RegistrySettings, StreamsSettings
from schemas.topics import COMPLETED, EVALUATIONS, FEEDBACK, METRICS, REQUESTED, REWARDED, TopicSpec
from streams.buckets import BucketStage
from streams.evaluate_stage import EvaluateStage
from streams.evaluator_sandbox import EvaluatorSandbox
from streams.join import PRODUCER, derived_id
from streams.join_stage import JoinStage
from streams.stats import StreamStats
from streams.transactional import TransactionalStage
from streams.windows import Accumulator, VersionWindows, base_bucket_s, parse_windows

log = logging.getLogger(__name__)


class _ReadCommittedThread(faust_kafka.AIOKafkaConsumerThread):
    """faust reads ``read_committed`` only in its exactly_once mode; the windows agent needs it in
    at-least-once too, or it would merge the partials of a stage-1 batch that aborted."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka hands it to its fetcher at start()
        return consumer


class _ReadCommittedConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit_offsets(self, offsets: Mapping[Any, int], start_new_transaction: bool = True) -> bool:
        producer = self.app.producer
        if isinstance(producer, _DurableProducer) and not await producer.changelog_delivered():
            log.warning(
                "commit postponed: table writes not in their changelogs after %.0f s", DELIVERY_WAIT_S
            )
            return False  # the next commit tries again; a kill meanwhile replays these inputs
        did_commit = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if did_commit:
            failpoints.reached("streams.after_commit")
        return did_commit


DELIVERY_WAIT_S = 5.0


class ChangelogNotDelivered(RuntimeError):
    """Table writes were not delivered to their changelog: the input offsets must not be committed."""


class _DurableProducer(faust_kafka.Producer):
    """faust flushes its producer before it commits input offsets, but a table write is queued in
    faust's buffer (``send_soon``), and the buffer's flush gives up after 0.1 s without a message
    sent and counts a message as sent once it left the queue, before aiokafka has it. A write still
    waiting for its changelog's metadata (a worker's first writes) was committed past and lost to a
    kill -9: the restarted worker neither had the state nor re-read the input (the join lost a
    sample). This producer remembers every buffered message; the consumer commits only once those
    queued before the commit are delivered (it waits ``DELIVERY_WAIT_S``, else postpones the commit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: set[asyncio.Future[Any]] = set()

    def send_soon(self, fut: Any) -> None:
        self._unsent.add(fut)
        fut.add_done_callback(self._unsent.discard)
        super().send_soon(fut)

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        stall = failpoints.stall_s("streams.changelog_send") if topic.endswith("-changelog") else 0.0
        if stall:
            await asyncio.sleep(stall)  # a slow first metadata fetch, held long enough to race a commit
        return await super().send(topic, *args, **kwargs)

    async def changelog_delivered(self) -> bool:
        """Whether every table write queued so far reached Kafka (waits up to ``DELIVERY_WAIT_S``);
        raises ChangelogNotDelivered when one failed (its state would be lost: the worker stops)."""
        waiting = [f for f in self._unsent if not f.done()]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=DELIVERY_WAIT_S)
            if late:
                return False
        failed = [f for f in waiting if f.cancelled() or f.exception() is not None]
        if failed:
            raise ChangelogNotDelivered(f"{len(failed)} table writes failed: not committing")
        return True


class _Transport(faust_kafka.Transport):
    Consumer = _ReadCommittedConsumer
    Producer = _DurableProducer


def _thread_service(stage: TransactionalStage) -> type[mode.Service]:
    """A service that runs a stage in a thread while the worker runs; a fatal error stops the worker."""

    class StageThread(mode.Service):
        def __post_init__(self) -> None:
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None

        async def on_start(self) -> None:
            loop = asyncio.get_running_loop()

            def main() -> None:
                try:
                    stage.run(self._stop)
                except BaseException as exc:  # handed to the worker, which stops
                    log.critical("%s: stopped: %r", stage.name, exc)
                    asyncio.run_coroutine_threadsafe(self.crash(exc), loop)

            self._thread = threading.Thread(target=main, name=f"rftloop-{stage.name}", daemon=True)
            self._thread.start()

        async def on_stop(self) -> None:
            self._stop.set()
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 30)

    return StageThread


class StreamsApp:
    def __init__(self, kafka: KafkaSettings, registry: RegistrySettings, settings: StreamsSettings) -> None:
        self.settings = settings
        self.stats = StreamStats()
        self.specs = parse_windows(settings.windows)
        self.bucket_s = base_bucket_s(self.specs)
        # names only: the evaluators' code runs in the evaluate stage's own process (it imports the
        # modules there, and an unknown name stops the worker at start with UnknownEvaluator's text)
        self.evaluators = [e.strip() for e in settings.evaluators.split(",") if e.strip()]
        self.evaluator_modules = [m.strip() for m in settings.evaluator_modules.split(",") if m.strip()]
        reg = registry_mod.client(registry)
        sfx = settings.topic_suffix
        self.specs_by_topic: dict[str, TopicSpec] = {}
        self.serde: dict[str, TopicSerde] = {}
        for spec in (REQUESTED, COMPLETED, FEEDBACK, EVALUATIONS, REWARDED, METRICS):
            named = replace(spec, name=spec.name + sfx)
            self.specs_by_topic[named.name] = named
            # the evaluations topic is this worker's own hand-off (join -> evaluate): it registers
            # its schema itself, as faust creates its changelogs (the registry's compatibility holds)
            self.serde[spec.name] = TopicSerde(reg, named, auto_register=spec is EVALUATIONS)
        self._dlq: TrackedProducer = producer(kafka)

        failover: dict[str, float] = (
            {
                "broker_session_timeout": settings.session_timeout_s,
                "broker_heartbeat_interval": max(1.0, settings.session_timeout_s / 10),
            }
            if settings.session_timeout_s
            else {}
        )
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",")],
            store="memory://",
            datadir=str(settings.data_dir),
            web_enabled=settings.web_port > 0,
            web_port=settings.web_port or 6066,
            web_host="127.0.0.1",
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            key_serializer="raw",
            value_serializer="json",  # tables and the partials topic; event topics say raw
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=5000,
            stream_buffer_maxsize=20_000,
            stream_wait_empty=False,
            commit_interval=1.0,
            producer_acks=-1,
            # aiokafka waits for a full partition batch to drain before it starts the next: 16 KiB
            # (the default) held the faust join (before join_stage.py) to 3.2 k events/s, 1 MiB gave 4.1 k
            producer_max_batch_size=1 << 20,
            producer_linger_ms=5,
            # faust's default is 60 s: the group waits that long for a killed worker's partitions
            **cast(dict[str, Any], failover),
        )
        # before the first topic: the transport is made on first use
        self.app.transport = _Transport(self.app.conf.broker_consumer, self.app)
        app = self.app
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.t_requested = app.topic(REQUESTED.name + sfx, **raw)
        self.t_completed = app.topic(COMPLETED.name + sfx, **raw)
        self.t_feedback = app.topic(FEEDBACK.name + sfx, **raw)
        self.t_rewarded = app.topic(REWARDED.name + sfx, **raw)
        self.t_metrics = app.topic(METRICS.name + sfx, **raw)
        self.t_partials = app.topic(
            f"{settings.app_id}-window-partials{sfx}",
            internal=True,
            partitions=kafka.partitions,
            key_serializer="raw",
            value_serializer="json",
        )
        self.windows = app.Table("windows", default=None, partitions=kafka.partitions)

        agents = set(settings.agents.split(","))
        self.join: JoinStage | None = None
        if "join" in agents:
            self.join = JoinStage(
                kafka,
                settings,
                requested=self.serde[REQUESTED.name],
                completed=self.serde[COMPLETED.name],
                feedback=self.serde[FEEDBACK.name],
                rewarded=self.serde[REWARDED.name],
                evaluations=self.serde[EVALUATIONS.name],
                state_topic=f"{settings.app_id}-join-state{sfx}",
                evaluators=self.evaluators,
                stats=self.stats,
            )
            app.service(_thread_service(self.join))
        self.evaluate: EvaluateStage | None = None
        if "evaluate" in agents and self.evaluators:
            self.evaluate = EvaluateStage(
                kafka,
                settings,
                evaluations=self.serde[EVALUATIONS.name],
                feedback=self.serde[FEEDBACK.name],
                sandbox=EvaluatorSandbox(
                    self.evaluators, self.evaluator_modules, settings.evaluator_timeout_s
                ),
                stats=self.stats,
            )
            app.service(_thread_service(self.evaluate))
        self.buckets: BucketStage | None = None
        if "metrics" in agents:
            self.buckets = BucketStage(
                kafka,
                settings,
                completed=self.serde[COMPLETED.name],
                feedback=self.serde[FEEDBACK.name],
                partials_topic=self.t_partials.get_topic_name(),
                bucket_s=self.bucket_s,
                stats=self.stats,
            )
            app.service(_thread_service(self.buckets))
            app.agent(self.t_partials, name="windows")(self._windows_agent)
            app.timer(1.0)(self._tick)
        app.task(self._prepare)
        streams_app = self

        @app.page("/windows/")
        class OpenWindows(View):
            async def get(self, request: Request) -> Response:
                return self.json(streams_app.open_windows())

        @app.page("/stats/")
        class Stats(View):
            async def get(self, request: Request) -> Response:
                stages = [s for s in (streams_app.join, streams_app.evaluate, streams_app.buckets) if s]
                kafka = {s.name: s.kafka_retry.health() for s in stages}
                return self.json({**streams_app.stats.__dict__, "kafka": kafka})

    # -- helpers ---------------------------------------------------------------
    async def _prepare(self) -> None:
        """Resolve schema ids before the first event (blocking registry calls, once)."""
        for s in self.serde.values():
            await asyncio.to_thread(getattr, s, "schema_id")
        log.info(
            "streams ready: windows %s (bucket %ss), evaluators %s",
            ", ".join(s.name for s in self.specs),
            self.bucket_s,
            ", ".join(self.evaluators) or "none",
        )

    def _base(self, topic: str) -> str:
        sfx = self.settings.topic_suffix
        return topic[: -len(sfx)] if sfx and topic.endswith(sfx) else topic

    async def _send_event(self, topic: faust.types.TopicT, base: str, key: str, event: Any) -> Awaitable[Any]:
        """Queue one event on faust's producer; the returned future resolves once Kafka has it."""
        data = self.serde[base].encode_event(event)
        return await topic.send(key=key.encode(), value=data, force=True)

    # -- stage 2: windows -------------------------------------------------------
    async def _windows_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            value = event.value
            key = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            current = self.windows.get(key)
            if current:
                state = VersionWindows.from_json(current)
            elif "m" in value:
                state = VersionWindows(value["m"], value["v"])
            else:
                continue  # a tick for a key with no windows
            offset = event.message.offset
            if offset <= state.last_offset:
                continue  # already merged before a restart / rebalance
            state.last_offset = offset
            if "acc" in value:
                state.add_partial(self.specs, int(value["b"]), Accumulator.from_json(value["acc"]))
            closed = []
            for spec, start in state.due(self.specs, time.time(), self.settings.lateness_s):
                acc = state.close(spec, start)
                wid = derived_id("window", state.model, state.version, spec.name, str(start))
                closed.append(
                    acc.to_event(
                        event_id=wid,
                        producer=PRODUCER,
                        model=state.model,
                        version=state.version,
                        spec=spec,
                        start_s=start,
                        final=True,
                    )
                )
            # Closed windows reach Kafka before the state that says they closed: a kill in between
            # re-closes them from the older state and re-sends the same ids (consumers keep one).
            sent = [await self._send_event(self.t_metrics, METRICS.name, key, window) for window in closed]
            for delivery in sent:
                await delivery
            self.stats.windows_closed += len(closed)
            self.windows[key] = state.to_json()

    async def _tick(self) -> None:
        """Ask the owner of each key with a due window to close it (through its partition)."""
        now = time.time()
        for key, current in list(self.windows.items()):
            if not current:
                continue
            state = VersionWindows.from_json(current)
            if state.due(self.specs, now, self.settings.lateness_s):
                await self.t_partials.send(key=key.encode(), value={"tick": now}, force=True)

    def open_windows(self) -> list[dict[str, Any]]:
        """Open (not yet final) windows of the partitions this worker owns, as MetricsWindow JSON."""
        out = []
        by_name = {s.name: s for s in self.specs}
        for current in list(self.windows.values()):
            if not current:
                continue
            state = VersionWindows.from_json(current)
            for key, acc_json in state.open.items():
                name, start = key.rsplit("|", 1)
                w = Accumulator.from_json(acc_json).to_event(
                    event_id=derived_id("window", state.model, state.version, name, start),
                    producer=PRODUCER,
                    model=state.model,
                    version=state.version,
                    spec=by_name[name],
                    start_s=int(start),
                    final=False,
                )
                out.append(w.model_dump(mode="json", exclude={"latency_sketch"}))
        return out


def run_worker(
    kafka: KafkaSettings, registry: RegistrySettings, settings: StreamsSettings, loglevel: str = "info"
) -> None:
    """Run one worker until it is stopped (Ctrl-C / SIGINT; SIGKILL is survived through changelogs)."""
    import uvloop
    from faust.worker import Worker

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    streams = StreamsApp(kafka, registry, settings)
    # faust creates its internal topic and subscribes at once; a broker that has not yet
    # propagated the new topic makes it "ignore the missing topic" for good. Create it first.
    ensure_plain_topic(kafka, streams.t_partials.get_topic_name(), kafka.partitions)
    # The same for the windows table's changelog: on a 3-broker cluster faust's metadata saw it with 0
    # partitions for a while after creating it, and every table write crashed the windows agent
    # (PartitionsMismatch) — each crash dropped the partial it was merging (CI: 516 of 15,163 requests
    # missing from the windows).
    ensure_plain_topic(
        kafka,
        streams.windows.changelog_topic.get_topic_name(),
        kafka.partitions,
        {"cleanup.policy": "compact"},
    )
    Worker(streams.app, loglevel=loglevel, quiet=True).execute_from_commandline()
