"""Pure logic of the streams: sketch accuracy and merging, window roll-up, rewards, the join."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from infra import rewards
from schemas.events import (
    CompletionStatus,
    Endpoint,
    EvaluationRequested,
    FeedbackKind,
    FeedbackSource,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
    RewardedSample,
    WindowKind,
)
from streams import evaluate
from streams.join import JoinState, derived_id
from streams.sketch import DDSketch, SketchError
from streams.windows import (
    Accumulator,
    VersionWindows,
    WindowSpec,
    WindowSpecError,
    base_bucket_s,
    parse_windows,
)


def exact(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def test_sketch_quantiles_are_within_the_relative_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5, 1.2) for _ in range(20_000)]
    s = DDSketch(0.01)
    for v in values:
        s.add(v)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert s.quantile(q) == pytest.approx(exact(values, q), rel=0.0101)


def test_merged_sketches_equal_one_sketch_of_all_values_and_survive_bytes() -> None:
    rng = random.Random(1)
    values = [rng.uniform(0, 1000) for _ in range(5000)] + [0.0] * 10
    whole, parts = DDSketch(), [DDSketch() for _ in range(4)]
    for i, v in enumerate(values):
        whole.add(v)
        parts[i % 4].add(v)
    merged = DDSketch()
    for p in parts:
        merged.merge(DDSketch.from_bytes(p.to_bytes()))
    assert merged.buckets == whole.buckets and merged.count == whole.count == 5010
    assert DDSketch.from_json(merged.to_json()).quantile(0.99) == whole.quantile(0.99)
    assert DDSketch().quantile(0.5) is None
    with pytest.raises(SketchError):
        DDSketch.from_bytes(b"\x01garbage")
    with pytest.raises(SketchError):
        DDSketch(0.01).merge(DDSketch(0.02))


def test_window_specs_parse_and_refuse_what_cannot_roll_up() -> None:
    specs = parse_windows("tumbling:10,tumbling:60,hopping:300:60")
    assert [s.name for s in specs] == ["tumbling:10", "tumbling:60", "hopping:300:60"]
    assert base_bucket_s(specs) == 10
    assert WindowSpec(WindowKind.hopping, 300, 60).starts_containing(1000) == [720, 780, 840, 900, 960]
    assert WindowSpec(WindowKind.tumbling, 60, 60).starts_containing(1000) == [960]
    for bad in ("", "sliding:10", "tumbling:x", "hopping:300", "hopping:300:70", "tumbling:10:5"):
        with pytest.raises(WindowSpecError):
            parse_windows(bad)


def completed(latency: float, ok: bool = True, cost: str = "0.000001") -> dict[str, object]:
    return {
        "status": "ok" if ok else "error",
        "latency_ms": latency,
        "ttft_ms": latency / 10 if ok else None,
        "tokens_per_s": 10.0 if ok else None,
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "cost": Decimal(cost),
    }


def test_buckets_rolled_into_windows_equal_one_pass_over_the_events() -> None:
    specs = parse_windows("tumbling:10,hopping:30:10")
    rng = random.Random(3)
    events = [(rng.randrange(1000, 1100), rng.uniform(1, 500), rng.random() > 0.1) for _ in range(3000)]
    state = VersionWindows("m", "v1")
    buckets: dict[int, Accumulator] = {}
    for t, lat, ok in events:
        buckets.setdefault(t // 10 * 10, Accumulator()).add_completed(completed(lat, ok))
    for b, acc in sorted(buckets.items(), key=lambda _: rng.random()):  # any order
        state.add_partial(specs, b, Accumulator.from_json(acc.to_json()))
    for spec, start in state.due(specs, now_s=10_000, lateness_s=0):
        acc = state.close(spec, start)
        inside = [e for e in events if start <= e[0] < start + spec.size_s]
        direct = Accumulator()
        for _, lat, ok in inside:
            direct.add_completed(completed(lat, ok))
        assert acc.to_json() == direct.to_json()
        w = acc.to_event(
            event_id=uuid.uuid4(), producer="t", model="m", version="v1", spec=spec, start_s=start, final=True
        )
        assert w.requests == len(inside)
        assert w.errors == sum(1 for e in inside if not e[2])
    assert not state.open
    # a partial for a window that already closed is late: counted, not merged
    state.add_partial(specs, 1000, Accumulator())
    assert state.late_partials >= 1 and not state.open


def test_feedback_maps_to_rewards() -> None:
    def fb(kind: FeedbackKind, value: float | None, scale_max: float | None = None) -> float | None:
        return rewards.feedback_reward(
            FeedbackSubmitted(
                producer="t",
                request_id="r",
                model="m",
                kind=kind,
                value=value,
                scale_max=scale_max,
                source=FeedbackSource.user,
                correction="x" if kind == FeedbackKind.correction else None,
            )
        )

    assert fb(FeedbackKind.thumbs, 1) == 1.0 and fb(FeedbackKind.thumbs, 0) == -1.0
    assert fb(FeedbackKind.rating, 5) == 1.0 and fb(FeedbackKind.rating, 1) == -1.0
    assert fb(FeedbackKind.rating, 3) == 0.0 and fb(FeedbackKind.rating, 10, 10) == 1.0
    # scores (0..1, 1 best) land on the same [-1, 1] scale: a wrong evaluator answer is -1, not 0
    assert fb(FeedbackKind.score, 0.25) == -0.5 and fb(FeedbackKind.score, None) is None
    assert fb(FeedbackKind.score, 0.0) == -1.0 and fb(FeedbackKind.score, 1.0) == 1.0
    assert fb(FeedbackKind.score, 7.0) == 1.0
    assert fb(FeedbackKind.correction, None) == -1.0


def test_evaluators_score_apply_or_stay_silent() -> None:
    item = rewards.EvalInput(
        prompt="2+2?", completion="The answer is 4.", reference="4", completion_tokens=40
    )
    assert rewards.get("number_match")(item) == 1.0
    sum_shown = rewards.EvalInput(prompt="", completion="60 + 61 = 121", reference="121")
    assert rewards.get("number_match")(sum_shown) == 1.0  # the final number is the answer
    assert (
        rewards.get("number_match")(rewards.EvalInput(prompt="", completion="23 + 84 = ", reference="107"))
        == 0.0
    )
    assert rewards.get("exact_match")(item) == 0.0
    assert rewards.get("length_budget")(item) == pytest.approx(0.75)
    assert rewards.get("json_valid")(item) is None
    assert rewards.run(rewards.resolve(["number_match", "json_valid"]), item) == {"number_match": 1.0}
    with pytest.raises(rewards.UnknownEvaluator, match="RFTLOOP_STREAMS_EVALUATOR_MODULES"):
        rewards.get("nope")

    @rewards.evaluator("always_raises")
    def boom(_: rewards.EvalInput) -> float:
        raise RuntimeError("user bug")

    assert rewards.run({"always_raises": boom}, item) == {}


def _events(
    rid: str, opt_out: bool = False
) -> tuple[InferenceRequested, InferenceCompleted, FeedbackSubmitted]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    req = InferenceRequested(
        producer="t",
        request_id=rid,
        model="m",
        endpoint=Endpoint.chat,
        prompt="1+1?",
        params={"reference": "2"},
        training_opt_out=opt_out,
        occurred_at=at,
    )
    done = InferenceCompleted(
        producer="t",
        request_id=rid,
        model="m",
        status=CompletionStatus.ok,
        completion="2",
        latency_ms=5,
        cost=Decimal(0),
        occurred_at=at,
    )
    fb = FeedbackSubmitted(
        producer="t",
        request_id=rid,
        model="m",
        kind=FeedbackKind.thumbs,
        value=-1,
        source=FeedbackSource.user,
        occurred_at=at,
    )
    return req, done, fb


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_join_is_order_independent_and_idempotent(order: tuple[int, int, int]) -> None:
    evaluators = rewards.resolve(["number_match"])
    events = _events("r1")
    state = JoinState(partition=0, expires_at=0)
    outputs = []
    for i in order:
        first = state.apply(events[i], evaluators, now=100, horizon_s=60)
        outputs += first
        before = state.to_json()
        # a duplicate (a replay after a crash) changes nothing and re-sends what that input emitted
        # the first time, with the same ids (its outputs may not have been delivered before the crash)
        replayed = state.apply(events[i], evaluators, now=100, horizon_s=60)
        assert state.to_json() == before
        assert [o.model_dump() for o in replayed] == [o.model_dump() for o in first]
        state = JoinState.from_json(state.to_json())
    asked = [o for o in outputs if isinstance(o, EvaluationRequested)]
    assert len(asked) == 1 and asked[0].event_id == derived_id("r1", "evaluate")
    assert asked[0].reference == "2" and [c.completion for c in asked[0].choices] == ["2"]
    scores = evaluate.scores(asked[0], evaluators)  # what the evaluate stage publishes
    assert [(s.evaluator, s.value) for s in scores] == [("number_match", 1.0)]
    for s in scores:  # the evaluator's score comes back through the feedback topic
        outputs += state.apply(s, evaluators, now=101, horizon_s=60)
    samples = [o for o in outputs if isinstance(o, RewardedSample)]
    last = samples[-1]
    # the user's thumbs emitted a sample that the evaluator's score then superseded: no re-send
    assert not [o for o in state.apply(events[2], evaluators, 102, 60) if isinstance(o, RewardedSample)]
    assert sorted(x.value for x in last.reward_sources) == [-1.0, 1.0] and last.reward == 0.0
    assert last.prompt == "1+1?" and last.completion == "2" and last.reference == "2"
    assert state.expires_at == 161


def test_join_never_emits_samples_for_opted_out_requests() -> None:
    state = JoinState(partition=0, expires_at=0)
    out = []
    for e in _events("r2", opt_out=True):
        out += state.apply(e, {}, now=0, horizon_s=60)
    assert not [o for o in out if isinstance(o, RewardedSample)]


def test_each_choice_of_an_n_gt_1_response_is_scored_and_sampled_on_its_own() -> None:
    """n = 3: the evaluator scores every choice; a thumbs on choice 2 makes a sample of choice 2's
    text; feedback naming a choice the response lacks is kept but makes no sample."""
    from schemas.events import CompletionChoice

    evaluators = rewards.resolve(["number_match"])
    req, done, fb = _events("r3")
    texts = ["2", "3", "two is 2"]
    done = done.model_copy(
        update={
            "choices": [
                CompletionChoice(index=i, completion=t, completion_tokens=i + 1) for i, t in enumerate(texts)
            ]
        }
    )
    state = JoinState(partition=0, expires_at=0)
    out = state.apply(req, evaluators, 0, 60) + state.apply(done, evaluators, 0, 60)
    scores = [s for o in out if isinstance(o, EvaluationRequested) for s in evaluate.scores(o, evaluators)]
    assert [(s.choice, s.value) for s in scores] == [(0, 1.0), (1, 0.0), (2, 1.0)]
    assert len({s.event_id for s in scores}) == 3
    on_2 = fb.model_copy(update={"choice": 2, "event_id": uuid.uuid4()})
    on_7 = fb.model_copy(update={"choice": 7, "event_id": uuid.uuid4()})
    state = JoinState.from_json(json.loads(json.dumps(state.to_json())))
    samples = [o for o in state.apply(on_2, evaluators, 1, 60) if isinstance(o, RewardedSample)]
    assert [(x.choice, x.completion, x.completion_tokens, x.reward) for x in samples] == [
        (2, "two is 2", 3, -1.0)
    ]
    assert not state.apply(on_7, evaluators, 2, 60)
    # the scores come back through the feedback topic: one sample per choice, each its own text
    later: list[object] = []
    for sc in scores:
        later += state.apply(sc, evaluators, 3, 60)
    by_choice = {x.choice: x for x in later if isinstance(x, RewardedSample)}
    assert {c: (x.completion, x.reward) for c, x in by_choice.items()} == {
        0: ("2", 1.0),
        1: ("3", -1.0),  # scores map 0..1 to rewards -1..1
        2: ("two is 2", 0.0),  # its thumbs (-1) and its score (1)
    }
    assert len({x.event_id for x in by_choice.values()} | {samples[0].event_id}) == 4
    # a replay of choice 1's score re-sends choice 1's sample only, with the same id
    again = [o for o in state.apply(scores[1], evaluators, 4, 60) if isinstance(o, RewardedSample)]
    assert [(x.choice, x.event_id) for x in again] == [(1, by_choice[1].event_id)]


# -- stage 1 (streams/buckets.py) ---------------------------------------------------------------


def test_recent_ids_forget_what_an_aborted_batch_saw() -> None:
    from streams.buckets import RecentIds

    recent = RecentIds(size=3)
    assert not recent.seen("a") and not recent.seen("b")
    assert recent.seen("a")
    recent.forget(["b"])  # its batch aborted: folded again, not dropped as a duplicate
    assert not recent.seen("b")
    assert not recent.seen("c") and not recent.seen("d")  # "a" falls out of the bounded memory
    assert not recent.seen("a")


def test_instance_id_is_stable_per_host_and_data_dir_unless_set(tmp_path: Path) -> None:
    from infra.settings import StreamsSettings
    from streams.transactional import instance_id

    a = StreamsSettings(data_dir=tmp_path / "a")
    assert instance_id(a) == instance_id(StreamsSettings(data_dir=tmp_path / "a"))
    assert instance_id(a) != instance_id(StreamsSettings(data_dir=tmp_path / "b"))
    assert instance_id(StreamsSettings(data_dir=tmp_path / "a", instance_id="w-1")) == "w-1"
    with pytest.raises(ValueError, match="instance_id"):
        StreamsSettings(instance_id="has space")


def test_json_valid_scores_against_the_requests_real_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = json.dumps({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})

    def score(completion: str, params: dict[str, str]) -> float | None:
        return rewards.get("json_valid")(rewards.EvalInput(prompt="", completion=completion, params=params))

    asked = {"request.response_format": fmt}
    assert score('{"a": 1}', asked) == 1.0
    assert score('{"a": "one"}', asked) == 0.0  # parses, but not the schema the request gave
    assert score("not json", asked) == 0.0
    assert score('{"a": 1}', {"request.response_format": json.dumps({"type": "json_object"})}) == 1.0
    assert score("[1]", {"request.response_format": json.dumps({"type": "json_object"})}) == 0.0
    assert score('{"a": 1}', {"request.response_format": json.dumps({"type": "text"})}) is None
    assert score('{"a": 1}', {"response_format": "json"}) is None  # client metadata is not the request


def test_tool_call_scores_the_call_made_against_the_reference_call() -> None:
    tools = {"request.tools": json.dumps([{"type": "function", "function": {"name": "weather"}}])}
    want = json.dumps({"name": "weather", "arguments": {"city": "Paris"}})

    def score(completion: str, reference: str | None = want, params: dict[str, str] = tools) -> float | None:
        item = rewards.EvalInput(prompt="", completion=completion, reference=reference, params=params)
        return rewards.get("tool_call")(item)

    # what the gateway records for a tool-call answer: the calls, arguments as the model's JSON text
    assert score(json.dumps([{"name": "weather", "arguments": '{"city": "Paris"}'}])) == 1.0
    assert score(json.dumps([{"name": "weather", "arguments": '{"city": "Rome"}'}])) == 0.0
    assert score(json.dumps([{"name": "clock", "arguments": '{"city": "Paris"}'}])) == 0.0
    assert score(json.dumps([{"name": "weather", "arguments": '{"city": '}])) == 0.0  # cut off
    assert score("It is sunny in Paris.") == 0.0  # answered in text where a call was expected
    two = json.dumps([{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "clock"}])
    assert (
        score(
            json.dumps(
                [{"name": "weather", "arguments": '{"city":"Paris"}'}, {"name": "clock", "arguments": ""}]
            ),
            two,
        )
        == 1.0
    )
    assert score(json.dumps([{"name": "weather", "arguments": "{}"}]), reference="42") is None  # not a call
    assert score(json.dumps([{"name": "weather", "arguments": "{}"}]), params={}) is None  # no tools offered
    assert "tool_call" in rewards.resolve(["tool_call"])


def test_a_catastrophic_regex_is_abandoned_not_left_to_freeze_the_worker() -> None:
    import time

    def score(pattern: str, completion: str) -> float | None:
        item = rewards.EvalInput(prompt="", completion=completion, params={"expect_regex": pattern})
        return rewards.get("regex")(item)

    assert score(r"\d+", "it is 42") == 1.0 and score(r"^\d+$", "it is 42") == 0.0
    t0 = time.monotonic()
    assert score(r"(a|aa)+$", "a" * 40 + "b") is None  # exponential backtracking
    assert time.monotonic() - t0 < 2.0
    assert score("([unclosed", "text") is None
