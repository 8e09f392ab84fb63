"""One EvaluationRequested into evaluator scores (pure logic; streams/evaluate_stage.py runs it).

The join publishes an EvaluationRequested once a request and its ok response are both known; the
evaluate stage scores every choice with every configured evaluator and publishes each score as
FeedbackSubmitted(source=evaluator) on the feedback topic, where the join reads it back like any
other feedback. A score's event_id is derived from (request_id, evaluator[, choice]) and its
occurred_at is the request's: scoring the same request again (a replay) publishes the same events.
"""

from __future__ import annotations

from collections.abc import Sequence

from infra import rewards
from schemas.events import EvaluationRequested, FeedbackKind, FeedbackSource, FeedbackSubmitted
from streams.join import PRODUCER, derived_id


def inputs(req: EvaluationRequested) -> list[rewards.EvalInput]:
    """What the evaluators see, one per choice (index order)."""
    return [
        rewards.EvalInput(
            prompt=req.prompt,
            completion=c.completion,
            reference=req.reference,
            completion_tokens=c.completion_tokens,
            params=dict(req.params),
        )
        for c in req.choices
    ]


def score_events(req: EvaluationRequested, per_choice: Sequence[dict[str, float]]) -> list[FeedbackSubmitted]:
    """Each choice's scores as feedback events (choice 0's ids are those of n = 1 responses)."""
    out: list[FeedbackSubmitted] = []
    request_id = req.request_id or ""
    for c, scores in zip(req.choices, per_choice, strict=True):
        tail = (f"choice{c.index}",) if c.index else ()
        out += [
            FeedbackSubmitted(
                event_id=derived_id(request_id, "evaluator", name, *tail),
                producer=PRODUCER,
                request_id=request_id,
                model=req.model,
                version=req.version,
                adapter=req.adapter,
                kind=FeedbackKind.score,
                value=score,
                source=FeedbackSource.evaluator,
                evaluator=name,
                occurred_at=req.occurred_at,
                choice=c.index,
                trace_id=req.trace_id,
            )
            for name, score in sorted(scores.items())
        ]
    return out


def scores(req: EvaluationRequested, evaluators: dict[str, rewards.Evaluator]) -> list[FeedbackSubmitted]:
    """In this process, without a deadline (tests and tools; the stage uses its sandbox)."""
    return score_events(req, [rewards.run(evaluators, item) for item in inputs(req)])
