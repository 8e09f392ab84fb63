"""Two gateway replicas behind one client-side address list, both following `model.versions`.

A published version reaches both within the hot-load bound; the canary split holds on each
replica, measured from the events (their `producer` names the replica); a promotion sent to one
replica and a rollback sent to the other are applied by both; feedback sent to the replica that did
not serve the request is attributed to the version that did.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.topics import COMPLETED
from tests.integration.gateway_support import ADMIN, SERVED, make_adapter, publish, running_gateways

# `slow`: two vLLM engines starting side by side on 2 cores take 150-200 s of `make test`'s 25 minutes;
# `make reliability` and `make test-all` run it. The version-following it proves for two processes is
# the same code `test_gateway.py` and the canary loop exercise in one.
pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SHARE = 0.25
N = 240


def _wait(replicas: list[Any], check: Any, timeout_s: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if all(check(r.http().get("/healthz").json()) for r in replicas):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError([r.http().get("/healthz").json()["traffic"] for r in replicas])


def test_two_replicas_apply_every_version_event_and_hold_the_split(
    stack: Any, unique: str, tmp_path: Path, record_figures: Any
) -> None:
    suffix = f"-rep{unique}"
    env = {
        "RFTLOOP_GATEWAY_CANARY_SHARE": str(SHARE),
        "RFTLOOP_GATEWAY_RATE_LIMIT_RPS": "0",
        # one artifact root for both, as with a shared volume
        "RFTLOOP_GATEWAY_ADAPTER_ROOT": str(tmp_path / "adapters"),
    }
    names = ("gw-a", "gw-b")
    with running_gateways(
        stack, [(tmp_path / name, {**env, "RFTLOOP_GATEWAY_INSTANCE": name}) for name in names], suffix=suffix
    ) as replicas:
        path, sha = make_adapter(tmp_path / "adapters", "v-rep")
        publish(replicas[0], "v-rep", f"file://{path}", sha, share=None)
        loaded_s = _wait(replicas, lambda h: h["traffic"].get("v-rep") == SHARE)

        rng = random.Random(5)
        clients = itertools.cycle([r.http() for r in replicas])  # a client-side address list
        jobs = [(next(clients), f"u{rng.randrange(10_000)}-{i}") for i in range(N)]

        def ask(job: tuple[httpx.Client, str]) -> int:
            client, user = job
            body = {
                "model": SERVED,
                "user": user,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            }
            return client.post("/v1/chat/completions", json=body).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert set(pool.map(ask, jobs)) == {200}
        events = [e for e in replicas[0].events(COMPLETED) if e.status == "ok"]
        per_replica = {name: Counter() for name in ("gw-a", "gw-b")}
        for e in events:
            per_replica[e.producer.split("@", 1)[1]][e.version] += 1
        shares = {name: c["v-rep"] / sum(c.values()) for name, c in per_replica.items()}
        assert all(sum(c.values()) == N // 2 for c in per_replica.values()), per_replica
        assert all(abs(share - SHARE) < 0.12 for share in shares.values()), shares  # ~3 sd at n = 120

        # Feedback sent to the other replica is attributed to the version that served the request:
        # the version travels in the (signed) request id, not in the serving process's memory.
        attributed = Counter()
        for i in range(12):
            body = {
                "model": SERVED,
                "user": f"fb{i}",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            }
            answer = replicas[0].http().post("/v1/chat/completions", json=body).json()
            served = answer["model"].split(":", 1)[1] if ":" in answer["model"] else "base"
            fb = {"request_id": answer["id"], "kind": "thumbs", "value": 1}
            reply = replicas[1].http().post("/v1/feedback", json=fb)
            assert reply.status_code == 202 and reply.json()["version"] == served, (reply.json(), served)
            attributed[served] += 1
        forged = (
            replicas[1]
            .http()
            .post(
                "/v1/feedback",
                json={
                    "request_id": answer["id"].rsplit(".", 1)[0] + ".AAAAAAAAAAAA",
                    "kind": "thumbs",
                    "value": 1,
                },
            )
        )
        assert forged.status_code == 403  # a made-up id names no key: no one but a trusted rater may rate it

        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.post(f"{replicas[0].url}/admin/versions/v-rep/promote", headers=admin).status_code == 202
        promoted_s = _wait(replicas, lambda h: h["incumbent"] == "v-rep" and h["traffic"]["v-rep"] == 1.0)
        assert (
            httpx.post(f"{replicas[1].url}/admin/versions/v-rep/rollback", headers=admin).status_code == 202
        )
        rolled_back_s = _wait(replicas, lambda h: h["incumbent"] == "base" and h["traffic"]["v-rep"] == 0.0)
    record_figures(
        "two gateway replicas following model.versions",
        publish_to_both_loaded_s=round(loaded_s, 2),
        promote_applied_by_both_s=round(promoted_s, 2),
        rollback_applied_by_both_s=round(rolled_back_s, 2),
        canary_share=SHARE,
        share_per_replica={k: round(v, 3) for k, v in shares.items()},
        requests=len(events),
        feedback_attributed_across_replicas=dict(attributed),
    )
