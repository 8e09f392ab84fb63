"""Rewards: how feedback becomes a number, and the registry of evaluators.

One place for both, because the streams (live rewards) and the trainer (GRPO
reward functions, held-out scoring) must agree on what a reward is.

- ``feedback_reward`` maps one FeedbackSubmitted onto **the one reward scale, [-1, 1], where
  > 0 is good**: thumbs -> +1/-1, rating r of 1..scale_max -> linear onto [-1, 1], score s of
  0..1 (evaluators' and users' convention, 1 best; clipped) -> 2s - 1, preference -> +1 (this
  response preferred) or -1, correction -> -1 (the user had to fix it; the text becomes the
  reference). The judge's positive share (reward > 0), KTO's desirable label, the samples'
  rewards and the dashboard all read this scale; a wrong ``number_match`` answer is -1, not 0.
- Evaluators are plain Python callables ``(EvalInput) -> float | None``
  registered by name with ``@evaluator("name")``; ``None`` means "does not
  apply" (e.g. exact match without a reference). Built-ins: ``exact_match``,
  ``number_match``, ``json_valid``, ``regex``, ``tool_call``, ``length_budget``. Your own:
  put them in a module and name it in ``RFTLOOP_STREAMS_EVALUATOR_MODULES``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from schemas.events import FeedbackKind, FeedbackSubmitted


class UnknownEvaluator(KeyError):
    """An evaluator name that nobody registered."""


@dataclass(frozen=True)
class EvalInput:
    prompt: str
    completion: str
    reference: str | None = None
    completion_tokens: int = 0
    params: dict[str, str] = field(default_factory=dict)


Evaluator = Callable[[EvalInput], float | None]
_REGISTRY: dict[str, Evaluator] = {}


def evaluator(name: str) -> Callable[[Evaluator], Evaluator]:
    """Register ``fn`` under ``name`` (a later registration of the same name replaces it)."""

    def register(fn: Evaluator) -> Evaluator:
        _REGISTRY[name] = fn
        return fn

    return register


def get(name: str) -> Evaluator:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEvaluator(
            f"no evaluator named {name!r}; registered: {', '.join(sorted(_REGISTRY))}. "
            "Register one with @infra.rewards.evaluator(name) in a module listed in "
            "RFTLOOP_STREAMS_EVALUATOR_MODULES"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def load_modules(modules: Iterable[str]) -> None:
    """Import user modules so their @evaluator decorators run."""
    for module in modules:
        if module:
            importlib.import_module(module)


def resolve(selected: Iterable[str]) -> dict[str, Evaluator]:
    return {name: get(name) for name in selected if name}


def run(evaluators: dict[str, Evaluator], item: EvalInput) -> dict[str, float]:
    """Scores of every evaluator that applies; an evaluator that raises scores nothing."""
    scores: dict[str, float] = {}
    for name, fn in evaluators.items():
        try:
            value = fn(item)
        except Exception:  # a user's evaluator must not take the stream down
            continue
        if value is not None and math.isfinite(value):
            scores[name] = float(value)
    return scores


def feedback_reward(fb: FeedbackSubmitted) -> float | None:
    """The reward one piece of feedback stands for; None when it carries no value."""
    return reward_of(fb.kind.value, fb.value, fb.scale_max)


def reward_of(kind: str, value: float | None, scale_max: float | None = None) -> float | None:
    """``feedback_reward`` on the raw fields (the streams' hot path skips the pydantic model)."""
    if kind == FeedbackKind.correction:
        return -1.0
    if value is None or not math.isfinite(value):
        return None
    if kind == FeedbackKind.thumbs:
        return 1.0 if value > 0 else -1.0
    if kind == FeedbackKind.rating:
        top = scale_max if scale_max and scale_max > 1 else 5.0
        clipped = min(max(value, 1.0), top)
        return 2.0 * (clipped - 1.0) / (top - 1.0) - 1.0
    if kind == FeedbackKind.preference:
        return 1.0 if value > 0 else -1.0
    return 2.0 * min(max(float(value), 0.0), 1.0) - 1.0  # score: 0..1 onto [-1, 1]


# -- built-in evaluators -----------------------------------------------------
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


@evaluator("exact_match")
def exact_match(item: EvalInput) -> float | None:
    """1 if the completion equals the reference (case, spaces, final period ignored), else 0."""
    if item.reference is None:
        return None
    return 1.0 if _norm(item.completion) == _norm(item.reference) else 0.0


@evaluator("number_match")
def number_match(item: EvalInput) -> float | None:
    """1 if the completion's final number (its answer: "60 + 61 = 121" -> 121) equals the reference's."""
    if item.reference is None:
        return None
    want = _NUMBER.search(item.reference)
    if want is None:
        return None
    got = _NUMBER.findall(item.completion)
    return 1.0 if got and float(got[-1]) == float(want.group()) else 0.0


@evaluator("json_valid")
def json_valid(item: EvalInput) -> float | None:
    """For requests that asked for JSON (the gateway records the request's real ``response_format``
    as param ``request.response_format``): 1 if the completion parses and, for ``json_schema``,
    validates against the request's schema (jsonschema), else 0."""
    raw = item.params.get("request.response_format")
    try:
        fmt = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(item.completion)
    except ValueError:
        return 0.0
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
    if schema is None:
        return 1.0 if fmt["type"] == "json_schema" or isinstance(value, dict) else 0.0
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    except jsonschema.SchemaError:
        return None  # the request's own schema is broken: nothing to score against
    return 1.0


def _calls(value: object) -> list[tuple[str, object]] | None:
    """[(name, arguments as JSON)] from a tool call or a list of them; None if it is not one."""
    items = value if isinstance(value, list) else [value]
    out = []
    for call in items:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        args = call.get("arguments", {})
        if isinstance(args, str):  # the model's text: JSON, or not
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = ("unparsed", args)
        out.append((call["name"], args))
    return out or None


@evaluator("tool_call")
def tool_call(item: EvalInput) -> float | None:
    """For requests that offered tools (param ``request.tools``) whose reference is the expected call:
    ``{"name": N, "arguments": {...}}`` or a list of them. 1 if the answer made the same calls, in
    order, with arguments equal as JSON (the gateway records a tool-call answer as
    ``[{"name", "arguments"}]``, the arguments as the model's text), else 0 (a text answer, a wrong
    function, wrong or unparseable arguments). A reference that is not a tool call: None."""
    if not item.params.get("request.tools") or not item.reference:
        return None
    try:
        want = _calls(json.loads(item.reference))
    except ValueError:
        return None
    if want is None:
        return None
    try:
        got = _calls(json.loads(item.completion))
    except ValueError:
        return 0.0
    return 1.0 if got == want else 0.0


REGEX_TIMEOUT_S = 0.05


@evaluator("regex")
def regex_match(item: EvalInput) -> float | None:
    """For requests with param ``expect_regex``: 1 if the completion matches it, else 0.

    Run with the ``regex`` module's ``timeout``: a catastrophic pattern ((a|aa)+$ on a long answer)
    is abandoned after 50 ms and scores nothing, instead of freezing the stream worker (which would
    replay the same record after every restart). A pattern that does not compile scores nothing."""
    pattern = item.params.get("expect_regex")
    if not pattern:
        return None
    import regex

    try:
        return 1.0 if regex.search(pattern, item.completion, timeout=REGEX_TIMEOUT_S) else 0.0
    except (TimeoutError, regex.error):
        return None


@evaluator("length_budget")
def length_budget(item: EvalInput) -> float | None:
    """1 within ``length_budget`` completion tokens (param, default 32), falling linearly to 0 at 2x."""
    budget = int(item.params.get("length_budget", "32") or 32)
    tokens = item.completion_tokens
    if tokens <= budget:
        return 1.0
    return max(0.0, 1.0 - (tokens - budget) / budget)


def correctness(item: EvalInput) -> float:
    """Checkable-task score against the reference: number_match when the reference has a number,
    else exact_match; 0 without a reference. The trainer's GRPO reward and its gate both use it."""
    value = number_match(item)
    if value is None:
        value = exact_match(item)
    return value or 0.0
