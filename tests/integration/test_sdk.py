"""The application SDK: three lines to log any LLM call; background delivery; named errors on misuse."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from infra.serde import SchemaNotRegistered
from producers.sdk import FeedbackClient, InferenceLogger, LoggerMisuse, SenderClosed
from producers.sdk.sender_process import ProcessSender
from schemas.topics import COMPLETED, FEEDBACK, REQUESTED
from tests.integration.streams_support import read_topic


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_logger_delivers_every_call_and_feedback(
    stack: Any, event_topic: Any, unique: str, process: bool
) -> None:
    topics = {spec.name: event_topic(spec) for spec in (REQUESTED, COMPLETED, FEEDBACK)}
    suffix = f"-{unique}"
    with InferenceLogger(
        producer="sdk:test", kafka=stack.kafka, registry=stack.registry, topic_suffix=suffix, process=process
    ) as log:
        ids = [
            log.log(
                model="gpt-4o",
                prompt=f"q{i} from x@y.com",
                completion=f"a{i}",
                latency_ms=100 + i,
                prompt_tokens=10,
                completion_tokens=3,
                cost=0.0001,
                user_id="u1",
            )
            for i in range(2000)
        ]
        chat_id = log.log(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            completion="hello",
            latency_ms=5,
            status="error",
            error="rate limited",
        )
        # an n > 1 response from another API: every choice recorded, each ratable on its own
        multi_id = log.log(
            model="gpt-4o",
            prompt="name a colour",
            latency_ms=7,
            choices=[
                "red",
                {"completion": "blue, ask x@y.com", "finish_reason": "stop", "completion_tokens": 6},
            ],
        )
        assert log.flush(30)
        assert log.stats.dropped == 0 and log.stats.encode_errors == 0
    with pytest.raises(SenderClosed):
        log.log(model="m", prompt="late", latency_ms=1)
    with FeedbackClient(
        producer="sdk:test", kafka=stack.kafka, registry=stack.registry, topic_suffix=suffix, process=process
    ) as fb:
        fb.send(ids[0], "thumbs", 1, model="gpt-4o")
        fb.send(ids[1], "rating", 4, model="gpt-4o", scale_max=5)
        fb.send(ids[2], "correction", model="gpt-4o", correction="a2, see x@y.com")
        with pytest.raises(LoggerMisuse, match="kinds"):
            fb.send(ids[0], "hug", 1, model="gpt-4o")
        with pytest.raises(LoggerMisuse, match="other_request_id"):
            fb.send(ids[0], "preference", 1, model="gpt-4o")
    requested = read_topic(stack.kafka, topics[REQUESTED.name][0].name, topics[REQUESTED.name][1])
    completed = read_topic(stack.kafka, topics[COMPLETED.name][0].name, topics[COMPLETED.name][1])
    feedback = read_topic(stack.kafka, topics[FEEDBACK.name][0].name, topics[FEEDBACK.name][1])
    assert (
        {e.request_id for e in requested}
        == {e.request_id for e in completed}
        == set(ids) | {chat_id, multi_id}
    )
    assert len(requested) == len(completed) == 2002
    multi = next(e for e in completed if e.request_id == multi_id)
    assert multi.completion == "red" and multi.completion_tokens == 6
    assert [(c.index, c.completion, c.finish_reason, c.completion_tokens) for c in multi.choices] == [
        (0, "red", None, 0),
        (1, "blue, ask [EMAIL]", "stop", 6),
    ]
    assert all(e.choices == [] for e in completed if e.request_id != multi_id)  # n = 1: none listed
    assert all("x@y.com" not in e.prompt for e in requested)
    err = next(e for e in completed if e.request_id == chat_id)
    assert err.status == "error" and err.error_message == "rate limited"
    assert sorted(e.kind for e in feedback) == ["correction", "rating", "thumbs"]
    assert next(e for e in feedback if e.kind == "correction").correction == "a2, see [EMAIL]"


def test_misuse_is_refused_with_a_named_error(stack: Any, event_topic: Any, unique: str) -> None:
    # Topics whose schemas nobody registered: refused when the logger starts, not on its first event.
    for process in (False, True):  # the sender process reports it as the same error, at start
        with pytest.raises(SchemaNotRegistered, match="rftloop schemas register"):
            InferenceLogger(
                producer="sdk:test",
                kafka=stack.kafka,
                registry=stack.registry,
                topic_suffix="-nobody",
                process=process,
            )
    for spec in (REQUESTED, COMPLETED):
        event_topic(spec)
    with InferenceLogger(
        producer="sdk:test", kafka=stack.kafka, registry=stack.registry, topic_suffix=f"-{unique}"
    ) as log:
        with pytest.raises(LoggerMisuse, match="prompt= or messages="):
            log.log(model="m", completion="x", latency_ms=1)
        with pytest.raises(LoggerMisuse, match="latency_ms"):
            log.log(model="m", prompt="p", latency_ms=-5)
        with pytest.raises(LoggerMisuse, match="status"):
            log.log(model="m", prompt="p", latency_ms=5, status="maybe")
        with pytest.raises(LoggerMisuse, match="differs from choices"):
            log.log(model="m", prompt="p", latency_ms=5, completion="a", choices=["b", "c"])
        with pytest.raises(LoggerMisuse, match=r"choices\[1\]: unknown key"):
            log.log(model="m", prompt="p", latency_ms=5, choices=["a", {"completion": "b", "score": 1}])
        with pytest.raises(LoggerMisuse, match=r"choices\[0\].completion_tokens"):
            log.log(
                model="m",
                prompt="p",
                latency_ms=5,
                choices=[{"completion": "a", "completion_tokens": -1}, "b"],
            )


def test_sender_process_restarts_and_loses_only_what_it_held(
    stack: Any, event_topic: Any, unique: str
) -> None:
    topics = {spec.name: event_topic(spec) for spec in (REQUESTED, COMPLETED)}
    with InferenceLogger(  # the SDK's default sender is the process
        producer="sdk:test", kafka=stack.kafka, registry=stack.registry, topic_suffix=f"-{unique}"
    ) as log:
        first = [log.log(model="m", prompt=f"q{i}", completion="a", latency_ms=1) for i in range(200)]
        assert log.flush(30) and log.stats.delivered == 400
        sender = log._sender
        assert isinstance(sender, ProcessSender)
        old_pid = sender._proc.pid
        os.kill(old_pid, signal.SIGKILL)  # the child dies with nothing in hand
        sender._proc.wait(10)
        assert log.health()["status"] == "degraded"
        later = [log.log(model="m", prompt=f"r{i}", completion="b", latency_ms=1) for i in range(200)]
        assert log.flush(60), log.health()
        assert sender._proc.pid != old_pid and log.health()["sender"] == "process"
        assert "exited" in (log.stats.last_error or "") and log.stats.failed == 0
    completed = read_topic(stack.kafka, topics[COMPLETED.name][0].name, topics[COMPLETED.name][1])
    assert {e.request_id for e in completed} == set(first) | set(later)


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_logger_made_before_a_fork_delivers_parent_and_child_calls_once_each(
    stack: Any, event_topic: Any, unique: str, process: bool
) -> None:
    """gunicorn --preload and prefork pools make the logger, then fork: the child makes its own
    sender on its first call, and what the parent had queued goes once, from the parent."""
    topic, serde = event_topic(REQUESTED)
    event_topic(COMPLETED)
    log = InferenceLogger(
        producer="sdk:fork",
        kafka=stack.kafka,
        registry=stack.registry,
        topic_suffix=f"-{unique}",
        process=process,
    )

    def calls(who: str) -> list[str]:
        return [log.log(model="m", prompt=f"{who} {i}", completion="a", latency_ms=1) for i in range(200)]

    before = calls("before")  # still queued in the parent at the fork, some of them
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own calls, then out without pytest's teardown
        code = 1
        try:
            os.close(read_end)
            ids = calls("child")
            code = 0 if log.close(30) and log.stats.delivered >= len(ids) else 2
            os.write(write_end, json.dumps(ids).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    after = calls("parent")
    with os.fdopen(read_end, "rb") as got:
        child = json.loads(got.read() or b"[]")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and len(child) == 200
    assert log.close(30)
    delivered = [e.request_id for e in read_topic(stack.kafka, topic.name, serde)]
    assert sorted(delivered) == sorted(before + after + child)  # each once: none lost, none twice
