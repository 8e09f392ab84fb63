"""Faults survived with real processes on a stack of their own (so killing its broker or registry hurts no
other test): the gateway fuzzed from its OpenAPI spec, the broker killed under load, the registry gone.

Each scenario prints its figures (run with -s); RELIABILITY.md lists them.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from infra import registry as registry_mod
from infra.kafka import ensure_topics
from infra.local import services
from infra.serde import RegistryUnavailable, TopicSerde
from producers.sdk import InferenceLogger
from schemas.topics import COMPLETED, REQUESTED
from tests.conftest import Stack, running_stack
from tests.integration.gateway_support import ADMIN, SERVED, Gateway, running_gateway
from tests.integration.openapi_fuzz import cases
from tests.integration.streams_support import read_topic

pytestmark = pytest.mark.reliability


APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("fault-stack")) as s:
        yield s


@pytest.fixture(scope="module")
def fault_gateway(fault_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"RFTLOOP_GATEWAY_RATE_LIMIT_RPS": "0", "RFTLOOP_GATEWAY_CORS_ORIGINS": APP_ORIGIN}
    with running_gateway(fault_stack, tmp_path_factory.mktemp("fault-gateway"), env) as gw:
        yield gw


def test_gateway_fuzzed_from_its_openapi_spec_answers_no_5xx(
    fault_gateway: Gateway, record_figures: Any
) -> None:
    http = fault_gateway.http()
    spec = http.get("/openapi.json").json()
    rid = http.post(
        "/v1/chat/completions",
        json={"model": SERVED, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
    ).json()["id"]
    todo = cases(
        spec,
        fixed={
            "/v1/chat/completions": {"model": SERVED, "max_tokens": 2},
            "/v1/completions": {"model": SERVED, "max_tokens": 2},
            "/v1/feedback": {"request_id": rid, "kind": "thumbs", "value": 1, "choice": 0},  # rid: n = 1
        },
    )
    assert {c.path for c in todo} == {"/v1/chat/completions", "/v1/completions", "/v1/feedback"}

    def send(case: Any) -> tuple[Any, int, bytes]:
        r = http.request(
            case.method, case.path, content=case.body, headers={"content-type": case.content_type}
        )
        return case, r.status_code, r.content

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, todo))
    # path parameters and the admin key, too
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for version in ("../../etc", "%00", "é" * 300, "v" * 5000, "base"):
        for action in ("promote", "rollback", "explode"):
            path = f"/admin/versions/{version}/{action}"
            r = http.post(path)
            results.append((path + " (user key)", r.status_code, r.content))
            r = httpx.post(fault_gateway.url + path, headers=admin, timeout=30)
            results.append((path, r.status_code, r.content))
    statuses = Counter(status for _, status, _ in results)
    server_errors = [(getattr(c, "label", c), s) for c, s, _ in results if s >= 500]
    record_figures(
        "gateway fuzzed from its OpenAPI spec",
        requests=len(results),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=len(server_errors),
    )
    assert not server_errors, server_errors[:20]
    for case, status, body in results:
        if status >= 400:
            assert json.loads(body)["error"]["message"], (case, body[:200])
    assert (
        statuses[200] + statuses[202] >= 50 and sum(n for s, n in statuses.items() if 400 <= s < 500) >= 500
    )
    health = http.get("/healthz")
    assert health.status_code == 200 and "internal error" not in fault_gateway.log.read_text(errors="replace")


def test_cors_opens_only_to_the_configured_origin(fault_gateway: Gateway) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{fault_gateway.url}/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )

    allowed = preflight(APP_ORIGIN)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    refused = preflight("https://evil.example")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_broker_killed_and_restarted_while_the_gateway_and_sdk_produce(
    fault_stack: Stack, fault_gateway: Gateway, record_figures: Any
) -> None:
    """kill -9 the only broker under load, restart it: every event arrives exactly once, from the
    gateway and from the SDK with either sender (a thread, a child process)."""
    kafka = services.kafka(fault_stack.local)
    http = fault_gateway.http()
    loggers = {
        process: InferenceLogger(
            producer=f"sdk:fault-{'process' if process else 'thread'}",
            kafka=fault_stack.kafka,
            registry=fault_stack.registry,
            topic_suffix=fault_gateway.suffix,
            process=process,
        )
        for process in (False, True)
    }
    ids_by_mode: dict[bool, list[str]] = {False: [], True: []}
    served: list[tuple[float, int, str]] = []  # (sent at, status, request id)
    stop = threading.Event()

    def sdk_load(process: bool) -> None:
        logger, ids = loggers[process], ids_by_mode[process]
        while not stop.is_set():
            ids.append(logger.log(model="app-model", prompt=f"q{len(ids)}", completion="a", latency_ms=12.5))
            time.sleep(0.002)

    def gateway_load() -> None:
        while not stop.is_set():
            sent = time.time()
            r = http.post(
                "/v1/chat/completions",
                json={"model": SERVED, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            )
            served.append((sent, r.status_code, r.json().get("id", "")))

    threads = [threading.Thread(target=sdk_load, args=(p,)) for p in loggers]
    threads.append(threading.Thread(target=gateway_load))
    for t in threads:
        t.start()
    sdk_health: dict[bool, dict[str, Any]] = {}
    try:
        time.sleep(3)
        kafka.kill()
        down_at = time.time()
        degraded = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (degraded is None or len(sdk_health) < len(loggers)):
            health = http.get("/healthz").json()
            if degraded is None and health["status"] == "degraded":
                degraded = health
            for process, logger in loggers.items():
                h = logger.health()
                if process not in sdk_health and h["kafka"].startswith("unreachable"):
                    sdk_health[process] = h
            time.sleep(0.2)
        time.sleep(3)  # the gateway keeps answering; events wait in the bounded buffers
        kafka.start()
        up_at = time.time()
        time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert degraded is not None, "healthz never reported the broker outage"
    for process, logger in loggers.items():
        mode = "process" if process else "thread"
        assert process in sdk_health, f"the {mode} sender's health never reported the broker outage"
        assert sdk_health[process]["status"] == "degraded", sdk_health[process]
        assert logger.flush(180), (mode, logger.health())
        assert logger.stats.failed == 0 and logger.stats.dropped == 0, (mode, logger.stats)
        logger.close()
    sdk_ids = ids_by_mode[False] + ids_by_mode[True]
    deadline = time.monotonic() + 120
    while http.get("/healthz").json()["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert http.get("/healthz").json()["status"] == "ok"

    during = [s for t, s, _ in served if down_at <= t < up_at]
    assert during and all(s == 200 for s in during), Counter(during)
    completed = fault_gateway.events(COMPLETED)
    requested = fault_gateway.events(REQUESTED)
    gw_ids = [rid for _, s, rid in served if s == 200]
    for events in (completed, requested):
        ids = Counter(e.request_id for e in events)
        assert len({e.event_id for e in events}) == len(events), "duplicate event ids"
        missing = [r for r in sdk_ids + gw_ids if ids[r] != 1]
        assert not missing, f"{len(missing)} of {len(sdk_ids) + len(gw_ids)} not exactly once: {missing[:5]}"
    record_figures(
        "broker kill -9 and restart while the gateway and the SDK produce",
        outage_s=round(up_at - down_at, 1),
        sdk_calls_thread_sender=len(ids_by_mode[False]),
        sdk_calls_process_sender=len(ids_by_mode[True]),
        gateway_calls=len(gw_ids),
        served_during_outage=len(during),
        events=len(completed) + len(requested),
        lost=0,
        duplicated=0,
        health_during=degraded["events"].get("kafka"),
    )


def test_registry_down_fails_new_producers_clearly_and_running_ones_use_cached_ids(
    fault_stack: Stack, unique: str, record_figures: Any
) -> None:
    suffix = f"-reg{unique}"
    reg = registry_mod.client(fault_stack.registry)
    topics = [replace(spec, name=spec.name + suffix) for spec in (REQUESTED, COMPLETED)]
    for topic in topics:
        ensure_topics(fault_stack.kafka, only=[topic])
        registry_mod.register(reg, topic)
    running = {
        process: InferenceLogger(
            producer="sdk:reg",
            kafka=fault_stack.kafka,
            registry=fault_stack.registry,
            topic_suffix=suffix,
            process=process,
        )
        for process in (False, True)
    }
    registry = services.registry(fault_stack.local)
    registry.kill()
    refused_in: dict[bool, float] = {}
    ids: list[str] = []
    try:
        for process, logger in running.items():
            t0 = time.monotonic()
            with pytest.raises(RegistryUnavailable, match="RFTLOOP_REGISTRY_URL"):
                InferenceLogger(
                    producer="sdk:late",
                    kafka=fault_stack.kafka,
                    registry=fault_stack.registry,
                    topic_suffix=suffix,
                    process=process,
                )
            refused_in[process] = time.monotonic() - t0
            ids += [logger.log(model="m", prompt=f"p{process}{i}", latency_ms=1.0) for i in range(2000)]
            assert logger.flush(60), logger.health()
            assert logger.stats.encode_errors == 0 and logger.stats.dropped == 0, logger.stats
    finally:
        registry.start()
    for logger in running.values():
        logger.close()
    # Everything written while the registry was down is framed with the registered id and decodes.
    serde = TopicSerde(registry_mod.client(fault_stack.registry), topics[1])
    events = read_topic(fault_stack.kafka, topics[1].name, serde, idle_s=1.5)
    assert sorted(e.request_id for e in events) == sorted(ids)
    print(
        f"registry down: a new producer refused in {refused_in[False]:.1f} s (thread sender), "
        f"{refused_in[True]:.1f} s (process sender); 2000 events from a running one of each, 0 lost"
    )
