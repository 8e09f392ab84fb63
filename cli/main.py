"""`rftloop` — the thin command line that wires the parts together.

Each sub-command imports what it needs lazily, so `rftloop status` does not pay
for torch or vLLM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.settings import (
    ConfigError,
    KafkaSettings,
    LocalStackSettings,
    RegistrySettings,
    load_or_explain,
)


def _local() -> LocalStackSettings:
    return load_or_explain(LocalStackSettings)  # type: ignore[return-value]


def _kafka() -> KafkaSettings:
    return load_or_explain(KafkaSettings)  # type: ignore[return-value]


def _registry() -> RegistrySettings:
    return load_or_explain(RegistrySettings)  # type: ignore[return-value]


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console(width=None if sys.stdout.isatty() else 200).print(t)  # pipes and logs get every column


# -- stack ------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from infra.local import stack
    from infra.local.services import bootstrap_servers, kafka_brokers, replication

    if args.brokers is not None:
        os.environ["RFTLOOP_LOCAL_KAFKA_BROKERS"] = str(args.brokers)
    local = _local()
    stack.up(local)
    brokers = kafka_brokers(local)
    if brokers > 1:
        # topics of a cluster are replicated; the clients need every broker to bootstrap from
        rf, isr = replication(brokers)
        cluster_env = {
            "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers(local),
            "RFTLOOP_KAFKA_REPLICATION_FACTOR": str(rf),
            "RFTLOOP_KAFKA_MIN_INSYNC_REPLICAS": str(isr),
        }
        for key, value in cluster_env.items():
            os.environ.setdefault(key, value)
        print(
            "Kafka cluster: point every rftloop process at it with\n"
            + "".join(f"  export {k}={v}\n" for k, v in cluster_env.items())
        )
    if local.kafka_sasl_password is not None:
        # the init steps below are clients of the SASL listener too
        for key, value in {
            "RFTLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "RFTLOOP_KAFKA_SASL_MECHANISM": "PLAIN",
            "RFTLOOP_KAFKA_SASL_USERNAME": local.kafka_sasl_username,
            "RFTLOOP_KAFKA_SASL_PASSWORD": local.kafka_sasl_password.get_secret_value(),
        }.items():
            os.environ.setdefault(key, value)
        print(
            "Kafka requires SASL/PLAIN: clients set RFTLOOP_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT, "
            f"RFTLOOP_KAFKA_SASL_MECHANISM=PLAIN, RFTLOOP_KAFKA_SASL_USERNAME={local.kafka_sasl_username} "
            "and RFTLOOP_KAFKA_SASL_PASSWORD (the value of RFTLOOP_LOCAL_KAFKA_SASL_PASSWORD)"
        )
    if not args.no_init:
        cmd_topics_ensure(args)
        cmd_schemas_register(args)
        cmd_db_migrate(args)
    return cmd_status(args)


def cmd_down(args: argparse.Namespace) -> int:
    from infra.local import stack

    stack.down(_local())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from infra.local import stack

    rows = stack.status(_local())
    if getattr(args, "json", False):
        print(json.dumps([r.__dict__ for r in rows]))
    else:
        _table(
            "rftloop local stack",
            ["component", "healthy", "detail"],
            [[r.name, "yes" if r.healthy else "NO", r.detail] for r in rows],
        )
    return 0 if all(r.healthy for r in rows) else 1


# -- topics / schemas / dlq -------------------------------------------------------


def cmd_topics_ensure(args: argparse.Namespace) -> int:
    from infra.kafka import ensure_topics

    reports = ensure_topics(_kafka())
    changed = [r for r in reports if r.action != "ok"]
    for r in changed:
        print(f"topic {r.topic}: {r.action}" + (f" — {'; '.join(r.differences)}" if r.differences else ""))
    print(
        f"topics: {sum(r.action == 'created' for r in reports)} created, "
        f"{sum(r.action == 'ok' for r in reports)} ok, {sum(r.action == 'differs' for r in reports)} differ"
    )
    return 0


def cmd_schemas_register(args: argparse.Namespace) -> int:
    from infra import registry

    for r in registry.register_all(registry.client(_registry())):
        print(f"schema {r.subject}: {r.action} (id {r.schema_id}, version {r.version})")
    return 0


def cmd_schemas_check(args: argparse.Namespace) -> int:
    from infra import registry
    from schemas.topics import ALL_TOPICS, spec

    reg = registry.client(_registry())
    pairs = (
        [(spec(args.topic), registry.load_schema(Path(args.file)))]
        if args.file
        else [(t, registry.load_schema(t.schema_path)) for t in ALL_TOPICS]
    )
    bad = 0
    for topic, schema in pairs:
        problems = registry.check(reg, topic, schema)
        if problems:
            bad += 1
            for p in problems:
                print(f"INCOMPATIBLE {topic.subject}: {p}")
        else:
            print(f"ok {topic.subject}")
    return 1 if bad else 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    from infra.dlq import read_all

    letters = read_all(_kafka(), args.topic, limit=args.limit)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "dlq_offset": d.offset,
                        "source": d.source,
                        "error": d.error,
                        "key": (d.key or b"").decode(errors="replace"),
                        "value_bytes": len(d.value),
                        "headers": d.headers,
                    }
                    for d in letters
                ]
            )
        )
    else:
        _table(
            f"{args.topic}.dlq — {len(letters)} dead letter(s)",
            ["dlq offset", "source", "error", "bytes"],
            [[d.offset, d.source, d.error[:120], len(d.value)] for d in letters],
        )
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from infra import registry
    from infra.dlq import replay
    from infra.kafka import producing
    from infra.serde import SerdeError, TopicSerde
    from schemas.topics import spec

    serde = TopicSerde(registry.client(_registry()), spec(args.topic))

    def decodable(value: bytes) -> bool:
        try:
            serde.decode_event(value)
            return True
        except SerdeError:
            return args.force

    with producing(_kafka()) as p:
        ok, bad = replay(_kafka(), args.topic, p, accept=decodable)
    print(f"replayed {ok} dead letter(s) to {args.topic}; {bad} still undecodable (kept in {args.topic}.dlq)")
    return 0


# -- ClickHouse ---------------------------------------------------------------------


def _clickhouse() -> Any:
    from infra.settings import ClickHouseSettings

    return load_or_explain(ClickHouseSettings)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from infra.clickhouse.client import connect
    from infra.clickhouse.migrate import migrate

    ch = _clickhouse()
    applied = migrate(connect(ch, database="default"), ch.database, ch.cluster, ttls=ch.ttl_days)
    for a in applied:
        print(f"migration {a.version}: applied ({a.statements} statements)")
    print(f"database {ch.database}: {len(applied)} migration(s) applied, schema up to date")
    return 0


def cmd_db_ddl(args: argparse.Namespace) -> int:
    from infra.clickhouse.cluster import cluster_statements
    from infra.clickhouse.migrate import migration_files, statements

    ch = _clickhouse()
    cluster = args.cluster or ch.cluster
    for path in migration_files():
        print(f"-- {path.name}" + (f" (cluster {cluster})" if cluster else ""))
        for stmt in statements(path, ch.database):
            for out in cluster_statements(stmt, cluster) if cluster else [stmt]:
                print(out + ";\n")
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    import signal
    from dataclasses import replace

    from consumers.clickhouse_sink.sink import DEFAULT_BATCH, ClickHouseSink
    from infra import registry
    from schemas.topics import STORED_TOPICS

    topics = [replace(t, name=t.name + args.topic_suffix) for t in STORED_TOPICS]
    ch, reg = _clickhouse(), _registry()
    decode = args.decode or ch.sink_decode
    sink = ClickHouseSink(
        _kafka(),
        ch,
        registry.client(reg),
        topics=topics,
        group_id=args.group,
        batch_size=args.batch_size or DEFAULT_BATCH,
        batch_seconds=args.batch_seconds,
        avro_registry_url=(ch.avro_registry_url or reg.url_with_credentials())
        if decode == "clickhouse"
        else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: sink.stop())
    signal.signal(signal.SIGINT, lambda *_: sink.stop())
    stats = sink.run(max_seconds=args.max_seconds)
    print(
        f"sink stopped: consumed {stats.consumed}, inserted {stats.inserted}, "
        f"dead-lettered {stats.dead_lettered}, {stats.batches} batches; {stats.decoded_by_clickhouse} rows "
        f"decoded by ClickHouse, {stats.decode_fallbacks} batches refused by it and decoded here"
    )
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    from infra.settings import StreamsSettings
    from streams.app import run_worker

    settings = load_or_explain(StreamsSettings)
    assert isinstance(settings, StreamsSettings)
    if args.web_port is not None:
        settings = settings.model_copy(update={"web_port": args.web_port})
    run_worker(_kafka(), _registry(), settings, loglevel="debug" if args.verbose else "info")
    return 0


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cmd_metrics(args: argparse.Namespace) -> int:
    from infra.clickhouse import queries
    from infra.clickhouse.client import connect

    since = queries.parse_duration(args.since)
    ch = _clickhouse()
    client = connect(ch)
    if args.by == "version":
        rows = queries.version_metrics(client, ch.database, since, args.model or "")
    else:
        rows = queries.version_series(client, ch.database, since, 60, args.model or "")
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    if not rows:
        print(f"no inference events in the last {args.since} (database {ch.database})")
        return 0
    if args.by == "version":
        columns = [
            "model",
            "version",
            "requests",
            "error %",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "TTFT p50",
            "tok/s",
            "cost/req",
            "reward",
            "👍 rate",
            "feedback",
        ]
        table = [
            [
                r["model"],
                r["version"],
                r["requests"],
                _fmt(100 * r["error_rate"]),
                _fmt(r["latency_p50_ms"]),
                _fmt(r["latency_p95_ms"]),
                _fmt(r["latency_p99_ms"]),
                _fmt(r["ttft_p50_ms"]),
                _fmt(r["tokens_per_s"]),
                _fmt(r["cost_per_request"], 6),
                _fmt(r["reward_mean"], 3),
                _fmt(r["thumbs_up_rate"], 2),
                _fmt(r["feedback_coverage"], 2),
            ]
            for r in rows
        ]
    else:
        columns = [
            "minute",
            "model",
            "version",
            "requests",
            "error %",
            "p50 ms",
            "p95 ms",
            "TTFT p50",
            "cost/req",
        ]
        table = [
            [
                r["t"],
                r["model"],
                r["version"],
                r["requests"],
                _fmt(100 * r["error_rate"]),
                _fmt(r["latency_p50_ms"]),
                _fmt(r["latency_p95_ms"]),
                _fmt(r["ttft_p50_ms"]),
                _fmt(r["cost_per_request"], 6),
            ]
            for r in rows
        ]
    _table(f"last {args.since}, by {args.by}", columns, table)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from cli.api import create_app

    uvicorn.run(create_app(_clickhouse()), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from infra.settings import GatewaySettings
    from producers.gateway.app import serve

    settings = load_or_explain(GatewaySettings)
    assert isinstance(settings, GatewaySettings)
    update = {
        k: v for k, v in (("model", args.model), ("port", args.port), ("host", args.host)) if v is not None
    }
    settings = settings.model_copy(update=update)
    serve(settings, _kafka(), _registry(), _local().cache_dir)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from consumers.trainer.run import NotEnoughData, run_once
    from infra.settings import TrainerSettings

    cfg = load_or_explain(TrainerSettings)
    assert isinstance(cfg, TrainerSettings)
    if args.model:
        cfg = cfg.model_copy(update={"base_model": args.model})
    if not args.now:
        print(
            "rftloop train: only --now is built so far (sample-count, time and quality-drop triggers are not)",
            file=sys.stderr,
        )
        return 2
    from consumers.trainer.gateway_engine import GatewayRefused, GatewayUnavailable

    try:
        result = run_once(_kafka(), _registry(), _clickhouse(), cfg, _local().cache_dir)
    except NotEnoughData as exc:
        print(f"rftloop train: {exc}", file=sys.stderr)
        return 3
    except (GatewayUnavailable, GatewayRefused) as exc:  # RFTLOOP_TRAINER_GATEWAY_URL
        print(f"rftloop train: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "version": result.version,
                "status": result.status,
                "parent": result.parent,
                "method": result.method,
                "samples": result.samples,
                "reasons": result.reasons,
                "figures": result.figures,
            },
            indent=1,
        )
    )
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    import time

    from confluent_kafka import KafkaException

    from consumers.trainer.gateway_engine import GatewayRefused, GatewayUnavailable
    from consumers.trainer.lease import Lease
    from consumers.trainer.run import NotEnoughData, incumbent_of, run_once
    from consumers.trainer.triggers import LastRun, TriggerConfig, due, observe
    from infra.clickhouse.client import connect
    from infra.retry import Retrier
    from infra.settings import TrainerSettings

    cfg = load_or_explain(TrainerSettings)
    assert isinstance(cfg, TrainerSettings)
    if args.model:
        cfg = cfg.model_copy(update={"base_model": args.model})
    ch = _clickhouse()
    trig = TriggerConfig(cfg.trigger_new_samples, cfg.trigger_interval_s, cfg.trigger_reward_floor)
    state = _local().state_dir / "trainer" / f"last_run-{cfg.served_name}.json"
    last = LastRun.load(state)
    if not last.at:
        last.at = time.time()  # the interval counts from this start until the first run
    print(f"trainer: watching {cfg.served_name} (every {cfg.poll_s:.0f} s): {trig}", flush=True)
    retry = Retrier("trainer")
    lease = retry.call("joining the lease group", lambda: Lease(_kafka(), cfg.served_name, cfg.topic_suffix))
    runs, active = 0, False
    while args.max_runs is None or runs < args.max_runs:
        if lease.poll(1.0) != active:
            active = lease.held
            print(
                f"trainer: lease {'acquired: the active trainer' if active else 'not held: waiting'} "
                f"for {cfg.served_name}",
                flush=True,
            )
        if not active:
            continue
        client = connect(ch)
        seen = observe(
            client,
            ch.database,
            cfg.served_name,
            incumbent_of(_kafka(), _registry(), cfg),
            last,
            time.time(),
        )
        reason = due(trig, last, seen)
        if reason:
            print(f"trainer: run triggered: {reason}", flush=True)
            newest = client.query(
                f"SELECT toUnixTimestamp64Milli(max(rewarded_at)) FROM {ch.database}.latest_samples "
                "WHERE model = {m:String}",
                parameters={"m": cfg.served_name},
            ).result_rows[0][0]
            try:
                result = run_once(_kafka(), _registry(), ch, cfg, _local().cache_dir)
                print(f"trainer: {result.version} {result.status}: {'; '.join(result.reasons)}", flush=True)
            except NotEnoughData as exc:
                print(f"trainer: {exc}", flush=True)
            except (KafkaException, GatewayUnavailable) as exc:  # FatalKafkaError stops the daemon
                retry.failed("training run", exc)  # logs, backs off; the run is tried again
                continue
            except GatewayRefused as exc:  # a key or root to fix: retrying cannot help
                print(f"rftloop trainer: stopping: {exc}", file=sys.stderr, flush=True)
                lease.close()
                return 1
            retry.recovered("training run")
            last = LastRun(at=time.time(), newest_sample=(newest or 0) / 1000)
            last.save(state)
            runs += 1
            continue
        lease.poll(cfg.poll_s)  # wait, keeping the group membership served
    lease.close()
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from infra.clickhouse.client import connect

    ch = _clickhouse()
    result = connect(ch).query(
        f"SELECT model, version, state, decision, traffic_share, parent_version, method, "
        f"eval['candidate_accuracy'] AS acc, eval['incumbent_accuracy'] AS inc_acc, "
        f"eval['candidate_latency_ms'] AS lat_ms, reasons, published_at "
        f"FROM {ch.database}.version_state ORDER BY updated_at DESC"
    )
    rows = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    _table(
        "model versions",
        ["model", "version", "state", "parent", "method", "accuracy (vs incumbent)", "latency ms", "reasons"],
        [
            [
                r["model"],
                r["version"],
                r["state"],
                r["parent_version"] or "-",
                r["method"] or "-",
                f"{r['acc']:.3f} ({r['inc_acc']:.3f})" if r["acc"] or r["inc_acc"] else "-",
                _fmt(r["lat_ms"]) if r["lat_ms"] else "-",
                "; ".join(r["reasons"])[:120],
            ]
            for r in rows
        ],
    )
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    import signal

    from infra.settings import JudgeSettings
    from streams.judge import Judge

    cfg = load_or_explain(JudgeSettings)
    assert isinstance(cfg, JudgeSettings)
    judge = Judge(_kafka(), _registry(), cfg)
    signal.signal(signal.SIGTERM, lambda *_: judge.stop())
    signal.signal(signal.SIGINT, lambda *_: judge.stop())
    judge.run(max_seconds=args.max_seconds)
    for d in judge.decisions:
        print(f"{d.kind.value} {d.model}:{d.version}: {'; '.join(d.reasons)}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from infra.publish import publish_event
    from infra.settings import GatewaySettings
    from schemas.events import ModelVersionEvent, VersionEventKind
    from schemas.topics import VERSIONS

    gw = load_or_explain(GatewaySettings)
    assert isinstance(gw, GatewaySettings)
    kind = VersionEventKind.promoted if args.action == "promote" else VersionEventKind.rolled_back
    event = ModelVersionEvent(
        producer="rftloop-cli",
        kind=kind,
        model=args.model or gw.served_name,
        version=args.version,
        decision=args.action,
        reasons=[args.reason or f"manual {args.action} (CLI)"],
        actor="cli",
        traffic_share=1.0 if kind == VersionEventKind.promoted else 0.0,
    )
    publish_event(_kafka(), _registry(), VERSIONS, event, gw.topic_suffix)
    print(
        f"{kind.value}: {event.model}:{event.version} (published to {VERSIONS.name}; gateways apply it now)"
    )
    return 0


# -- bench / demo -------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.harness import main as bench_main

    return bench_main(args.names, list_only=args.list)


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    generations = args.generations or (1 if args.quick else 3)
    return run_demo(keep=args.keep, quick=args.quick, n_generations=generations)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rftloop", description="Close the loop between LLM inference and training."
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add(
        "up",
        cmd_up,
        "start Kafka, the schema registry and embedded ClickHouse; create topics; register schemas",
    )
    p.add_argument("--no-init", action="store_true", help="only start the processes")
    p.add_argument(
        "--brokers",
        type=int,
        choices=range(1, 10),
        metavar="N",
        help="Kafka brokers (KRaft, each a controller too; topics get replication factor min(3, N) "
        "and min.insync.replicas RF-1); default: as the state dir was created, else 1",
    )
    add("down", cmd_down, "stop the local stack (data stays under the state dir)")
    p = add("status", cmd_status, "health of each local component")
    p.add_argument("--json", action="store_true")

    topics = add("topics", lambda a: a.sub_fn(a), "topic management")
    tsub = topics.add_subparsers(dest="sub", required=True)
    tsub.add_parser("ensure", help="create missing topics, report differences").set_defaults(
        sub_fn=cmd_topics_ensure
    )

    schemas = add("schemas", lambda a: a.sub_fn(a), "schema registry")
    ssub = schemas.add_subparsers(dest="sub", required=True)
    ssub.add_parser("register", help="check and register every event schema").set_defaults(
        sub_fn=cmd_schemas_register
    )
    chk = ssub.add_parser("check", help="check schemas against the registry without registering")
    chk.add_argument("--topic", help="topic whose subject to check --file against")
    chk.add_argument("--file", help="a candidate .avsc (default: the project's schemas)")
    chk.set_defaults(sub_fn=cmd_schemas_check)

    dlq = add("dlq", lambda a: a.sub_fn(a), "dead-letter topics")
    dsub = dlq.add_subparsers(dest="sub", required=True)
    show = dsub.add_parser("show", help="list the dead letters of TOPIC")
    show.add_argument("topic")
    show.add_argument("--limit", type=int, default=1000)
    show.add_argument("--json", action="store_true")
    show.set_defaults(sub_fn=cmd_dlq_show)
    rep = dsub.add_parser("replay", help="re-publish TOPIC's dead letters that decode now")
    rep.add_argument("topic")
    rep.add_argument("--force", action="store_true", help="replay undecodable letters too")
    rep.set_defaults(sub_fn=cmd_dlq_replay)

    db = add("db", lambda a: a.sub_fn(a), "ClickHouse schema")
    dbsub = db.add_subparsers(dest="sub", required=True)
    dbsub.add_parser("migrate", help="apply pending DDL migrations").set_defaults(sub_fn=cmd_db_migrate)
    ddl = dbsub.add_parser("ddl", help="print every migration's DDL (cluster form with --cluster)")
    ddl.add_argument("--cluster", default=None, help="ON CLUSTER name (default RFTLOOP_CLICKHOUSE_CLUSTER)")
    ddl.set_defaults(sub_fn=cmd_db_ddl)

    p = add("sink", cmd_sink, "run the Kafka -> ClickHouse sink for every event topic (until SIGTERM)")
    p.add_argument("--batch-size", type=int, default=None, help="records per batch at most (default 40,000)")
    p.add_argument("--batch-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--topic-suffix", default="", help="read <topic><suffix> (isolated topic sets)")
    p.add_argument("--group", default="rftloop-clickhouse-sink", help="consumer group")
    p.add_argument(
        "--decode",
        choices=["clickhouse", "python"],
        default=None,
        help="who decodes the Avro: ClickHouse from the framed bytes, or the sink (default RFTLOOP_CLICKHOUSE_SINK_DECODE)",
    )

    p = add("streams", cmd_streams, "run a stream worker: joins, rewards, rolling windows (until Ctrl-C)")
    p.add_argument("--web-port", type=int, default=None, help="worker HTTP port for /windows/ (0 = off)")

    p = add("metrics", cmd_metrics, "per-version quality, latency and cost from ClickHouse")
    p.add_argument("--since", default="15m", help="window to look back over: 90s, 15m, 2h, 7d")
    p.add_argument("--model", help="only this base model")
    p.add_argument("--by", choices=["version", "minute"], default="version")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name in ("api", "dashboard"):
        p = add(
            name,
            cmd_api,
            "serve the live dashboard (/) and its JSON (/api/metrics, /api/series, /api/versions)",
        )
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8300)

    p = add("gateway", cmd_gateway, "serve the OpenAI-compatible API on vLLM (LoRA versions, events)")
    p.add_argument("--model", help="smollm2 (default), tiny, or an HF model path / name")
    p.add_argument("--host")
    p.add_argument("--port", type=int)

    p = add("train", cmd_train, "run one RFT training run now: buffer -> KTO -> gate -> publish or reject")
    p.add_argument("--now", action="store_true", help="run immediately")
    p.add_argument("--model", help="base model: smollm2 (default), tiny, or an HF path")
    p = add("trainer", cmd_trainer, "run the trainer on its triggers: N new samples, T time, quality drop")
    p.add_argument("--model", help="base model: smollm2 (default), tiny, or an HF path")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    p = add("versions", cmd_versions, "model versions with their state, gate figures and reasons")
    p.add_argument("--json", action="store_true")
    from cli.forget import add_parser as add_forget

    add_forget(sub)

    p = add("judge", cmd_judge, "run the canary judge: promote or roll back candidates from live windows")
    p.add_argument("--max-seconds", type=float, default=None)
    for action in ("promote", "rollback"):
        p = add(action, cmd_decide, f"{action} VERSION by hand (gateways apply it at once)")
        p.add_argument("version")
        p.add_argument("--model", help="served model name (default: RFTLOOP_GATEWAY_SERVED_NAME)")
        p.add_argument("--reason")
        p.set_defaults(action=action)

    p = add("bench", cmd_bench, "run benchmarks; append to bench/results.json; regenerate BENCHMARKS.md")
    p.add_argument("names", nargs="*", help="benchmark names or prefixes (default: all)")
    p.add_argument("--list", action="store_true", help="list benchmarks")
    p = add("demo", cmd_demo, "the closed loop: serve, reward, train, gate, canary, promote or roll back")
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    p.add_argument("--quick", action="store_true", help="a tiny random model: the pipeline only, fast")
    p.add_argument("--generations", type=int, help="training generations to run (default 3; --quick: 1)")
    return ap


def _unreachable() -> set[int]:
    from confluent_kafka import KafkaError

    return {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        print(f"rftloop: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from clickhouse_connect.driver.exceptions import OperationalError as ClickHouseUnreachable
        from confluent_kafka import KafkaException

        from infra.clickhouse.queries import BadDuration
        from infra.erasure import ErasureError
        from infra.local.process import ServiceError
        from infra.retry import FatalKafkaError, kafka_error
        from streams.windows import WindowSpecError

        if isinstance(exc, ServiceError | BadDuration | WindowSpecError | ErasureError):
            print(f"rftloop: {exc}", file=sys.stderr)
            return 1 if isinstance(exc, ServiceError) else 2
        if isinstance(exc, FatalKafkaError):
            print(f"rftloop: stopped on a Kafka error that retrying cannot mend: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, ClickHouseUnreachable):
            url = _clickhouse().url
            print(
                f"rftloop: cannot reach ClickHouse at {url} (RFTLOOP_CLICKHOUSE_URL): "
                f"{str(exc).splitlines()[0][:300]}; is it running (`rftloop status`)?",
                file=sys.stderr,
            )
            return 1
        if isinstance(exc, KafkaException):
            servers = KafkaSettings().bootstrap_servers
            error = kafka_error(exc)
            if isinstance(error, str) or error.code() in _unreachable():
                print(
                    f"rftloop: cannot talk to Kafka at {servers} (RFTLOOP_KAFKA_BOOTSTRAP_SERVERS): {exc}; "
                    "is it running (`rftloop status`)?",
                    file=sys.stderr,
                )
            else:  # the brokers answered, with an error: name it
                print(f"rftloop: Kafka at {servers} refused: {error.name()}: {error.str()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
