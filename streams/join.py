"""Join a request, its response and its feedback by ``request_id`` (pure logic).

The join stage (streams/join_stage.py) keeps one ``JoinState`` per request_id,
changelogged, and calls ``JoinState.apply`` for every event, in whatever
order the events arrive. ``apply`` is idempotent per ``event_id`` (a duplicate
changes nothing and emits nothing) and returns what to publish:

- an EvaluationRequested (id derived from request_id), once request and response
  are both known, the response is ok and evaluators are configured (``evaluators``
  names them): the evaluate stage (streams/evaluate_stage.py) scores it outside
  this join's transaction and publishes FeedbackSubmitted(source=evaluator), which
  comes back through the feedback topic like any other feedback, so ClickHouse,
  the metrics and the sample all see the scores;
- a RewardedSample whenever the set of reward sources grows and request and
  response are known. Its event_id is derived from the request and the
  sources, so a replay publishes the same id (ClickHouse keeps one row) and
  the latest sample of a request supersedes the earlier ones.

A response to a request that asked n > 1 carries every choice. Evaluators score each choice (the
evaluation request carries them all; a score names its ``choice``), and feedback names the
choice it rates; each choice with reward sources becomes its own RewardedSample (``choice`` k, that
choice's completion), emitted and superseded independently of the others. Feedback naming a choice the response does not have (an
SDK-logged response has choice 0 only) is kept but never becomes a sample.

Requests that opted out of training (``training_opt_out`` on the request or
the response) are joined and scored but never become a RewardedSample.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra import rewards
from schemas.events import (
    ChatMessage,
    CompletionChoice,
    EvaluationRequested,
    FeedbackSource,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
    RewardedSample,
    RewardSource,
)

NAMESPACE = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a001")
PRODUCER = "rftloop-streams"


def derived_id(*parts: str) -> uuid.UUID:
    """A stable event id for output derived from inputs: replays produce the same id."""
    return uuid.uuid5(NAMESPACE, "|".join(parts))


def _utc(ts: float) -> datetime:
    """Millisecond precision, as the Avro timestamp-millis field keeps it."""
    return datetime.fromtimestamp(round(ts, 3), UTC)


@dataclass
class JoinState:
    partition: int
    expires_at: float
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    evaluated: bool = False
    emitted: str = ""
    evaluated_by: str = ""  # the input whose arrival requested the evaluation
    emitted_by: str = ""  # the input whose arrival emitted the current sample
    evaluated_at: float = 0.0  # when: a re-send carries the same occurred_at (same id, same content)
    emitted_at: float = 0.0
    # choices 1.. of an n > 1 response: choice -> [signature, emitted_by, emitted_at] (choice 0 above)
    emitted_more: dict[str, list[Any]] = field(default_factory=dict)

    # -- storage (faust table values are JSON) --------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "p": self.partition,
            "x": self.expires_at,
            "rq": self.request,
            "rs": self.response,
            "fb": self.feedback,
            "s": self.seen,
            "ev": self.evaluated,
            "em": self.emitted,
            "eb": self.evaluated_by,
            "mb": self.emitted_by,
            "ea": self.evaluated_at,
            "ma": self.emitted_at,
            "mk": self.emitted_more,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JoinState:
        return cls(
            d["p"],
            d["x"],
            d["rq"],
            d["rs"],
            d["fb"],
            d["s"],
            d["ev"],
            d["em"],
            d.get("eb", ""),
            d.get("mb", ""),
            d.get("ea", 0.0),
            d.get("ma", 0.0),
            d.get("mk", {}),
        )

    # -- events ---------------------------------------------------------------
    def apply(
        self,
        event: InferenceRequested | InferenceCompleted | FeedbackSubmitted,
        evaluators: Collection[str],
        now: float,
        horizon_s: float,
    ) -> list[EvaluationRequested | RewardedSample]:
        eid = str(event.event_id)
        if eid in self.seen or eid in self.feedback:
            # A replay (a worker died after this state reached the changelog, before its input offset
            # was committed): what this input emitted the first time may not have been delivered, so
            # send it again. Ids are derived from the inputs: downstream sees the same events.
            return self._replay(eid, now, evaluators, event.request_id or "")
        self.expires_at = max(self.expires_at, now + horizon_s)
        if isinstance(event, InferenceRequested):
            self.seen.append(eid)
            self.request = {
                "prompt": event.prompt,
                "messages": [m.model_dump() for m in event.messages],
                "params": dict(event.params),
                "user_id": event.user_id,
                "opt_out": event.training_opt_out,
                "model": event.model,
                "version": event.version,
                "adapter": event.adapter,
            }
        elif isinstance(event, InferenceCompleted):
            self.seen.append(eid)
            self.response = {
                "ok": event.status == "ok",
                "completion": event.completion,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "latency_ms": event.latency_ms,
                "opt_out": event.training_opt_out,
                "model": event.model,
                "version": event.version,
                "adapter": event.adapter,
                "request_id": event.request_id,
                "choices": [[c.completion, c.completion_tokens] for c in event.choices],
            }
        else:
            value = rewards.feedback_reward(event)
            self.feedback[eid] = {
                "source": event.source.value,
                "kind": event.kind.value,
                "name": event.evaluator,
                "value": value,
                "correction": event.correction,
                "at": event.occurred_at.timestamp(),
                "choice": event.choice,
            }
        return self._outputs(eid, now, evaluators, event.request_id or "")

    def _outputs(
        self, eid: str, now: float, evaluators: Collection[str], request_id: str
    ) -> list[EvaluationRequested | RewardedSample]:
        out: list[EvaluationRequested | RewardedSample] = []
        rq, rs = self.request, self.response
        if rq is None or rs is None or not rs["ok"]:
            return out
        if not self.evaluated and evaluators:
            self.evaluated, self.evaluated_by, self.evaluated_at = True, eid, now
            out.append(self._evaluation(request_id))
        if rq["opt_out"] or rs["opt_out"]:
            return out
        for choice in range(self.choice_count()):
            sources = {
                e: fb
                for e, fb in self.feedback.items()
                if fb["value"] is not None and fb.get("choice", 0) == choice
            }
            signature = ",".join(sorted(sources))
            if sources and signature != self.emitted_of(choice)[0]:
                self.set_emitted(choice, signature, eid, now)
                out.append(self._sample(request_id, sources, choice))
        return out

    # -- choices ----------------------------------------------------------------
    def choice_count(self) -> int:
        """How many choices the response has (1 for n = 1, an SDK-logged or an unknown response)."""
        return max(1, len((self.response or {}).get("choices") or []))

    def completion_of(self, choice: int) -> tuple[str, int]:
        """(text, completion tokens) of one choice."""
        rs = self.response
        assert rs is not None
        choices = rs.get("choices") or []
        if choice == 0 or not choices:
            return rs["completion"], rs["completion_tokens"] if not choices else int(choices[0][1])
        return str(choices[choice][0]), int(choices[choice][1])

    def emitted_of(self, choice: int) -> tuple[str, str, float]:
        """(signature, input that emitted it, when) of the choice's current sample."""
        if choice == 0:
            return self.emitted, self.emitted_by, self.emitted_at
        sig, by, at = self.emitted_more.get(str(choice), ["", "", 0.0])
        return str(sig), str(by), float(at)

    def set_emitted(self, choice: int, signature: str, by: str, at: float) -> None:
        if choice == 0:
            self.emitted, self.emitted_by, self.emitted_at = signature, by, at
        else:
            self.emitted_more[str(choice)] = [signature, by, at]

    def _replay(
        self, eid: str, now: float, evaluators: Collection[str], request_id: str
    ) -> list[EvaluationRequested | RewardedSample]:
        """What input ``eid`` emitted (same ids), if it is still the latest of its kind; a sample
        superseded by later feedback is not sent again (the later one carries its sources)."""
        out: list[EvaluationRequested | RewardedSample] = []
        rq, rs = self.request, self.response
        if rq is None or rs is None or not rs["ok"]:
            return out
        # state written before these fields existed has no times: stamp them now, once
        if self.evaluated and not self.evaluated_at:
            self.evaluated_at = now
        if self.emitted and not self.emitted_at:
            self.emitted_at = now
        if self.evaluated and evaluators and self.evaluated_by == eid:
            out.append(self._evaluation(request_id))
        if rq["opt_out"] or rs["opt_out"]:
            return out
        for choice in range(self.choice_count()):
            signature, by, _ = self.emitted_of(choice)
            if signature and by == eid:
                emitted = set(signature.split(","))
                sources = {e: fb for e, fb in self.feedback.items() if e in emitted}
                out.append(self._sample(request_id, sources, choice))
        return out

    def _evaluation(self, request_id: str) -> EvaluationRequested:
        """Every choice for the evaluators (streams/evaluate_stage.py scores them outside this
        join's transaction); its id and time are derived, so a replay publishes the same event."""
        rq, rs = self.request, self.response
        assert rq is not None and rs is not None
        choices = []
        for choice in range(self.choice_count()):
            completion, tokens = self.completion_of(choice)
            choices.append(CompletionChoice(index=choice, completion=completion, completion_tokens=tokens))
        return EvaluationRequested(
            event_id=derived_id(request_id, "evaluate"),
            **self._about(request_id),
            reference=self.reference(),
            params=rq["params"],
            choices=choices,
            occurred_at=_utc(self.evaluated_at),
        )

    def _about(self, request_id: str) -> dict[str, Any]:
        """The fields every output shares: who made it, which request, version and prompt."""
        rq, rs = self.request, self.response
        assert rq is not None and rs is not None
        return {
            "producer": PRODUCER,
            "request_id": request_id,
            "model": rs["model"],
            "version": rs["version"],
            "adapter": rs["adapter"],
            "prompt": rq["prompt"],
        }

    def reference(self) -> str | None:
        corrections = [fb for fb in self.feedback.values() if fb["correction"]]
        if corrections:
            return str(max(corrections, key=lambda fb: fb["at"])["correction"])
        if self.request is not None:
            return self.request["params"].get("reference")
        return None

    def _sample(self, request_id: str, sources: dict[str, dict[str, Any]], choice: int) -> RewardedSample:
        rq, rs = self.request, self.response
        assert rq is not None and rs is not None
        signature, _, emitted_at = self.emitted_of(choice)
        completion, tokens = self.completion_of(choice)
        reward_sources = [
            RewardSource(
                source=FeedbackSource(fb["source"]),
                kind=fb["kind"],
                name=fb["name"],
                value=float(fb["value"]),
                event_id=eid,
            )
            for eid, fb in sorted(sources.items())
        ]
        total_weight = sum(s.weight for s in reward_sources)
        reward = sum(s.value * s.weight for s in reward_sources) / total_weight
        return RewardedSample(
            event_id=derived_id(request_id, "sample", *((f"choice{choice}",) if choice else ()), signature),
            occurred_at=_utc(emitted_at),
            **self._about(request_id),
            messages=[ChatMessage(**m) for m in rq["messages"]],
            completion=completion,
            reward=reward,
            reward_sources=reward_sources,
            reference=self.reference(),
            prompt_tokens=rs["prompt_tokens"],
            completion_tokens=tokens,
            latency_ms=rs["latency_ms"],
            user_id=rq["user_id"],
            choice=choice,
        )
