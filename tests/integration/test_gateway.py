"""The gateway as users run it: a real vLLM engine (tiny random Llama), real Kafka, the openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas.topics import COMPLETED, FEEDBACK, REQUESTED
from tests.integration.gateway_support import (
    ADMIN,
    KEY,
    SERVED,
    Gateway,
    make_adapter,
    publish,
    running_gateway,
)


@pytest.fixture(scope="session")
def gateway(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"RFTLOOP_GATEWAY_RATE_LIMIT_RPS": "5", "RFTLOOP_GATEWAY_RATE_LIMIT_BURST": "60"}
    with running_gateway(stack, tmp_path_factory.mktemp("gateway"), env) as gw:
        yield gw


@pytest.mark.reliability
def test_openai_client_chats_streams_and_every_call_becomes_events(gateway: Gateway) -> None:
    client = gateway.client()
    chat = client.chat.completions.create(
        model=SERVED,
        max_tokens=8,
        temperature=0,
        user="alice",
        messages=[
            {
                "role": "user",
                "content": "Mail bob@example.com or call +1 415 555 0100, card 4111 1111 1111 1111",
            }
        ],
    )
    assert chat.model == SERVED and chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage is not None and chat.usage.completion_tokens >= 1
    pieces = []
    stream = client.chat.completions.create(
        model=SERVED, max_tokens=6, temperature=0, stream=True, messages=[{"role": "user", "content": "Hi"}]
    )
    for part in stream:
        if part.choices and part.choices[0].delta.content:
            pieces.append(part.choices[0].delta.content)
    assert pieces, "no streamed tokens"
    text = client.completions.create(model=SERVED, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert text.choices[0].text and text.usage is not None
    assert SERVED in [m.id for m in client.models.list().data]

    requested = {e.request_id: e for e in gateway.events(REQUESTED)}
    completed = {e.request_id: e for e in gateway.events(COMPLETED)}
    for rid in (chat.id, text.id):
        assert rid in requested and rid in completed
    done = completed[chat.id]
    assert done.status == "ok" and done.version == "base" and done.user_id == "alice"
    assert done.completion_tokens == chat.usage.completion_tokens
    assert done.prompt_tokens == chat.usage.prompt_tokens
    assert done.latency_ms > 0 and done.ttft_ms is not None and done.ttft_ms <= done.latency_ms
    assert done.cost > 0 and done.tokens_per_s and done.finish_reason == chat.choices[0].finish_reason
    # cost counts the engine's time on the request (vLLM's scheduled -> last token), not the wall time
    assert done.engine_seconds is not None and 0 < done.engine_seconds <= done.latency_ms / 1000
    prompt = requested[chat.id].messages[0].content
    assert "bob@example.com" not in prompt and "[EMAIL]" in prompt
    assert "415 555 0100" not in prompt and "4111 1111 1111 1111" not in prompt
    assert requested[text.id].endpoint == "completion"
    streamed = [e for e in completed.values() if e.completion == "".join(pieces)]
    assert streamed, "the streamed call has no InferenceCompleted with its text"


BAD: list[tuple[str, dict[str, str], Any, int]] = [
    ("no key", {}, {"model": SERVED, "messages": [{"role": "user", "content": "x"}]}, 401),
    (
        "wrong key",
        {"Authorization": "Bearer nope"},
        {"model": SERVED, "messages": [{"role": "user", "content": "x"}]},
        401,
    ),
    ("malformed JSON", {}, b"{not json", 400),
    ("not an object", {}, b"[1, 2]", 400),
    ("no messages", {}, {"model": SERVED, "messages": []}, 400),
    ("missing messages", {}, {"model": SERVED}, 400),
    ("empty message", {}, {"model": SERVED, "messages": [{"role": "user", "content": "  "}]}, 400),
    ("bad role", {}, {"model": SERVED, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("unknown model", {}, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404),
    ("unknown version", {}, {"model": f"{SERVED}:v999", "messages": [{"role": "user", "content": "x"}]}, 404),
    (
        "max_tokens too large",
        {},
        {"model": SERVED, "max_tokens": 100000, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "negative max_tokens",
        {},
        {"model": SERVED, "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "temperature 5",
        {},
        {"model": SERVED, "temperature": 5, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "over the context",
        {},
        {"model": SERVED, "max_tokens": 100, "messages": [{"role": "user", "content": "word " * 1200}]},
        400,
    ),
    (
        "body too large",
        {},
        {"model": SERVED, "messages": [{"role": "user", "content": "x" * (2 << 20)}]},
        413,
    ),
]


@pytest.mark.reliability
@pytest.mark.parametrize("name,headers,body,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_with_an_openai_error_body(
    gateway: Gateway, name: str, headers: dict[str, str], body: Any, status: int
) -> None:
    h = {"Authorization": f"Bearer {KEY}", "content-type": "application/json", **headers}
    if "Authorization" in headers or name == "no key":
        h = {k: v for k, v in h.items() if name != "no key" or k != "Authorization"}
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", headers=h, timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]


@pytest.mark.reliability
def test_published_adapter_is_served_without_restart_and_bad_ones_are_refused(gateway: Gateway) -> None:
    path, sha = make_adapter(gateway.adapter_root, "v-good")
    outside, outside_sha = make_adapter(gateway.adapter_root.parent / "elsewhere", "v-out")
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    t0 = publish(gateway, "v-good", f"file://{path}", sha)
    publish(gateway, "v-badsha", f"file://{path}", "0" * 64)
    publish(gateway, "v-outside", str(outside), outside_sha)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
        if f"{SERVED}:v-good" in ids:
            break
        time.sleep(0.05)
    swap_s = time.monotonic() - t0
    assert f"{SERVED}:v-good" in ids, ids
    assert swap_s < 30
    r = http.post(
        "/v1/chat/completions",
        json={"model": f"{SERVED}:v-good", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200 and r.json()["model"] == f"{SERVED}:v-good"
    assert r.headers["x-rftloop-version"] == "v-good"
    health = http.get("/healthz").json()
    assert "does not match" in health["refused_versions"]["v-badsha"]
    assert "outside the artifact root" in health["refused_versions"]["v-outside"]
    assert health["traffic"]["v-good"] == pytest.approx(0.5)
    # sticky routing: one user keeps one version while the weights hold
    seen = {
        http.post(
            "/v1/chat/completions",
            json={
                "model": SERVED,
                "max_tokens": 1,
                "user": "carol",
                "messages": [{"role": "user", "content": "x"}],
            },
        ).headers["x-rftloop-version"]
        for _ in range(4)
    }
    assert len(seen) == 1
    # promote through the admin API: needs the admin key; takes all traffic at once
    assert http.post("/admin/versions/v-good/promote").status_code == 401
    r = http.post("/admin/versions/v-good/promote", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and http.get("/healthz").json()["traffic"].get("v-good") != 1.0:
        time.sleep(0.1)
    assert http.get("/healthz").json()["traffic"]["v-good"] == 1.0
    r = http.post(
        "/v1/chat/completions",
        json={"model": SERVED, "max_tokens": 2, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert r.headers["x-rftloop-version"] == "v-good"
    done = [e for e in gateway.events(COMPLETED) if e.request_id == r.json()["id"]]
    assert done and done[0].version == "v-good" and done[0].adapter == str(path.resolve())
    r = http.post("/admin/versions/v-good/rollback", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and http.get("/healthz").json()["traffic"].get("v-good") != 0.0:
        time.sleep(0.1)
    assert http.get("/healthz").json()["incumbent"] == "base"


def test_feedback_endpoint_emits_feedback_and_nothing_was_dropped(gateway: Gateway) -> None:
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    r = http.post(
        "/v1/chat/completions",
        json={"model": SERVED, "max_tokens": 2, "messages": [{"role": "user", "content": "2+2?"}]},
    )
    rid = r.json()["id"]
    ok = http.post("/v1/feedback", json={"request_id": rid, "kind": "thumbs", "value": 1})
    assert ok.status_code == 202
    fix = http.post(
        "/v1/feedback", json={"request_id": rid, "kind": "correction", "correction": "4, ask a@b.io"}
    )
    assert fix.status_code == 202
    for bad in (
        {"request_id": rid, "kind": "hug"},
        {"request_id": rid, "kind": "thumbs"},
        {"request_id": rid, "kind": "correction"},
        {"kind": "thumbs", "value": 1},
    ):
        r = http.post("/v1/feedback", json=bad)
        assert r.status_code == 400, (bad, r.text)
    events = [e for e in gateway.events(FEEDBACK) if e.request_id == rid]
    assert sorted(e.kind for e in events) == ["correction", "thumbs"]
    assert all(e.model == SERVED for e in events)
    assert [e.correction for e in events if e.kind == "correction"] == ["4, ask [EMAIL]"]
    health = http.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["events"]["dropped"] == 0 and health["events"]["failed"] == 0
    metrics = http.get("/metrics").text
    assert 'rftloop_gateway_requests_total{version="base",status="ok"}' in metrics
    assert "rftloop_gateway_events_dropped_total 0" in metrics


@pytest.mark.reliability
def test_a_key_over_its_rate_limit_gets_429_with_retry_after(gateway: Gateway) -> None:
    """Last in this module: it empties the shared key's bucket (5 requests/s, burst 60)."""
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    codes = [http.get("/v1/models") for _ in range(90)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and all(r.status_code in (200, 429) for r in codes)
    err = limited[0].json()["error"]
    assert err["code"] == "rate_limit_exceeded" and int(limited[0].headers["Retry-After"]) >= 1
    admin = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert admin.status_code == 401  # the admin key is not an API key; no bucket spent on it
    time.sleep(1.0)
    assert http.get("/v1/models").status_code == 200  # refilled


@pytest.mark.reliability
def test_cors_is_closed_by_default(gateway: Gateway) -> None:
    preflight = httpx.options(
        f"{gateway.url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    r = gateway.http().get("/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
